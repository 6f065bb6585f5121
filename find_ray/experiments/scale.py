"""Scale of the Ray actor-learner system: rollouts/s against the number of rollout actors.

A simulated backend (a fixed sleep per rollout call, sigmoid(z) as the image) and the trivial
`brightness` reward isolate the system from the model, so 2 cores can host 32 actors. Each
repeat runs N = 1 first (the reference) and then every other N; a run's figures come from the
updates after the warm-up: rollouts/s, its share of ideal (N x the same repeat's single-actor
rate), the learner's busy share in wall time and in CPU time, mean policy lag, the driver's CPU
per rollout call, the bytes of one weight broadcast, and where the CPU went meanwhile (cores
used by the driver, the rollout actors, the reward actor, the learner, the rest of this Ray,
and every other process on the machine). The table gives the median over repeats.

    python benchmarks/scale.py --latency 0.1 --actors 1 32   # 3 repeats, about 9 minutes
    python benchmarks/scale.py --iterations 15 --repeats 1   # 0.5 s calls, N = 1 ... 32
Writes benchmarks/results/scale/{scale.json, scale.md, scale.png} (or --out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from find_ray.config import load_config
from find_ray.eval.report import md_table, publish, write_json
from find_ray.system.driver import RayTrainer

RESULTS = Path("benchmarks/results") / "scale"
WARMUP_UPDATES = 3
KINDS = {"RolloutActor": "rollout", "RewardActor": "reward", "LearnerActor": "learner"}
CPU_COLUMNS = ("driver", "rollout", "reward", "learner", "ray", "other")


def cpu_seconds() -> Counter[str]:
    """CPU seconds so far: this process ("driver"), its Ray processes by kind ("rollout",
    "reward", "learner", "ray": workers without an actor, raylet, GCS...), and the machine."""
    import psutil

    me = psutil.Process()
    seconds: Counter[str] = Counter()
    for proc in [me, *me.children(recursive=True)]:
        try:
            title, times = " ".join(proc.cmdline()), proc.cpu_times()
        except psutil.Error:  # a process that ended meanwhile
            continue
        kind = next((k for name, k in KINDS.items() if f"ray::{name}" in title), "ray")
        seconds["driver" if proc.pid == me.pid else kind] += times.user + times.system
    machine = psutil.cpu_times()
    seconds["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return seconds


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
    began, cpu = time.monotonic(), {}

    def probe(trainer: RayTrainer) -> None:  # CPU at the end of the warm-up and of training
        if trainer.version in (WARMUP_UPDATES, iterations):
            cpu[trainer.version] = cpu_seconds()

    trainer = RayTrainer(cfg)
    trainer.after_update = probe
    history = trainer.run().history
    warm, last = history[WARMUP_UPDATES - 1], history[-1]
    seconds = last["elapsed_s"] - warm["elapsed_s"]
    finished = last["rollouts_finished"] - warm["rollouts_finished"]
    spent = {k: (cpu[iterations][k] - cpu[WARMUP_UPDATES][k]) / seconds for k in cpu[iterations]}
    spent["other"] = spent.pop("machine") - sum(spent.values())
    return {
        "actors": actors,
        "rollouts_per_s": finished / seconds,
        "learner_utilisation": last["learner_utilisation"],
        "learner_busy_share": (last["learner_busy_s"] - warm["learner_busy_s"]) / seconds,
        "learner_cpu_share": (last["learner_cpu_s"] - warm["learner_cpu_s"]) / seconds,
        "policy_lag_mean": float(np.mean([h["policy_lag_mean"] for h in history[WARMUP_UPDATES:]])),
        "weights_bytes": int(last["weights_bytes"]),
        "driver_cpu_ms_per_call": 1000 * spent["driver"] * seconds / (finished / per_task),
        "cpu_cores": {k: round(spent.get(k, 0.0), 3) for k in CPU_COLUMNS},
        "dropped": int(last["rollouts/dropped"]),
        "measured_s": round(seconds, 1),
        "run_s": round(time.monotonic() - began, 1),
        "load_average_1m": os.getloadavg()[0],
    }


def summarise(runs: list[dict]) -> list[dict]:
    """One row per number of actors: its median over repeats, each run's share of ideal
    against the single-actor rate of its own repeat."""
    single = {r["repeat"]: r["rollouts_per_s"] for r in runs if r["actors"] == 1}
    for r in runs:
        r["ideal"] = r["actors"] * single[r["repeat"]]
        r["efficiency"] = r["rollouts_per_s"] / r["ideal"]
    rows = []
    for n in sorted({r["actors"] for r in runs}):
        mine = [r for r in runs if r["actors"] == n]
        median = {k: statistics.median(r[k] for r in mine) for k in MEDIAN_KEYS}
        cores = {k: statistics.median(r["cpu_cores"][k] for r in mine) for k in CPU_COLUMNS}
        runs_eff = [round(100 * r["efficiency"], 1) for r in mine]
        rows.append({"actors": n, **median, "cpu_cores": cores, "efficiency_runs": runs_eff})
    return rows


MEDIAN_KEYS = (
    "rollouts_per_s",
    "ideal",
    "efficiency",
    "learner_busy_share",
    "learner_cpu_share",
    "policy_lag_mean",
    "driver_cpu_ms_per_call",
    "weights_bytes",
    "load_average_1m",
)


def scale_table(rows: list[dict]) -> list[str]:
    """One row a number of rollout actors: throughput against ideal, learner, driver, CPU."""
    header = ["rollout actors", "rollouts/s", "ideal", "% of ideal (median)", "runs"]
    header += ["learner busy (wall)", "learner busy (CPU)", "mean policy lag"]
    header += ["driver CPU ms per call", "bytes per broadcast"]
    header += [f"cores: {k}" for k in CPU_COLUMNS]
    cells = [
        [r["actors"], f"{r['rollouts_per_s']:.1f}", f"{r['ideal']:.1f}"]
        + [f"{100 * r['efficiency']:.1f}", " / ".join(f"{e:.1f}" for e in r["efficiency_runs"])]
        + [f"{r['learner_busy_share']:.2f}", f"{r['learner_cpu_share']:.2f}"]
        + [f"{r['policy_lag_mean']:.2f}", f"{r['driver_cpu_ms_per_call']:.2f}"]
        + [f"{r['weights_bytes']:,.0f}"]
        + [f"{r['cpu_cores'][k]:.2f}" for k in CPU_COLUMNS]
        for r in rows
    ]
    return md_table(header, cells, "r" * len(header))


def write_results(runs: list[dict], settings: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarise(runs)
    write_json(out / "scale.json", {"settings": settings, "rows": rows, "runs": runs})
    n = [r["actors"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(n, [r["ideal"] for r in rows], "k--", label="ideal (N x one actor)")
    ax.plot(n, [r["rollouts_per_s"] for r in rows], "o-", label="measured (median)")
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
        f"(first {WARMUP_UPDATES} are warm-up), 1 reward actor, 1 learner; "
        f"{settings['repeats']} repeats, each with its own single-actor reference; "
        f"{settings['cpus']} CPU cores, load average {settings['load_average']} at the start.",
        "",
        *scale_table(rows),
    ]
    publish(out / "scale.md", lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per rollout call")
    parser.add_argument("--per-task", type=int, default=8, help="rollouts per call")
    parser.add_argument("--iterations", type=int, default=40, help="learner updates per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every N (median)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if 1 not in args.actors:
        parser.error("--actors must include 1 (the single-actor reference)")
    settings = {k: getattr(args, k) for k in ("latency", "per_task", "iterations", "repeats")}
    settings["latency_s"] = settings.pop("latency")
    settings["cpus"] = os.cpu_count()
    settings["load_average"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    started = not ray.is_initialized()  # tests pass their shared Ray
    if started:  # a Ray of its own ("local"), never one left running on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in sorted(args.actors):
                run = measure(n, settings["latency_s"], args.per_task, args.iterations, Path(tmp))
                runs.append({"repeat": repeat, **run})
                print({k: run[k] for k in ("actors", "rollouts_per_s", "cpu_cores")}, flush=True)
    if started:
        ray.shutdown()
    write_results(runs, settings, Path(args.out))


if __name__ == "__main__":
    main()
