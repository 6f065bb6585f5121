"""Policies that keep image quality: FIND's gain beside the quality, shell and diversity it
costs, one cell per way of keeping z_T typical.

Each cell is an alignment run (`experiments.alignment`: through Ray, paired eval, the base's
best-of-N on the same noise) of the config with the cell's overrides:

- plain: z = mu + sigma * eps (no shell control);
- project: the Gaussian action rescaled onto the shell ||z||^2 = d by the environment
  (`policy.shell=project`);
- tied: sigma = sqrt(1 - ||mu||^2 / d), so E ||z||^2 = d (`policy.shell=tied`);
- kl_*: a KL(pi || N(0, I)) penalty in the loss (`learner.loss.kl_weight`);
- quality_*: the quality scorer's score added to the reward (`reward.quality_weight`).

    python benchmarks/quality_sweep.py --cells plain project tied kl_0.02 quality_5 \\
        --seeds 0 -- eval.samples_per_prompt=64

Writes benchmarks/results/alignment/quality-<cell>.{json,md} (the runs) and
quality_sweep.{json,md,png} (the table and a plot of exact-match gain against the change in
artifacts); cells already run with the same config are read back.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from find_ray.eval.report import fmt, md_table, publish, write_json
from find_ray.experiments import alignment

RESULTS = Path("benchmarks/results") / "alignment"
CELLS: dict[str, list[str]] = {
    "plain": ["policy.shell=none"],
    "project": ["policy.shell=project"],
    "tied": ["policy.shell=tied"],
    "kl_0.005": ["policy.shell=none", "learner.loss.kl_weight=0.005"],
    "kl_0.02": ["policy.shell=none", "learner.loss.kl_weight=0.02"],
    "quality_5": ["policy.shell=none", "reward.quality_weight=5"],
    "project_quality_5": ["policy.shell=project", "reward.quality_weight=5"],
}


def kept_rows(out: Path, overrides: list[str]) -> list[dict]:
    """The rows of an earlier quality_sweep.json made with the same overrides (a sweep grows
    over several invocations: finalists get more seeds later)."""
    path = out / "quality_sweep.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data.get("cells", []) if data.get("overrides") == overrides else []


def cell_row(cell: str, result: dict) -> dict:
    """A cell's figures from its alignment results: means over its seeds, and seed 0's CI."""
    s, first = result["summary"], result["seeds"][0]["train"]

    def mean(key: str) -> float:
        return s[key]["mean"] if key in s else math.nan

    return {
        "cell": cell,
        "seeds": len(result["seeds"]),
        "seed_list": [r["seed"] for r in result["seeds"]],
        "exact_after": mean("exact_after"),
        "gain": mean("train_gain"),
        "gain_sd": s["train_gain"]["sd"],
        "ci": [first["exact_low"], first["exact_high"]],
        "artifacts_relative": mean("artifacts_relative"),
        "shell": mean("shell_shell_mean"),
        "diversity_ratio": mean("diversity_ratio"),
        "kl_to_prior": s["kl_to_prior"]["mean"],
        "find_best_of_4": s.get("find_best_of", {}).get("4", {}).get("mean", math.nan),
        "base_best_of_4": result["references"].get("best_of_4", math.nan),
    }


def commands(rows: list[dict], overrides: list[str]) -> list[str]:
    """The command lines that made the rows: one per set of seeds."""
    by_seeds: dict[tuple, list[str]] = {}
    for r in rows:
        by_seeds.setdefault(tuple(r.get("seed_list", [0])), []).append(r["cell"])
    return [
        f"`python benchmarks/quality_sweep.py --cells {' '.join(cells)} --seeds "
        f"{' '.join(map(str, seeds))} -- {' '.join(overrides)}`\n"
        for seeds, cells in by_seeds.items()
    ]


def sweep_table(rows: list[dict]) -> list[str]:
    header = ["cell", "seeds", "exact after", "exact gain (± sd over seeds)", "seed 0's 95 % CI"]
    header += ["artifacts, relative to base", "‖z_T‖² / d", "diversity ratio", "KL to N(0, I)"]
    header += ["FIND + best-of-4", "base best-of-4"]
    cells = [
        [r["cell"], r["seeds"], fmt(r["exact_after"]), f"{r['gain']:+.3f} ± {r['gain_sd']:.3f}"]
        + [f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]", fmt(100 * r["artifacts_relative"], "+.0f")]
        + [fmt(r["shell"]), fmt(r["diversity_ratio"], ".2f"), fmt(r["kl_to_prior"], ".0f")]
        + [fmt(r["find_best_of_4"]), fmt(r["base_best_of_4"])]
        for r in rows
    ]
    return md_table(header, cells, "lrrllrrrrrr")


def plot(rows: list[dict], path: Path) -> None:
    """Exact-match gain (seed 0's CI) against the change in artifact pixels, one point a cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in rows:
        x = 100 * r["artifacts_relative"]
        yerr = [[r["gain"] - r["ci"][0]], [r["ci"][1] - r["gain"]]]
        ax.errorbar([x], [r["gain"]], yerr=yerr, marker="o", capsize=3, label=r["cell"])
    ax.axvspan(-10, 10, color="green", alpha=0.08, label="quality within 10 %")
    ax.axhline(0.35, color="gray", linestyle="--", linewidth=0.8, label="+35 points")
    ax.set(xlabel="artifact pixels, % change from the base", ylabel="exact-match gain")
    ax.set_title("FIND on the shapes world: gain against image quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", default="configs/find-shapes.yaml")
    parser.add_argument("--runs", default="runs/alignment")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="config overrides for every cell")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = [r for r in kept_rows(out, args.overrides) if r["cell"] not in args.cells]
    for cell in args.cells:  # the table is rewritten after every cell: a killed sweep keeps it
        seeds = [str(seed) for seed in args.seeds]
        name = f"quality-{cell}"
        common = ["--config", args.config, "--runs", args.runs, "--out", str(out)]
        overrides = [*args.overrides, *CELLS[cell]]  # before --seeds: it takes what follows
        alignment.main(["--name", name, *common, *overrides, "--seeds", *seeds])
        rows.append(cell_row(cell, json.loads((out / f"{name}.json").read_text())))
        rows.sort(key=lambda r: list(CELLS).index(r["cell"]))
        write_json(out / "quality_sweep.json", {"overrides": args.overrides, "cells": rows})
        plot(rows, out / "quality_sweep.png")
        publish(out / "quality_sweep.md", [*commands(rows, args.overrides), *sweep_table(rows)])


if __name__ == "__main__":
    main()
