"""`find-ray bench` end to end on a tiny random shapes model: every method, its NFE accounting,
the table and plot, resuming from saved points, and config errors."""

from __future__ import annotations

import json

import pytest

from find_ray.bench import config as bench_config
from find_ray.bench import load_bench_config, run_bench
from find_ray.bench import methods as bench_methods
from find_ray.cli import main
from find_ray.errors import ConfigError


def tiny_bench(tiny_shapes_dir, out) -> list[str]:
    return [
        f"model.path={tiny_shapes_dir}",
        "model.steps=2",
        "model.guidance=1.5",
        "bench.prompts=[a red circle,a blue square]",
        "bench.eval_samples=4",
        "bench.best_of=[2,4]",
        "bench.budgets=[40,100]",
        "bench.find=[train.samples_per_prompt=2,learner.minibatch_size=4]",
        "bench.ddpo.sample_batches=2",
        "bench.drtune.batch_size=2",
        "bench.drtune.train_steps=1",
        "bench.dno.iterations=[1,2]",
        "bench.surrogate.images_per_prompt=4",
        "bench.surrogate.epochs=1",
        f"bench.out_dir={out}",
    ]


@pytest.mark.slow
def test_bench_runs_every_method_with_its_accounting(tiny_shapes_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    cfg = load_bench_config("configs/bench-shapes.yaml", tiny_bench(tiny_shapes_dir, out))
    table = run_bench(cfg, progress=False)
    data = json.loads((out / "bench.json").read_text())
    by_method: dict[str, list[dict]] = {}
    for p in data["points"]:
        by_method.setdefault(p["method"], []).append(p)
    assert set(by_method) == {
        "base",
        "best_of_n",
        "find",
        "find_best_of_n",
        "ddpo",
        "drtune",
        "dno",
    }
    calls = 2 * 2  # 2 steps, guidance doubles
    (base,) = by_method["base"]
    assert base["inference_nfe"] == calls and base["train_nfe"] == 0
    best_of = by_method["best_of_n"]
    assert [p["inference_nfe"] for p in best_of] == [2 * calls, 4 * calls]
    # the best of more draws from the same pool is never worse (order statistics)
    assert base["score"] <= best_of[0]["score"] <= best_of[1]["score"]
    assert base["exact"] <= best_of[0]["exact"] <= best_of[1]["exact"]
    assert [p["inference_nfe"] for p in by_method["dno"]] == [
        1 * 2 * calls + calls,
        2 * 2 * calls + calls,
    ]
    for method in ("find", "ddpo", "drtune"):
        points = by_method[method]
        assert [p["label"] for p in points] == ["40 NFE", "100 NFE"]
        # each point is evaluated at the first step that passes its budget
        assert 40 <= points[0]["train_nfe"] < 100 + 200 and points[1]["train_nfe"] >= 100
        assert points[0]["inference_nfe"] == calls
    assert by_method["find"][0]["kl"] >= 0  # the policy's KL to N(0, I)
    # FIND's final policy as the proposal of best-of-N: N x the calls, never worse than one
    proposal = by_method["find_best_of_n"]
    assert [p["inference_nfe"] for p in proposal] == [2 * calls, 4 * calls]
    assert by_method["find"][-1]["exact"] <= proposal[0]["exact"] <= proposal[1]["exact"]
    assert all(0 < p["quality"] <= 1 for p in by_method["find"] + by_method["base"])
    assert by_method["find"][-1]["shell"] == pytest.approx(1.0)  # projected (the default)
    assert "quality change" in table.read_text()
    assert data["surrogate"]["heldout"]["pairs"] > 0  # the surrogate was trained and reported
    text = table.read_text()
    assert "| ddpo | 100 NFE |" in text and "Surrogate reward" in text
    assert (out / "bench.png").stat().st_size > 0

    def fail(_):
        raise AssertionError("a method with saved points was trained again")

    monkeypatch.setitem(bench_methods.RUNNERS, "find", fail)
    run_bench(cfg, ["find"], progress=False)  # reads points/find.json


def test_bench_config_errors_name_the_key(tiny_shapes_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="bench.methods"):
        load_bench_config(None, ["bench.methods=[find,dpok]"])
    with pytest.raises(ConfigError, match="bench.nope"):
        load_bench_config(None, ["bench.nope=1"])
    assert main(["bench", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_runs_on_a_tiny_sd_pipeline_with_clipscore(tmp_path):
    """configs/bench-sd15.yaml on CPU with a tiny random SD pipeline and a tiny CLIP: every
    method runs through the VAE and the differentiable CLIPScore; no exact match, so the
    table and plot use the score."""
    from tests.tiny_pipelines import save_tiny
    from tests.tiny_rewards import tiny_reward

    out = tmp_path / "bench"
    overrides = [
        f"model.path={save_tiny('sd', tmp_path / 'sd')}",
        "model.device=cpu",
        "model.dtype=float32",
        "model.height=0",
        "model.width=0",
        "model.steps=2",
        "reward.device=cpu",
        *tiny_reward("clipscore", tmp_path / "clip"),
        *tiny_reward("aesthetic", tmp_path / "aesthetic", key="quality"),
        "quality.device=cpu",
        "bench.prompts=[a cat]",
        "bench.eval_samples=2",
        "bench.best_of=[2]",
        "bench.budgets=[30]",
        "bench.find=[train.samples_per_prompt=2,learner.minibatch_size=2]",
        "bench.ddpo.sample_batch_size=1",
        "bench.ddpo.sample_batches=2",
        "bench.ddpo.train_batch_size=1",
        "bench.drtune.batch_size=1",
        "bench.drtune.train_steps=1",
        "bench.dno.iterations=[1]",
        f"bench.out_dir={out}",
    ]
    assert main(["bench", "--config", "configs/bench-sd15.yaml", *overrides]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert {p["method"] for p in data["points"]} == set(bench_config.LINES)
    assert data["surrogate"] == {}  # CLIPScore's own gradient, no surrogate
    assert all(p["score"] == p["score"] for p in data["points"])  # finite scores
    assert "| dno | 1 it |" in (out / "bench.md").read_text()
