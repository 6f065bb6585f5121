"""FIND's gains over training seeds on the shapes world, beside the cheap alternatives.

Each seed trains one run through the Ray system (`find-ray train`, `train.seed` = the seed) and
is evaluated on the training prompts (the run's own report: base and trained policy on the
same eval noise, paired bootstrap CI) and, with `--heldout`, on the held-out suite (`find-ray
eval --run RUN --suite heldout`; the base results are computed once and shared by the seeds).
Beside every gain: the policy's KL to N(0, I) (summed over the latent, mean over prompts) and
the diversity ratio (mean pairwise distance of a prompt's images, trained / base). The
reference lines are the base's best-of-N (expected maximum of N draws from its eval samples)
and the base at CFG 1.0, on the same prompts and eval noise.

    python benchmarks/alignment.py eval.samples_per_prompt=64 --name per-prompt-cfg1.5 \\
        --config configs/find-shapes.yaml --seeds 0 1 2
    python benchmarks/alignment.py --name amortized --config configs/find-shapes-amortized.yaml \\
        --heldout

Config overrides go before the options (`--seeds` takes every number that follows it).
Writes benchmarks/results/alignment/<name>.{json,md}; a seed whose run folder holds a finished
run of the same config is read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from find_ray.algo.policy_files import load_policy
from find_ray.backends import make_backend
from find_ray.config import FindRayConfig, load_config, to_yaml
from find_ray.eval.evaluate import PromptResult, evaluate_policy
from find_ray.eval.report import ci_cell, fmt, md_table, write_json
from find_ray.eval.stats import expected_best_of
from find_ray.prompts import load_suite, train_prompts
from find_ray.rewards import evaluation_reward
from find_ray.runs.folder import finished_with, runs_as

RESULTS = Path("benchmarks/results") / "alignment"
BEST_OF = (1, 2, 4, 8, 16)


def train_seed(config: str, overrides: list[str], seed: int, run_dir: Path) -> float:
    """Trains seed `seed` through Ray unless `run_dir` holds a finished run of the same config;
    returns the training minutes (NaN when reused)."""
    from find_ray.system.driver import train_with_ray

    cfg = load_config(config, [*overrides, f"train.seed={seed}", f"train.out_dir={run_dir}"])
    if finished_with(run_dir, cfg):
        print(f"seed {seed}: reusing the finished run in {run_dir}")
        return float("nan")
    began = time.monotonic()
    train_with_ray(cfg)
    return (time.monotonic() - began) / 60


def kl_to_prior(run_dir: Path) -> float:
    """Mean over the training prompts of KL(pi(.|c) || N(0, I)), summed over the latent."""
    policy = load_policy(run_dir / "policy.safetensors")
    with torch.no_grad():
        return policy.kl_to_standard_normal(torch.arange(policy.num_prompts), "sum").mean().item()


def cached_base(cfg: FindRayConfig, prompts: list[str], path: Path) -> list[PromptResult]:
    """The base policy's eval results on `prompts` (pickled at `path`: computed once)."""
    sections = (cfg.model, cfg.reward, cfg.eval)  # whatever changes the base's results
    key = [prompts, *(OmegaConf.to_yaml(OmegaConf.structured(s)) for s in sections)]
    if path.is_file():
        cached = pickle.loads(path.read_bytes())
        if cached["key"] == key:
            return cached["results"]
    results = evaluate_policy(make_backend(cfg.model), evaluation_reward(cfg), prompts, cfg.eval)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"key": key, "results": results}))
    return results


def references(config: str, overrides: list[str], cache: Path) -> dict:
    """Base exact match on the training prompts: best-of-N at the config's CFG, and one
    sample at CFG 1.0 (when the config's CFG is another)."""
    cfg = load_config(config, overrides)
    prompts = train_prompts(cfg)
    base = cached_base(cfg, prompts, cache / "base-train.pkl")
    refs = {
        f"best_of_{n}": float(np.mean([expected_best_of(r.exact, n) for r in base]))
        for n in BEST_OF
        if n <= cfg.eval.samples_per_prompt
    }
    if cfg.model.guidance != 1.0:
        cfg1 = load_config(config, [*overrides, "model.guidance=1.0"])
        cfg1_base = cached_base(cfg1, prompts, cache / "base-train-cfg1.pkl")
        refs["cfg_1.0"] = float(np.mean([r.exact.mean() for r in cfg1_base]))
    return refs


def gain_row(metrics: dict) -> dict:
    """Exact and score gains with CIs and the diversity ratio from a report's metrics.json."""
    row = {f"{m}_{k}": v for m, g in metrics["gains"].items() for k, v in g.items()}
    row.update(metrics["means"])
    row["diversity_ratio"] = metrics["diversity"]["ratio"]
    quality = metrics.get("quality", {})
    for name in ("quality", "artifacts"):
        if name in quality:
            row.update({f"{name}_{k}": v for k, v in quality[name].items()})
    if "shell" in quality:
        row.update({f"shell_{k}": v for k, v in quality["shell"]["trained"].items()})
    if "samples" in metrics:  # the trained policy as the proposal of best-of-N (expected max)
        exact = np.array(metrics["samples"]["exact_after"])
        k = exact.shape[1]
        row["find_best_of"] = {
            str(n): float(np.mean([expected_best_of(e, n) for e in exact]))
            for n in BEST_OF
            if n <= k
        }
    return row


def evaluate_seed(cfg: FindRayConfig, run_dir: Path, heldout: list[PromptResult] | None) -> dict:
    """One seed's row: training-prompt gains (its report), KL, and held-out gains."""
    from find_ray.runs.run_eval import evaluate_run

    row = {"train": gain_row(json.loads((run_dir / "metrics.json").read_text()))}
    row["kl_to_prior"] = kl_to_prior(run_dir)
    if heldout is not None:
        evaluate_run(run_dir, "heldout", [], base=heldout)
        row["heldout"] = gain_row(json.loads((run_dir / "eval-heldout/metrics.json").read_text()))
    return row


def recorded_rows(results: Path) -> dict[int, dict]:
    """The seed rows of an earlier results file (each with the config it was trained with), so
    that a fresh checkout continues a benchmark whose run folders it does not have."""
    if not results.is_file():
        return {}
    return {row["seed"]: row for row in json.loads(results.read_text())["seeds"]}


def spread(rows: list[dict], part: str, key: str) -> dict[str, float]:
    values = np.array([r[part][key] for r in rows if part in r])
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1) if len(values) > 1 else 0)}


def seed_table(rows: list[dict]) -> list[str]:
    """One row a seed: run minutes, training-prompt exact match and gains, KL, diversity,
    image quality and the shell, the trained policy as best-of-4's proposal, the held-out
    gain."""
    header = ["seed", "run minutes (train + eval)", "exact before", "exact after"]
    header += ["exact gain [95 % CI]", "score gain", "KL to N(0, I)", "diversity ratio"]
    header += ["artifacts base → trained (relative)", "‖z_T‖² / d (off shell)"]
    header += ["FIND + best-of-4", "held-out exact gain [95 % CI]", "held-out diversity ratio"]
    cells = []
    for r in rows:
        t, h = r["train"], r.get("heldout")
        held = ["n/a", "n/a"]
        if h:
            held = [exact_gain_cell(h), f"{h['diversity_ratio']:.2f}"]
        cells.append(
            [
                r["seed"],
                f"{r['minutes']:.1f}",
                f"{t['exact_before']:.3f}",
                f"{t['exact_after']:.3f}",
            ]
            + [exact_gain_cell(t), ci_cell(t["scores_gain"]), f"{r['kl_to_prior']:.2f}"]
            + [f"{t['diversity_ratio']:.2f}", *quality_cells(t)]
            + [fmt(t.get("find_best_of", {}).get("4", float("nan"))), *held]
        )
    return md_table(header, cells, "rrrrlrrrlllll")


def quality_cells(row: dict) -> list[str]:
    """The artifact rate of base and trained images (relative change), and the trained
    policy's ||z_T||^2 / d with the fraction of its samples off the shell."""
    artifacts, shell = "n/a", "n/a"
    if "artifacts_base" in row:
        change = fmt(100 * row["artifacts_relative"], "+.0f")
        artifacts = f"{row['artifacts_base']:.4f} → {row['artifacts_trained']:.4f} ({change} %)"
    if "shell_shell_mean" in row:
        shell = f"{row['shell_shell_mean']:.3f} ({row['shell_shell_outside_99']:.2f})"
    return [artifacts, shell]


def exact_gain_cell(row: dict) -> str:
    """A gain row's exact-match gain with its 95 % CI."""
    return ci_cell(row["exact_gain"], row["exact_low"], row["exact_high"])


def summarise_seeds(rows: list[dict]) -> dict:
    """Mean and sd over seeds of the gains, diversity, quality, shell and best-of-4 figures."""
    summary = {"kl_to_prior": {"mean": float(np.mean([r["kl_to_prior"] for r in rows]))}}
    keys = {"train_gain": "exact_gain", "exact_after": "exact_after"}
    keys |= {k: k for k in ("diversity_ratio", "artifacts_relative", "shell_shell_mean")}
    for name, key in keys.items():
        if all(key in r["train"] for r in rows):
            summary[name] = spread(rows, "train", key)
    if all("find_best_of" in r["train"] for r in rows):
        summary["find_best_of"] = {
            n: {"mean": float(np.mean([r["train"]["find_best_of"][n] for r in rows]))}
            for n in rows[0]["train"]["find_best_of"]
        }
    if all("heldout" in r for r in rows):
        summary["heldout_gain"] = spread(rows, "heldout", "exact_gain")
    return summary


def write_results(name: str, result: dict, out: Path) -> None:
    write_json(out / f"{name}.json", result)
    rows, refs = result["seeds"], result["references"]
    lines = [
        f"# Alignment: {name}",
        "",
        f"`{result['command']}`",
        "",
        f"{result['prompts']} training prompts; eval {result['eval_samples']} samples per prompt "
        "on one eval seed (base and trained on the same noise). Gains in exact match with their "
        "95 % paired bootstrap CI; KL(pi || N(0, I)) summed over the latent, mean over prompts; "
        "diversity ratio = mean pairwise image distance, trained / base.",
        "",
        *seed_table(rows),
    ]
    s = result["summary"]
    lines += [
        "",
        f"Across {len(rows)} seeds: training-prompt exact after "
        f"{s['exact_after']['mean']:.3f} ± {s['exact_after']['sd']:.3f} (sd), gain "
        f"{s['train_gain']['mean']:+.3f} ± {s['train_gain']['sd']:.3f}"
        + (
            f"; held-out gain {s['heldout_gain']['mean']:+.3f} ± {s['heldout_gain']['sd']:.3f}"
            if "heldout_gain" in s
            else ""
        )
        + ".",
        "",
        "Base references on the training prompts (exact match, same eval noise): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in refs.items())
        + ".",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results name, e.g. per-prompt")
    parser.add_argument("--config", default="configs/find-shapes.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout", action="store_true", help="also evaluate the heldout suite")
    parser.add_argument("--runs", default="runs/alignment", help="run folders go here")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="config overrides for every seed")
    args = parser.parse_args(argv)
    runs = Path(args.runs) / args.name
    cfg = load_config(args.config, args.overrides)
    prompts = train_prompts(cfg)
    heldout = None
    if args.heldout:
        heldout = cached_base(cfg, load_suite("heldout"), runs / "base-heldout.pkl")
    recorded = recorded_rows(Path(args.out) / f"{args.name}.json")
    rows = []
    for seed in args.seeds:
        run_dir = runs / f"seed{seed}"
        seed_cfg = load_config(
            args.config, [*args.overrides, f"train.seed={seed}", f"train.out_dir={run_dir}"]
        )
        row = recorded.get(seed)
        if (
            not finished_with(run_dir, seed_cfg)
            and row
            and runs_as(row.get("config", ""), seed_cfg)
        ):
            print(f"seed {seed}: reusing its row in the results file (no run folder here)")
            rows.append(row)
            continue
        minutes = train_seed(args.config, args.overrides, seed, run_dir)
        if np.isnan(minutes):
            minutes = json.loads((run_dir / "alignment-minutes.json").read_text())["minutes"]
        write_json(run_dir / "alignment-minutes.json", {"minutes": minutes})
        row = {"seed": seed, "minutes": minutes, **evaluate_seed(cfg, run_dir, heldout)}
        rows.append({**row, "config": to_yaml(seed_cfg)})
    result = {
        "command": "python benchmarks/alignment.py " + " ".join(argv or sys.argv[1:]),
        "prompts": len(prompts),
        "eval_samples": cfg.eval.samples_per_prompt,
        "seeds": rows,
        "summary": summarise_seeds(rows),
        "references": references(args.config, args.overrides, runs),
    }
    write_results(args.name, result, Path(args.out))


if __name__ == "__main__":
    main()
