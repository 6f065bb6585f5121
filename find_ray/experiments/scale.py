"""Scale of the Ray actor-learner system: rollouts/s against the number of rollout actors.

A simulated backend (a fixed sleep per rollout call, sigmoid(z) as the image) and the trivial
`brightness` reward isolate the system from the model, so 2 cores can host 32 actors. For
N = 1, 2, 4, ..., 32 rollout actors it measures steady-state rollouts/s (after a warm-up),
its ratio to N x the single-actor figure, learner utilisation, mean policy lag and the bytes
of one weight broadcast. Writes benchmarks/results/scale/{scale.json, scale.md, scale.png}.
Run: `python benchmarks/scale.py` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from find_ray.config import load_config
from find_ray.eval.report import md_table, publish, write_json
from find_ray.system.driver import RayTrainer

RESULTS = Path("benchmarks/results") / "scale"
WARMUP_UPDATES = 3


def measure(actors: int, latency: float, per_task: int, iterations: int, out: Path) -> dict:
    """One run with `actors` rollout actors; figures from the updates after the warm-up."""
    samples = 2 * actors * per_task // 4  # per update: one full round of in-flight calls
    cfg = load_config(
        None,
        [
            "model.backend=simulated",
            f"model.latency_s={latency}",
            "reward.name=brightness",
            "train.prompts=[a,b,c,d]",
            f"train.samples_per_prompt={samples}",
            f"train.iterations={iterations}",
            f"train.rollout_batch_size={per_task}",
            f"train.out_dir={out / f'n{actors}'}",
            "eval.samples_per_prompt=2",
            f"ray.num_rollout_actors={actors}",
            "ray.rollout_num_cpus=0.01",
            "ray.reward_num_cpus=0.01",
            "ray.learner_num_cpus=0.01",
            f"ray.rollouts_per_task={per_task}",
            "ray.checkpoint_every=0",
            "learner.drcm_steps=5",
            "learner.epochs=1",
            "learner.minibatch_size=1024",
            "learner.store_capacity=8192",
            "learner.loss.drcm_hidden=32",
        ],
    )
    began = time.monotonic()
    history = RayTrainer(cfg).run().history
    warm, last = history[WARMUP_UPDATES - 1], history[-1]
    seconds = last["elapsed_s"] - warm["elapsed_s"]
    calls = (last["rollouts_finished"] - warm["rollouts_finished"]) / per_task
    return {
        "actors": actors,
        "rollouts_per_s": (last["rollouts_finished"] - warm["rollouts_finished"]) / seconds,
        "learner_utilisation": last["learner_utilisation"],
        "policy_lag_mean": float(np.mean([h["policy_lag_mean"] for h in history[WARMUP_UPDATES:]])),
        "weights_bytes": int(last["weights_bytes"]),
        "driver_cpu_ms_per_call": 1000 * (last["driver_cpu_s"] - warm["driver_cpu_s"]) / calls,
        "driver_cpu_share": (last["driver_cpu_s"] - warm["driver_cpu_s"]) / seconds,
        "measured_s": round(seconds, 1),
        "run_s": round(time.monotonic() - began, 1),
    }


def write_results(rows: list[dict], settings: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = rows[0]["rollouts_per_s"] / rows[0]["actors"]
    for row in rows:
        row["ideal"] = row["actors"] * single
        row["efficiency"] = row["rollouts_per_s"] / row["ideal"]
    write_json(out / "scale.json", {"settings": settings, "rows": rows})
    n = [r["actors"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(n, [r["ideal"] for r in rows], "k--", label="ideal (N x one actor)")
    ax.plot(n, [r["rollouts_per_s"] for r in rows], "o-", label="measured")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="rollout actors N",
        ylabel="rollouts / s",
        title=f"find_ray scale (simulated {settings['latency_s']} s per call)",
    )
    ax.set_xticks(n, [str(x) for x in n])
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)
    lines = [
        f"Simulated backend: {settings['latency_s']} s per call of {settings['per_task']} "
        f"rollouts, `brightness` reward, {settings['iterations']} updates "
        f"(first {WARMUP_UPDATES} are warm-up), 1 reward actor, 1 learner.",
        "",
        *scale_table(rows),
    ]
    publish(out / "scale.md", lines)


def scale_table(rows: list[dict]) -> list[str]:
    """One row a number of rollout actors: throughput against ideal, learner and driver load."""
    header = ["rollout actors", "rollouts/s", "ideal", "% of ideal", "learner utilisation"]
    header += ["mean policy lag", "driver CPU ms per call", "driver CPU share"]
    header += ["bytes per broadcast"]
    cells = [
        [r["actors"], f"{r['rollouts_per_s']:.1f}", f"{r['ideal']:.1f}"]
        + [f"{100 * r['efficiency']:.1f}", f"{r['learner_utilisation']:.3f}"]
        + [f"{r['policy_lag_mean']:.2f}", f"{r['driver_cpu_ms_per_call']:.2f}"]
        + [f"{r['driver_cpu_share']:.2f}", f"{r['weights_bytes']:,}"]
        for r in rows
    ]
    return md_table(header, cells, "r" * len(header))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per rollout call")
    parser.add_argument("--per-task", type=int, default=8, help="rollouts per call")
    parser.add_argument("--iterations", type=int, default=15, help="learner updates per run")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if 1 not in args.actors:
        parser.error("--actors must include 1 (the single-actor reference)")
    started = not ray.is_initialized()  # tests pass their shared Ray
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    settings = {"latency_s": args.latency, "per_task": args.per_task, "iterations": args.iterations}
    with tempfile.TemporaryDirectory() as runs:
        rows = [
            measure(n, args.latency, args.per_task, args.iterations, Path(runs))
            for n in sorted(args.actors)
        ]
    if started:
        ray.shutdown()
    write_results(rows, settings, Path(args.out))


if __name__ == "__main__":
    main()
