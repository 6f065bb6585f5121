"""The ablation benchmark: best-of-N estimator by hand, and an end-to-end run on a tiny model."""

import json

import numpy as np
import pytest

from find_ray.eval.stats import expected_best_of
from find_ray.experiments import ablation
from tests.experiment_args import tiny_run_args


def test_expected_best_of_by_hand():
    assert expected_best_of(np.array([0.0, 1.0]), 1) == pytest.approx(0.5)
    assert expected_best_of(np.array([0.0, 1.0]), 2) == pytest.approx(1.0)
    assert expected_best_of(np.array([0.0, 0.0, 1.0]), 2) == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    pool = rng.random(6)
    draws = [rng.choice(pool, 3, replace=False).max() for _ in range(20000)]
    assert expected_best_of(pool, 3) == pytest.approx(np.mean(draws), abs=0.01)


@pytest.mark.slow
def test_ablation_runs_end_to_end_on_a_tiny_model(tiny_shapes_dir, tmp_path, monkeypatch):
    args = [
        "--config",
        "configs/find-shapes.yaml",
        "--variants",
        "find",
        "no_drcm",
        "--pool",
        "2",
        *tiny_run_args(tmp_path, tiny_shapes_dir, "[a red circle]", 2),
        "model.guidance=1.5",  # CFG: two denoiser calls per step
    ]
    ablation.main(args)
    data = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert [row["variant"] for row in data["variants"]] == ["find", "no_drcm"]
    assert [p["nfe"] for p in data["variants"][0]["curve"]] == [8, 16]  # 2 samples x 2 steps x 2
    assert [p["n"] for p in data["best_of_n"]] == [1, 2]
    assert (tmp_path / "results" / "ablation.png").is_file()
    assert "| no_drcm |" in (tmp_path / "results" / "ablation.md").read_text()

    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.train.out_dir}")

    monkeypatch.setattr(ablation, "train_in_process", no_training)
    ablation.main(args)  # finished runs of the same config are read back, not retrained
    again = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert again["variants"] == data["variants"]
    with pytest.raises(AssertionError, match="retrained"):
        ablation.main([*args, "train.iterations=3"])  # a changed config is retrained
