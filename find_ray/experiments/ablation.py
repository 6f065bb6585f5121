"""FIND ablation on the shapes world: reward against denoiser calls (NFE), gains with CIs.

Variants of one config (default configs/find-shapes.yaml): FIND; without DRCM (A = r); without
ratio clipping; without historical reuse (one epoch on the fresh batch only); the optimiser
(SGD, AdamW). The reference line is best-of-N of the base policy at the same NFE, estimated
from a pool of base samples. Writes benchmarks/results/ablation/{ablation.json, ablation.md,
ablation.png}. Run: `python benchmarks/ablation.py` (about 15 minutes a variant on 2 cores);
a variant whose run folder holds a finished run of the same config is read, not retrained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from find_ray.backends import denoiser_calls, make_backend
from find_ray.config import FindRayConfig, load_config
from find_ray.eval.evaluate import evaluate
from find_ray.eval.report import ci_cell, md_table, publish, write_json
from find_ray.eval.stats import expected_best_of
from find_ray.prompts import train_prompts
from find_ray.rewards import make_reward
from find_ray.runs.folder import finished_with
from find_ray.runs.in_process import train_in_process

RESULTS = Path("benchmarks/results") / "ablation"
VARIANTS: dict[str, list[str]] = {
    "find": [],
    "no_drcm": ["learner.baseline=none"],
    "no_clip": ["learner.loss.eps=1e9"],
    "no_reuse": ["learner.max_policy_lag=0", "learner.epochs=1"],
    "sgd": [
        "learner.optimizer=sgd",
        "learner.loss.policy_lr=30",
        "learner.loss.normalise_advantages=false",
    ],
    "adamw": ["learner.optimizer=adamw", "learner.loss.policy_lr=1e-3"],
}


def best_of_n_curve(cfg: FindRayConfig, pool_size: int) -> list[dict[str, float]]:
    """Mean over prompts of E[best-of-N score] of the base policy, for N = 1, 2, 4, ..."""
    prompts = train_prompts(cfg)
    backend = make_backend(cfg.model)
    pool = evaluate(
        backend,
        make_reward(cfg.reward),
        prompts,
        pool_size,
        cfg.eval.seed + 1,
        cfg.eval.batch_size,
        grid_samples=0,
    )
    sizes = [2**i for i in range(pool_size.bit_length()) if 2**i <= pool_size]
    return [
        {
            "n": n,
            "nfe": n * denoiser_calls(cfg.model.steps, cfg.model.guidance),
            "score": float(np.mean([expected_best_of(r.scores, n) for r in pool])),
            "exact": float(np.mean([expected_best_of(r.exact, n) for r in pool])),
        }
        for n in sizes
    ]


def run_variant(config: str, name: str, overrides: list[str], runs: Path) -> dict:
    """Trains one variant unless its folder already holds a finished run of the same config."""
    cfg = load_config(config, [*overrides, *VARIANTS[name], f"train.out_dir={runs / name}"])
    run_dir = Path(cfg.train.out_dir)
    if not finished_with(run_dir, cfg):
        train_in_process(cfg)
    else:
        print(f"{name}: reusing the finished run in {run_dir}")
    return read_variant(cfg, name, run_dir)


def read_variant(cfg: FindRayConfig, name: str, run_dir: Path) -> dict:
    """One table row from a run folder: gains (metrics.json) and the reward curve (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    rewards = events.Scalars("reward_mean")
    per_iteration = cfg.train.samples_per_prompt * denoiser_calls(
        cfg.model.steps, cfg.model.guidance
    )
    span = rewards[-1].wall_time - rewards[0].wall_time
    train_seconds = span * len(rewards) / max(len(rewards) - 1, 1)  # first iteration included
    return {
        "variant": name,
        "overrides": VARIANTS[name],
        "minutes": round(train_seconds / 60, 1),
        "gains": json.loads((run_dir / "metrics.json").read_text())["gains"],
        # TensorBoard step = the learner version after the update (1 after the first)
        "curve": [{"nfe": e.step * per_iteration, "reward": e.value} for e in rewards],
    }


def write_results(rows: list[dict], best_of: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json(out / "ablation.json", {"variants": rows, "best_of_n": best_of})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in sorted(rows, key=lambda r: r["variant"] == "find"):  # FIND on top
        full = row["variant"] == "find"
        ax.plot(
            [p["nfe"] for p in row["curve"]],
            [p["reward"] for p in row["curve"]],
            label=row["variant"],
            linewidth=2.5 if full else 1.2,
            color="black" if full else None,
            zorder=3 if full else 2,
        )
    ax.plot(
        [p["nfe"] for p in best_of], [p["score"] for p in best_of], "k--", label="best-of-N (base)"
    )
    ax.set(
        xscale="log",
        xlabel="denoiser calls per prompt (NFE)",
        ylabel="mean graded reward of the rollouts",
        title="FIND ablation, shapes world",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    lines = [*variant_table(rows), "", *best_of_table(best_of)]
    publish(out / "ablation.md", lines)


def variant_table(rows: list[dict]) -> list[str]:
    """One row a variant: exact and score gains with CIs, final reward, training time."""
    header = ["variant", "exact gain [95 % CI]", "score gain [95 % CI]"]
    header += ["final rollout reward", "train minutes"]
    cells = [
        [row["variant"], ci_cell(**row["gains"]["exact"]), ci_cell(**row["gains"]["scores"])]
        + [f"{row['curve'][-1]['reward']:.3f}", row["minutes"]]
        for row in rows
    ]
    return md_table(header, cells, "lllrr")


def best_of_table(best_of: list[dict]) -> list[str]:
    """Best-of-N of the base policy: expected best score and exact match at each N."""
    header = ["best-of-N", "NFE", "E[best score]", "E[best exact]"]
    cells = [[p["n"], p["nfe"], f"{p['score']:.3f}", f"{p['exact']:.3f}"] for p in best_of]
    return md_table(header, cells, "rrrr")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/find-shapes.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--pool", type=int, default=64, help="base samples per prompt")
    parser.add_argument("--out", default=str(RESULTS), help="tables and plot")
    parser.add_argument("--runs", default="runs/ablation", help="each variant's run folder")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = Path(args.runs)
    rows = [run_variant(args.config, name, args.overrides, runs) for name in args.variants]
    best_of = best_of_n_curve(load_config(args.config, args.overrides), args.pool)
    write_results(rows, best_of, out)


if __name__ == "__main__":
    main()
