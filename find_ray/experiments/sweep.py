"""Where FIND needs its bounds: one factor at a time, under three kinds of bound.

The default cell is configs/find-shapes.yaml. Each factor changes one setting from it: a
larger natural step (alpha 1, 3; default 0.3), more epochs over the stored rollouts (16;
default 4), staler rollouts (`max_policy_lag` 8; default 2) and a noisy reward (detector score
+ N(0, 0.3^2)). Each cell is trained with:

- mean_clip: the shipped method, the FIND code's ratio of per-element *mean* log-densities,
  clipped at 1 +- 0.2 (that ratio hardly leaves 1, so the clip is nominal);
- true_clip: the true ratio (`logp_reduction=sum`, log-densities summed over the latent), PPO
  clipped: the bound PPO means;
- true_clamp: the true ratio in the FIND code's surrogate, -clip(rho) A (no unclipped branch);
- trust_region: the shipped method under a per-update KL(pi_old || pi_new) <= 20 nats per
  prompt (about what an unconstrained default update moves: 19 mean, 30 max over 20 updates
  of a per-prompt run), enforced by shrinking the step;
- prompt_mean: the shipped method with the per-prompt mean stored reward as baseline instead
  of the DRCM.

One training seed per cell; the exact-match gain on the training prompts with its 95 % paired
bootstrap CI, the mean clip fraction, the advantage variance after / before calibration, the
largest per-update KL, the KL to N(0, I) and the diversity ratio.

    python benchmarks/sweep.py                       # every cell (about 12 minutes each)
    python benchmarks/sweep.py --factors default alpha_3 --methods mean_clip trust_region
    python benchmarks/sweep.py --cells default/true_clip noisy_reward/prompt_mean

Writes benchmarks/results/alignment/sweep.{json,md,png} after every cell; a cell whose run
folder holds a finished run of the same config is read, not retrained, and the rows already in
sweep.json of cells not asked for (trained with the same overrides) are kept, so that a sweep
can grow over several sessions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from find_ray.config import load_config
from find_ray.eval.report import ci_cell, fmt, md_table, publish, write_json
from find_ray.eval.stats import finite_mean
from find_ray.runs.folder import finished_with
from find_ray.runs.in_process import train_in_process

RESULTS = Path("benchmarks/results") / "alignment"
FACTORS: dict[str, list[str]] = {
    "default": ["learner.loss.policy_lr=0.3"],  # the step the sweep ran from (the old default)
    "alpha_1": ["learner.loss.policy_lr=1.0"],
    "alpha_3": ["learner.loss.policy_lr=3.0"],
    "epochs_16": ["learner.epochs=16"],
    "lag_8": ["learner.max_policy_lag=8", "learner.store_capacity=2048"],
    "noisy_reward": ["reward.noise_std=0.3"],
}
METHODS: dict[str, list[str]] = {
    "mean_clip": [],
    "true_clip": ["learner.loss.logp_reduction=sum"],
    "true_clamp": ["learner.loss.logp_reduction=sum", "learner.loss.surrogate=clamp"],
    "trust_region": ["learner.target_kl=20"],
    "prompt_mean": ["learner.baseline=prompt_mean"],
}


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar the run logged to TensorBoard, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0}, purge_orphaned_data=False
    )
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def cell_row(factor: str, method: str, run_dir: Path, overrides: list[str]) -> dict:
    """One table row from a finished run: gains, diversity (metrics.json) and the learner's
    logged statistics (TensorBoard)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = scalars(run_dir)

    def mean_of(tag: str) -> float:
        return finite_mean(logged.get(tag, []))

    raw, calibrated = mean_of("adv_var_raw"), mean_of("adv_var_calibrated")
    return {
        "factor": factor,
        "method": method,
        "overrides": overrides,
        "exact": metrics["gains"]["exact"],
        "scores": metrics["gains"]["scores"],
        "exact_after": metrics["means"]["exact_after"],
        "diversity_ratio": metrics["diversity"]["ratio"],
        "clip_fraction": mean_of("clip_fraction"),
        "adv_var_ratio": calibrated / raw if raw > 0 else float("nan"),
        "kl_update_max": max(logged.get("kl_update_max", [float("nan")])),
        "kl_to_prior": logged.get("kl_to_prior_total", [float("nan")])[-1],
        "final_reward": logged["reward_mean"][-1],
        **quality_of(metrics),
    }


def quality_of(metrics: dict) -> dict:
    """The artifact rate's relative change and the trained latents' ||z||^2 / d of a report
    (NaN for runs reported before these figures existed)."""
    quality = metrics.get("quality", {})
    artifacts = quality.get("artifacts", {}).get("relative", float("nan"))
    shell = quality.get("shell", {}).get("trained", {}).get("shell_mean", float("nan"))
    return {"artifacts_relative": artifacts, "shell": shell}


def run_cell(config: str, factor: str, method: str, overrides: list[str], runs: Path) -> dict:
    run_dir = runs / f"{factor}-{method}"
    cfg = load_config(
        config,
        [*FACTORS[factor], *METHODS[method], *overrides, f"train.out_dir={run_dir}"],
    )
    if finished_with(run_dir, cfg):
        print(f"{factor}/{method}: reusing the finished run in {run_dir}")
    else:
        train_in_process(cfg)
    return cell_row(factor, method, run_dir, overrides)


def kept_rows(out: Path, overrides: list[str]) -> list[dict]:
    """The rows already in `out`/sweep.json that were trained with these overrides."""
    path = out / "sweep.json"
    rows = json.loads(path.read_text())["cells"] if path.exists() else []
    return [r for r in rows if r.get("overrides") == overrides]


def grid_order(row: dict) -> tuple[int, int]:
    return list(FACTORS).index(row["factor"]), list(METHODS).index(row["method"])


def write_results(rows: list[dict], out: Path) -> None:
    rows = sorted(rows, key=grid_order)
    write_json(out / "sweep.json", {"cells": rows})
    plot(rows, out / "sweep.png")
    cells = " ".join(f"{r['factor']}/{r['method']}" for r in rows)
    lines = [
        f"`python benchmarks/sweep.py --cells {cells} -- {' '.join(rows[0]['overrides'])}`",
        "",
        *sweep_table(rows),
    ]
    publish(out / "sweep.md", lines)


def sweep_table(rows: list[dict]) -> list[str]:
    """One row a cell: its exact-match gain and the learner's statistics."""
    header = ["factor", "method", "exact gain [95 % CI]", "exact after", "clip fraction"]
    header += ["adv. var. after / before", "max KL per update", "KL to N(0, I)"]
    header += ["diversity ratio", "artifacts, % change", "‖z_T‖² / d"]
    cells = [
        [r["factor"], r["method"], ci_cell(**r["exact"]), f"{r['exact_after']:.3f}"]
        + [f"{r['clip_fraction']:.2f}", f"{r['adv_var_ratio']:.2f}", f"{r['kl_update_max']:.3g}"]
        + [f"{r['kl_to_prior']:.3g}", f"{r['diversity_ratio']:.2f}"]
        + [fmt(100 * r.get("artifacts_relative", float("nan")), "+.0f")]
        + [fmt(r.get("shell", float("nan")))]
        for r in rows
    ]
    return md_table(header, cells, "lllrrrrrrrr")


def plot(rows: list[dict], path: Path) -> None:
    """Exact-match gain with its CI, one bar a cell, grouped by factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = list(dict.fromkeys(r["factor"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(factors)), 4.5))
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        cells = {r["factor"]: r["exact"] for r in rows if r["method"] == method}
        xs = [f + (m - (len(methods) - 1) / 2) * width for f, n in enumerate(factors) if n in cells]
        gains = [cells[n] for n in factors if n in cells]
        ax.bar(
            xs,
            [g["gain"] for g in gains],
            width,
            yerr=[[g["gain"] - g["low"] for g in gains], [g["high"] - g["gain"] for g in gains]],
            capsize=3,
            label=method,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(factors)), factors)
    ax.set(ylabel="exact-match gain (95 % CI)", title="FIND: one factor at a time, shapes world")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/find-shapes.yaml")
    parser.add_argument("--factors", nargs="+", default=list(FACTORS), choices=list(FACTORS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--cells", nargs="+", metavar="FACTOR/METHOD", help="these cells, instead of the grid"
    )
    parser.add_argument("--runs", default="runs/sweep", help="each cell's run folder")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    cells = [tuple(c.split("/", 1)) for c in args.cells or []] or [
        (factor, method) for factor in args.factors for method in args.methods
    ]
    for factor, method in cells:
        if factor not in FACTORS or method not in METHODS:
            parser.error(
                f"unknown cell {factor}/{method}: factors {list(FACTORS)}, methods {list(METHODS)}"
            )
    out = Path(args.out)
    rows = [r for r in kept_rows(out, args.overrides) if (r["factor"], r["method"]) not in cells]
    for factor, method in cells:  # results written after every cell: a killed sweep keeps them
        rows.append(run_cell(args.config, factor, method, args.overrides, runs))
        write_results(rows, out)


if __name__ == "__main__":
    main()
