"""`find-ray bench` end to end on a tiny random shapes model: every method, its NFE accounting,
the table and plot, resuming from saved points, and config errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from find_ray.bench import config as bench_config
from find_ray.bench import load_bench_config, run_bench, run_main_cells
from find_ray.bench import methods as bench_methods
from find_ray.bench.bench import eval_prompts
from find_ray.bench.cells import Cell, CellKey, Evaluation
from find_ray.bench.reach import reach, reach_table
from find_ray.bench.report import before_after, tuning_table, write_figures
from find_ray.bench.schedule import Allowance, Tuning, tune
from find_ray.cli import main
from find_ray.config import load_config
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
        "bench.tuning.enabled=false",
        "bench.seeds=[0]",
        "bench.extend_to=0",
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
    for method in ("find", "ddpo"):  # the reward of its own training samples, per point
        assert all(0 <= p["train_reward"] <= 1 for p in by_method[method])
    assert all(math.isfinite(p["train_reward"]) for p in by_method["drtune"])  # the surrogate's
    # FIND's final policy as the proposal of best-of-N: N x the calls, never worse than one
    proposal = by_method["find_best_of_n"]
    assert [p["inference_nfe"] for p in proposal] == [2 * calls, 4 * calls]
    assert by_method["find"][-1]["exact"] <= proposal[0]["exact"] <= proposal[1]["exact"]
    assert all(0 < p["quality"] <= 1 for p in by_method["find"] + by_method["base"])
    assert by_method["find"][-1]["shell"] == pytest.approx(1.0)  # projected (the default)
    assert "quality change" in table.read_text() and "Train reward: the mean" in table.read_text()
    pairs = {(r["method"], r["target"]) for r in data["reach"]}
    assert pairs == {("find", "ddpo"), ("ddpo", "find"), ("find", "drtune"), ("drtune", "find")}
    assert "Training NFE to reach a peer's best" in table.read_text()
    assert data["surrogate"]["heldout"]["pairs"] > 0  # the surrogate was trained and reported
    text = table.read_text()
    assert "| ddpo | 100 NFE | 1 |" in text and "Surrogate reward" in text
    assert (out / "bench.png").stat().st_size > 0
    base_images = Cell.open(out / "cells", CellKey("base", 0)).images("N(0, I)")
    assert base_images.shape == (2, 4, 32, 32, 3)  # prompts, the 4 eval samples (< SHOWN)
    dno = Cell.open(out / "cells", CellKey("dno", 0))
    assert (dno.images("1 it") != dno.images("2 it")).any()  # each snapshot its own images
    for method in ("find", "ddpo", "drtune", "dno"):
        assert f"[{method}](images/{method}.png)" in text
        assert (out / "images" / f"{method}.png").stat().st_size > 0
    ledger = (out / "cells.md").read_text()
    assert "| find/seed0 | 40 NFE, 100 NFE |" in ledger and "wall-clock time in all" in ledger

    def fail(*_):
        raise AssertionError("a cell with every budget saved was trained again")

    for method in ("find", "dno"):
        monkeypatch.setitem(bench_methods.RUNNERS, method, fail)
    run_bench(cfg, ["find", "dno"], progress=False)  # reads the saved cells


def evaluations(out, method: str, seed: int = 0) -> dict[str, dict]:
    """A main cell's saved evaluations by label (`method`: its folder, with a tuned point)."""
    saved = out / "cells" / method / f"seed{seed}" / "evaluations.json"
    return {e["label"]: e for e in json.loads(saved.read_text())}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["find", "ddpo"])
def test_a_cell_resumed_budget_by_budget_equals_one_unbroken_run(method, tiny_shapes_dir, tmp_path):
    """`--max-cells 1` runs one budget of one cell; the next invocation goes on from the saved
    training state. The evaluation at the last budget equals that of a run straight to it."""
    overrides = [*tiny_bench(tiny_shapes_dir, tmp_path / "steps"), f"bench.methods=[{method}]"]
    steps = load_bench_config("configs/bench-shapes.yaml", overrides)
    for _ in range(2):  # the base, then the first budget
        run_bench(steps, progress=False, max_cells=1)
    assert list(evaluations(tmp_path / "steps", method)) == ["40 NFE"]
    run_bench(steps, progress=False, max_cells=1)
    straight = load_bench_config(
        "configs/bench-shapes.yaml",
        [*tiny_bench(tiny_shapes_dir, tmp_path / "straight"), f"bench.methods=[{method}]"],
    )
    straight.bench.budgets = [100]
    run_bench(straight, progress=False)
    resumed = evaluations(tmp_path / "steps", method)
    assert list(resumed) == ["40 NFE", "100 NFE"]
    unbroken = evaluations(tmp_path / "straight", method)["100 NFE"]
    for figure in ("train_nfe", "exact", "scores"):
        assert resumed["100 NFE"][figure] == unbroken[figure]


@pytest.mark.slow
def test_seeds_tuning_and_the_ledger(tiny_shapes_dir, tmp_path):
    """Two seeds per method, FIND's step size tuned on prompts apart from the eval's: the
    chosen point is the grid's best, the rows are the mean over the seeds."""
    out = tmp_path / "bench"
    overrides = [
        *tiny_bench(tiny_shapes_dir, out),
        "bench.methods=[find]",
        "bench.seeds=[0,1]",
        "bench.budgets=[40]",
        "bench.tuning.enabled=true",
        "bench.tuning.prompts=[a green triangle,a yellow square]",
        "bench.tuning.budget=40",
        "bench.tuning.eval_samples=2",
        "bench.tuning.grid={find: {learner.loss.policy_lr: [0.1, 3.0]}}",
    ]
    run_bench(load_bench_config("configs/bench-shapes.yaml", overrides), progress=False)
    data = json.loads((out / "bench.json").read_text())
    grid = data["tuning"]["find"]["grid"]
    assert [g["params"] for g in grid] == [
        {"learner.loss.policy_lr": 0.1},
        {"learner.loss.policy_lr": 3.0},
    ]
    best = max(grid, key=lambda g: (g["exact"], g["score"]))
    assert data["tuning"]["find"]["chosen"] == best["params"]
    for lr in ("0.1", "3.0"):  # each grid point its own cell, on the tuning seed
        tuned = out / "tuning" / "cells" / "find" / f"learner.loss.policy_lr={lr}" / "seed100"
        assert (tuned / "evaluations.json").is_file()
    (find,) = [p for p in data["points"] if p["method"] == "find"]
    assert find["seeds"] == 2
    chosen = f"find/learner.loss.policy_lr={best['params']['learner.loss.policy_lr']}"
    per_seed = [evaluations(out, chosen, seed)["40 NFE"]["exact"] for seed in (0, 1)]
    means = [sum(map(sum, exact)) / 8 for exact in per_seed]  # 2 prompts x 4 samples each
    assert find["exact"] == pytest.approx(sum(means) / 2)
    assert find["exact_gain_sd"] == pytest.approx(abs(means[0] - means[1]) / 2**0.5)
    assert "Tuning grid" in (out / "bench.md").read_text()
    assert f"| {chosen}/seed1 | 40 NFE |" in (out / "cells.md").read_text()  # the point named


def test_the_main_cells_run_seed_by_seed(tiny_shapes_dir, tmp_path, monkeypatch):
    """Every method's first seed runs before any second seed (a bench stopped part-way has a
    row per method); a method still rising extends only once every seed has the set budgets;
    ReNO, deterministic given the eval noise, runs one seed as the base does."""
    ran = []

    def record(method):
        def runner(bench, cell, budget):
            ran.append((method, cell.key.seed, budget))
            rising = [[budget / 1000] * 2] * 2  # with the budget: extended
            cell.add(evaluation(f"{budget}", rising, budget))

        return runner

    for method in ("base", "find", "dno", "reno"):
        monkeypatch.setitem(bench_methods.RUNNERS, method, record(method))
    overrides = ["bench.seeds=[0,1]", "bench.extend_to=400"]
    cfg = load_bench_config(
        "configs/bench-shapes.yaml", [*tiny_bench(tiny_shapes_dir, tmp_path), *overrides]
    )
    run_main_cells(cfg, ["base", "find", "dno", "reno"], Tuning(), Allowance(), progress=False)
    assert ran == [
        ("base", 0, 0),
        ("find", 0, 40),
        ("find", 0, 100),
        ("dno", 0, 0),
        ("reno", 0, 0),
        ("find", 1, 40),
        ("find", 1, 100),
        ("find", 0, 400),
        ("find", 1, 400),
        ("dno", 1, 0),
    ]


def test_tuning_chooses_at_its_budget_and_keeps_smaller_ones(
    tiny_shapes_dir, tmp_path, monkeypatch
):
    """Raising the tuning budget continues each grid point's cell; the choice is made at the
    new budget (here the other point), and the smaller budget's figure stays in the table."""

    def runner(bench, cell, budget):
        lr = dict(cell.key.params)["learner.loss.policy_lr"]
        good = (lr == 0.1) == (budget == 40)  # 0.1 leads at 40, 3.0 at 100
        cell.add(evaluation(f"{budget} NFE", [[float(good)] * 2] * 2, budget))

    monkeypatch.setitem(bench_methods.RUNNERS, "find", runner)
    overrides = [
        *tiny_bench(tiny_shapes_dir, tmp_path),
        "bench.tuning.enabled=true",
        "bench.tuning.prompts=[a green triangle,a yellow square]",
        "bench.tuning.budget=40",
        "bench.tuning.grid={find: {learner.loss.policy_lr: [0.1, 3.0]}}",
    ]
    cfg = load_bench_config("configs/bench-shapes.yaml", overrides)
    assert tune(cfg, ["find"], Allowance(), progress=False).chosen["find"] == (
        ("learner.loss.policy_lr", 0.1),
    )
    cfg.bench.tuning.budget = 100
    tuning = tune(cfg, ["find"], Allowance(), progress=False)
    assert tuning.chosen["find"] == (("learner.loss.policy_lr", 3.0),)
    assert tuning.earlier["find", (("learner.loss.policy_lr", 3.0),)] == [("40 NFE", 0.0)]
    table = "\n".join(tuning_table(tuning))
    assert "| **learner.loss.policy_lr=3.0** | 1.000 | 1.000 | 40 NFE: 0.000 |" in table
    assert "| base | N(0, I) |" in table  # what the grid moves from, on the tuning prompts


def test_reach_finds_the_first_budget_at_a_peers_best(tmp_path):
    """FIND reaches DDPO's best (its 16k point) at 4k: a 4x speed-up, a lower bound since 4k is
    FIND's smallest budget; DDPO never reaches FIND's best, and the CI pairs the samples."""

    def cell(method: str, seed: int, exact_by_budget: dict[int, float]) -> Cell:
        c = Cell.open(tmp_path, CellKey(method, seed))
        for budget, share in exact_by_budget.items():
            c.add(evaluation(f"{budget} NFE", [[i < share * 10 for i in range(10)]] * 2, budget))
        return c

    cells = {
        "find": [cell("find", s, {4000: 0.6, 16000: 0.8}) for s in (0, 1)],
        "ddpo": [cell("ddpo", 0, {4000: 0.2, 16000: 0.5, 64000: 0.4})],
    }
    base = evaluation("N(0, I)", [[i < 2 for i in range(10)]] * 2)  # 0.2
    find = reach(cells, "find", "ddpo", base)
    best = ("16000 NFE (1 seed)", 0.5, 16000)
    assert (find.target_label, find.target_exact, find.target_nfe) == best
    assert (find.label, find.reached, find.at_first) == ("4000 NFE (2 seeds)", True, True)
    gain, low, high = find.difference  # paired: only the 6th sample of each prompt differs
    assert find.speedup == 4.0 and gain == pytest.approx(0.1) and 0 <= low < gain < high
    ddpo = reach(cells, "ddpo", "find", base)
    assert not ddpo.reached and ddpo.label == "16000 NFE (1 seed)" and math.isnan(ddpo.speedup)
    assert ddpo.difference[0] == pytest.approx(-0.3)
    assert reach(cells, "find", "drtune", base) is None
    table = "\n".join(reach_table([find, ddpo]))
    assert "| ≥ 4.0× |" in table and "no; best 16000 NFE (1 seed): 0.500" in table
    # a target whose best is not above the base leaves nothing to reach, and no speed-up
    level = reach(cells, "find", "ddpo", evaluation("N(0, I)", [[i < 5 for i in range(10)]] * 2))
    assert not level.target_moved and math.isnan(level.speedup)
    text = "\n".join(reach_table([level]))
    assert "nothing to reach (ddpo's best vs the base +0.000" in text
    assert "; passed at 4000 NFE (2 seeds): 0.600" in text


def test_the_before_after_figure_pairs_each_eval_noise_with_the_base(tmp_path):
    """A cell saves each evaluation's first images per prompt; the figure puts the base's above
    the method's last point, column by column (the same eval noise), one block per prompt."""
    import numpy as np

    from find_ray.eval.evaluate import PromptResult

    def results(fill: int, shown: int = 8) -> list[PromptResult]:
        image = np.full((32, 32, 3), fill, np.uint8)
        return [
            PromptResult(p, np.ones(8), np.ones(8), np.ones(8), [image + j for j in range(shown)])
            for p in ("a red circle", "a blue square")
        ]

    base, find = Cell.open(tmp_path, CellKey("base", 0)), Cell.open(tmp_path, CellKey("find", 0))
    base.add(evaluation("N(0, I)", [[1.0] * 8] * 2), results=results(10))
    for budget, fill in ((40, 100), (100, 200)):
        find.add(evaluation(f"{budget} NFE", [[1.0] * 8] * 2, budget), results=results(fill))
    assert find.images("40 NFE").shape == (2, 6, 32, 32, 3)  # the first SHOWN per prompt
    assert Cell.open(tmp_path, CellKey("find", 0)).images("100 NFE")[1, 5, 0, 0, 0] == 205
    figure = np.asarray(before_after(["a red circle", "a blue square"], base, find))
    # each prompt's block: a title, then the base's row above the method's, 96 px tiles
    # (labels under them) 100 px apart; column j shows eval sample j under both
    for block in (0, 1):
        top = block * (16 + 2 * 110 + 6) + 16
        for j in range(6):
            x = j * 100 + 2 + 48
            assert figure[top + 48, x, 0] == 10 + j  # the base
            assert figure[top + 110 + 48, x, 0] == 200 + j  # find's last point, not 40 NFE's
    assert figure.shape[:2] == (2 * (16 + 2 * 110 + 6), 600)
    prompts, cells = ["a red circle", "a blue square"], {"base": [base], "find": [find]}
    lines = write_figures(tmp_path, prompts, cells)
    assert "[find](images/find.png)" in lines[-1] and (tmp_path / "images" / "find.png").is_file()
    empty = Cell.open(tmp_path, CellKey("ddpo", 0))
    empty.add(evaluation("40 NFE", [[1.0] * 8] * 2, 40))  # no images: no figure
    assert before_after(["a red circle", "a blue square"], base, empty) is None


def test_bench_config_errors_name_the_key(tiny_shapes_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="bench.methods"):
        load_bench_config(None, ["bench.methods=[find,dpok]"])
    with pytest.raises(ConfigError, match="bench.nope"):
        load_bench_config(None, ["bench.nope=1"])
    with pytest.raises(ConfigError, match="bench.seeds"):
        load_bench_config(None, ["bench.seeds=[1,1]"])
    with pytest.raises(ConfigError, match="bench.tuning.grid"):
        load_bench_config(None, ["bench.tuning.grid={base: {x: [1]}}"])
    with pytest.raises(ConfigError, match="--preset"):
        load_bench_config(None, [], preset="slow")
    quick = load_bench_config("configs/bench-shapes.yaml", [], preset="quick")
    assert quick.bench.seeds == [0] and not quick.bench.tuning.enabled
    assert len(eval_prompts(quick.bench)) == 4  # the quick look: the first 4 prompts
    assert quick.bench.out_dir == "benchmarks/results/bench-shapes-quick"  # not the full bench's
    mine = load_bench_config("configs/bench-shapes.yaml", ["bench.out_dir=x"], preset="quick")
    assert mine.bench.out_dir == "x"
    for config in ("configs/bench-shapes.yaml", "configs/bench-shapes-flow.yaml"):
        full = load_bench_config(config, [])
        assert eval_prompts(full.bench) == full.bench.prompts and len(full.bench.prompts) == 8
        # untuned (--preset quick), FIND steps with the shipped alpha, not the library default
        alpha = load_config("configs/find-shapes.yaml").learner.loss.policy_lr
        assert load_config(None, full.bench.find).learner.loss.policy_lr == alpha
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
    drawn = {*bench_config.DEFAULT_METHODS, "find_best_of_n"}  # no Flow-GRPO, ReNO on SD 1.5
    assert {p["method"] for p in data["points"]} == drawn
    assert data["surrogate"] == {}  # CLIPScore's own gradient, no surrogate
    assert all(p["score"] == p["score"] for p in data["points"])  # finite scores
    assert "| dno | 1 it |" in (out / "bench.md").read_text()


def evaluation(label: str, exact, budget: int = 0, diversity=(1.0, 1.0)):
    exact = [list(map(float, row)) for row in exact]
    return Evaluation(label, budget, budget, 4.0, 1.0, exact, exact, list(diversity))


def test_a_row_is_the_mean_over_seeds_with_their_spread():
    from find_ray.bench.aggregate import best_of_points, seeds_point

    base = evaluation("N(0, I)", [[0, 0, 1, 0], [0, 1, 0, 0]])  # exact 0.25
    seed0 = evaluation("40 NFE", [[1, 0, 1, 0], [0, 1, 0, 0]], 40, (0.5, 1.0))  # 0.375
    seed1 = evaluation("40 NFE", [[1, 1, 1, 0], [1, 1, 0, 0]], 40, (1.0, 1.0))  # 0.625
    point = seeds_point("find", [seed0, seed1], base)
    assert point.seeds == 2 and point.exact == pytest.approx(0.5)
    gain, low, high = point.exact_gain
    assert gain == pytest.approx(0.25) and low <= gain <= high
    assert point.exact_gain_sd == pytest.approx((0.375 - 0.125) / 2**0.5)  # sd of +0.125, +0.375
    assert point.diversity_ratio == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    one, two = best_of_points("find_best_of_n", [seed0, seed1], base, [2, 4])
    assert one.inference_nfe == 8 and two.inference_nfe == 16
    # rows with an exact sample among 4 draw it for sure at N = 4: every row here has one
    assert two.exact == pytest.approx(1.0) and point.exact <= one.exact <= two.exact


def test_a_rows_ci_counts_each_prompt_once_however_many_seeds_ran_it():
    """Seeds share the eval noise: a second seed identical to the first adds no evidence, so
    it leaves the CI as it was (stacking the seeds as more prompts would narrow it)."""
    from find_ray.bench.aggregate import seeds_point
    from find_ray.eval.stats import paired_bootstrap_ci

    base = evaluation("N(0, I)", [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    seed0 = evaluation("40 NFE", [[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], 40)
    seed1 = evaluation("40 NFE", [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], 40)
    one, twice = seeds_point("find", [seed0], base), seeds_point("find", [seed0, seed0], base)
    assert twice.exact_gain == one.exact_gain and twice.score_gain == one.score_gain
    mean = (np.array(seed0.exact) + np.array(seed1.exact)) / 2  # each eval noise over the seeds
    two = seeds_point("find", [seed0, seed1], base)
    assert two.exact_gain == paired_bootstrap_ci(np.array(base.exact), mean)


def test_a_method_still_rising_gets_four_times_the_budget_until_it_plateaus():
    from find_ray.bench.cells import Cell, CellKey
    from find_ray.bench.schedule import extended_budgets

    def cell(seed, exacts):
        c = Cell(CellKey("find", seed), None)
        c.evaluations = [evaluation(f"{b}", [[e]], b) for b, e in exacts.items()]
        return c

    rising = [cell(0, {10: 0.1, 40: 0.3, 160: 0.5}), cell(1, {10: 0.1, 40: 0.3, 160: 0.6})]
    assert extended_budgets(rising, [10, 40], 1000, 0.02) == [10, 40, 160, 640]
    assert extended_budgets(rising, [10, 40], 200, 0.02) == [10, 40, 160]  # extend_to caps
    assert extended_budgets(rising, [10, 40], 0, 0.02) == [10, 40]  # off
    flat = [cell(0, {10: 0.3, 40: 0.31})]
    assert extended_budgets(flat, [10, 40], 1000, 0.02) == [10, 40]
    unfinished = [cell(0, {10: 0.1, 40: 0.3}), cell(1, {10: 0.1})]
    assert extended_budgets(unfinished, [10, 40], 1000, 0.02) == [10, 40]  # waits for seed 1


def test_a_bench_folder_refuses_results_of_another_eval_setting(tmp_path):
    from find_ray.bench.schedule import check_same_bench

    out = tmp_path / "bench"
    check_same_bench(load_bench_config(None, ["bench.eval_samples=16"]), out)
    check_same_bench(load_bench_config(None, ["bench.eval_samples=16", "bench.seeds=[0,1]"]), out)
    with pytest.raises(ConfigError, match="bench.eval_samples"):
        check_same_bench(load_bench_config(None, ["bench.eval_samples=64"]), out)


@pytest.mark.slow
def test_the_flow_bench_runs_flow_grpo_dno_and_reno_on_a_tiny_flow_model(tmp_path):
    """configs/bench-shapes-flow.yaml on a tiny random flow-matching shapes model: Flow-GRPO
    trains on the flow SDE, DNO and ReNO optimise eval noise through it; NFE accounted."""
    from tests.tiny_flow import tiny_flow

    tiny_flow().save_pretrained(tmp_path / "flow")
    out = tmp_path / "bench"
    overrides = [
        *tiny_bench(tmp_path / "flow", out),
        "bench.methods=[base,find,flow_grpo,dno,reno]",
        "bench.flow_grpo.prompts_per_epoch=1",
        "bench.flow_grpo.group_size=2",
        "bench.flow_grpo.sample_batch_size=2",
        "bench.flow_grpo.train_batch_size=2",
        "bench.reno.iterations=[1,2]",
    ]
    cfg = load_bench_config("configs/bench-shapes-flow.yaml", overrides)
    run_bench(cfg, progress=False)
    points = json.loads((out / "bench.json").read_text())["points"]
    calls = 2 * 2  # 2 Euler steps, guidance 1.5 doubles
    by_method = {m: [p for p in points if p["method"] == m] for m in cfg.bench.methods}
    assert [p["label"] for p in by_method["flow_grpo"]] == ["40 NFE", "100 NFE"]
    assert by_method["flow_grpo"][-1]["train_nfe"] >= 100
    assert [p["inference_nfe"] for p in by_method["reno"]] == [1 * calls, 2 * calls]
    assert [p["inference_nfe"] for p in by_method["dno"]] == [2 * calls + calls, 4 * calls + calls]


def test_a_sampler_knob_is_paired_with_the_bench_base(tiny_shapes_dir, tmp_path, monkeypatch):
    from find_ray.bench.bench import Bench
    from find_ray.bench.report import knob_points
    from find_ray.experiments import sampler_knobs

    out = tmp_path / "bench"
    overrides = tiny_bench(tiny_shapes_dir, out)
    run_bench(load_bench_config(None, overrides), ["base"], progress=False)
    both = "model.steps=3 model.guidance=1.5"  # two overrides together; the second is the bench's
    argv = ["--knob", "model.guidance=1.5", "--knob", "model.steps=3", "--knob", both, *overrides]
    drawn = []  # the knobs the bench's plot is redrawn with
    monkeypatch.setattr("find_ray.bench.plot", lambda *a: drawn.append([p.label for p in a[3]]))
    sampler_knobs.main(argv)
    points = json.loads((out / "knobs" / "knobs.json").read_text())["points"]
    benched, same, steps3, together = points
    assert same["label"] == "model.guidance=1.5" and steps3["label"] == "model.steps=3"
    # the bench's own setting again: the same eval noise gives the same samples, a gain of 0
    assert same["quality"] == benched["quality"] and same["quality_gain"] == [0.0, 0.0, 0.0]
    assert same["exact_gain"] == [0.0, 0.0, 0.0] and steps3["quality"] != benched["quality"]
    assert (steps3["inference_nfe"], benched["inference_nfe"]) == (6, 4)  # CFG: 2 calls a step
    assert together["label"] == both and together["quality"] == steps3["quality"]
    assert (
        drawn == [[p.label for p in knob_points(out)]] == [[same["label"], "model.steps=3", both]]
    )
    assert "| model.steps=3 | 6 |" in (out / "knobs" / "knobs.md").read_text()
    monkeypatch.setattr(Bench, "evaluate", lambda *_: pytest.fail("a saved knob ran again"))
    sampler_knobs.main(argv)
    with pytest.raises(ConfigError, match="bench.eval_samples"):  # not the saved bench's noise
        sampler_knobs.main([*argv, "bench.eval_samples=8"])
