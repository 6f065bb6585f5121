"""Serve beside the bare pipeline, in one run: throughput under load and one-request overhead.

- **Bare pipeline**: a Ray actor with the Generator replica's CPUs and torch threads (and so the
  same process priority) holds the run's AlignedGenerator and times its backend alone on batches
  of `--batch` latents: images/s. Measured before and after the Serve load; their mean is the
  reference.
- **Serve load**: for batching on (`max_batch_size` = `--batch`) and off (1) and for 1, 8, 32 and
  64 concurrent clients, every client posts /generate (one image of a trained prompt) and posts
  again once answered, for `--seconds` (at most `--max-requests` per level): requests/s,
  p50/p95/p99 latency, failures, and the batch sizes the replica ran.
- **Overhead**: one request at a time, alternating one through Serve (HTTP round trip) with one
  direct `AlignedGenerator.generate` call for the same job in the Generator replica itself (its
  `direct_s`, timed there): p50 of each.

Targets: requests/s at 64 clients with batching >= 80 % of the bare images/s at the same batch;
p50 through Serve <= 1.05x the direct call. Traffic goes to 127.0.0.1 only; every loop is
bounded in count and time; the bare actor and the replica never run at the same time.

    python benchmarks/serve_load.py [RUN_DIR]   # about 10 minutes on 2 cores
RUN_DIR defaults to runs/serve-bench, trained first when missing (configs/find-shapes.yaml, 2
iterations: what is served costs the same however long it trained). Writes
benchmarks/results/serve/{serve_load.json, serve_load.md, serve_load.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import numpy as np

from find_ray.eval.report import md_table, publish, write_json

RESULTS = Path("benchmarks/results") / "serve"
CLIENTS = (1, 8, 32, 64)
BENCH_RUN = "runs/serve-bench"
TARGET_THROUGHPUT, TARGET_OVERHEAD = 0.80, 1.05


class BarePipeline:
    """The run's generator in a plain actor: the pipeline's own speed, without Serve."""

    def __init__(self, run_dir: str, torch_threads: int) -> None:
        import torch

        from find_ray.serve.generator import AlignedGenerator

        torch.set_num_threads(torch_threads)
        self.generator = AlignedGenerator(run_dir)
        self.info = self.generator.describe()

    def images_per_s(self, prompt: str, batch: int, seconds: float) -> float:
        """The backend alone on `batch` latents of `prompt`, back to back for `seconds`."""
        import torch

        jobs = [self.info.job(prompt, 1, seed) for seed in range(batch)]
        z = torch.cat([self.generator.noise(job, self.generator.run) for job in jobs])
        prompts, settings = [prompt] * batch, {"steps": self.info.steps}
        settings["guidance"] = self.info.guidance
        self.generator.backend.generate(z[:1], prompts[:1], seed=0, **settings)  # warm
        images, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            self.generator.backend.generate(z, prompts, seed=list(range(batch)), **settings)
            images += batch
        return images / (time.perf_counter() - began)


async def closed_loop(url: str, body: dict, clients: int, seconds: float, cap: int) -> dict:
    """`clients` concurrent clients posting back to back until time or the request cap."""
    import httpx

    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, k: int) -> None:
        nonlocal failures, sent
        while time.perf_counter() < deadline and sent < cap:
            sent += 1
            began = time.perf_counter()
            try:
                response = await http.post("generate", json={**body, "seed": 1000 * k + sent})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - began)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(http, k) for k in range(clients)))
    elapsed = time.perf_counter() - began
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": len(latencies) / elapsed,
        "p50_s": float(q[0]),
        "p95_s": float(q[1]),
        "p99_s": float(q[2]),
    }


def load_levels(url: str, prompt: str, args: argparse.Namespace, mode: str) -> list[dict]:
    """One closed-loop measurement per number of clients (after a short warm-up each)."""
    rows = []
    body = {"prompt": prompt, "n": 1}
    for clients in CLIENTS:
        asyncio.run(closed_loop(url, body, clients, 3.0, clients))  # warm-up
        row = asyncio.run(closed_loop(url, body, clients, args.seconds, args.max_requests))
        rows.append({"batching": mode, **row})
        print(rows[-1], flush=True)
    return rows


def overhead(url: str, prompt: str, repeats: int) -> dict:
    """p50 of one request through Serve against the direct call, taken alternately. The direct
    call runs in the Generator replica itself (`direct_s`), so both sides run in one warm
    process: a call in another process right before made either side tens of ms slower."""
    import httpx
    from ray import serve

    replica = serve.get_deployment_handle("Generator", "find-ray")
    run = replica.describe.remote().result()
    served, direct = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        for seed in range(repeats + 1):  # seed 0 warms both sides
            body = {"prompt": prompt, "n": 1, "seed": seed}
            began = time.perf_counter()
            http.post("generate", json=body).raise_for_status()
            served.append(time.perf_counter() - began)
            direct.append(replica.direct_s.remote(run.job(prompt, 1, seed)).result())
    served_p50, direct_p50 = statistics.median(served[1:]), statistics.median(direct[1:])
    return {
        "served_p50_s": served_p50,
        "direct_p50_s": direct_p50,
        "ratio": served_p50 / direct_p50,
    }


def batch_sizes() -> dict[str, int]:
    """The Generator replica's batches so far, by size."""
    from ray import serve

    handle = serve.get_deployment_handle("Generator", "find-ray")
    return {str(k): v for k, v in sorted(handle.batch_sizes.remote().result().items())}


def ensure_run(run_dir: str) -> str:
    """`run_dir`, trained first (a short find-shapes run) when it is the default and missing."""
    if Path(run_dir, "policy.safetensors").is_file() or run_dir != BENCH_RUN:
        return str(Path(run_dir).resolve())
    from find_ray.config import load_config
    from find_ray.runs.in_process import train_in_process

    overrides = ["train.iterations=2", "train.samples_per_prompt=4", "eval.samples_per_prompt=2"]
    cfg = load_config("configs/find-shapes.yaml", [*overrides, f"train.out_dir={run_dir}"])
    train_in_process(cfg)
    return str(Path(run_dir).resolve())


def measure(args: argparse.Namespace) -> dict:
    """Bare pipeline, Serve load (batching on, then off), bare again, then the overhead."""
    import httpx
    import ray
    from ray import serve

    from find_ray.serve.launch import deploy
    from find_ray.serve.schema import ServeArgs

    run_dir = ensure_run(args.run_dir)
    threads, loads = args.torch_threads, [os.getloadavg()]
    settings = {"run_dir": run_dir, "torch_threads": threads, "num_cpus": args.num_cpus}
    # address "local": a Ray of its own, never one left running on the machine
    url, _ = deploy(
        ServeArgs(**settings, max_batch_size=args.batch), port=args.port, address="local"
    )
    bare_cls = ray.remote(BarePipeline).options(num_cpus=args.num_cpus)
    bare = bare_cls.remote(run_dir, threads)
    info = httpx.get(f"{url}prompts", timeout=60).json()
    prompt = info["prompts"][0]
    bare_rates = [ray.get(bare.images_per_s.remote(prompt, args.batch, args.bare_seconds))]
    rows = load_levels(url, prompt, args, "on")
    sizes = {"on": batch_sizes()}
    bare_rates.append(ray.get(bare.images_per_s.remote(prompt, args.batch, args.bare_seconds)))
    over = overhead(url, prompt, args.repeats)
    loads.append(os.getloadavg())
    ray.kill(bare)
    serve.delete("find-ray")
    url, _ = deploy(ServeArgs(**settings, max_batch_size=1), port=args.port)
    rows += load_levels(url, prompt, args, "off")
    serve.shutdown()
    loads.append(os.getloadavg())
    meta = {**{k: v for k, v in vars(args).items() if k != "out"}, "run_dir": args.run_dir}
    meta |= {"steps": info["steps"], "guidance": info["guidance"], "cpus": os.cpu_count()}
    meta["load_average_1_5_15"] = [[round(x, 2) for x in load] for load in loads]
    top = next(r for r in rows if r["batching"] == "on" and r["clients"] == max(CLIENTS))
    bare = {"images_per_s": bare_rates, "mean": float(np.mean(bare_rates))}
    bare["serve_requests_per_s"] = top["requests_per_s"]
    bare["serve_share"] = top["requests_per_s"] / bare["mean"]
    return {"meta": meta, "bare": bare, "load": rows, "batch_sizes": sizes, "overhead": over}


def markdown(data: dict) -> list[str]:
    meta, bare, over = data["meta"], data["bare"], data["overhead"]
    rates = " and ".join(f"{r:.2f}" for r in bare["images_per_s"])
    sizes = ", ".join(f"{n} x {size}" for size, n in data["batch_sizes"]["on"].items())
    load = " / ".join(f"{x[0]:.1f}" for x in meta["load_average_1_5_15"])
    return [
        f"Serve on `{meta['run_dir']}` ({meta['steps']} steps, CFG {meta['guidance']}), one image "
        f"per request, one Generator replica ({meta['num_cpus']:g} CPU, {meta['torch_threads']} "
        f"torch thread), {meta['cpus']} CPU cores; load average {load} (start / middle / end).",
        "",
        *md_table(
            ["", "figure", "target", "met"],
            [
                [
                    f"requests/s at {max(CLIENTS)} clients, batches of up to {meta['batch']}",
                    f"{bare['serve_requests_per_s']:.2f}",
                    "",
                    "",
                ],
                [f"bare pipeline, images/s at batch {meta['batch']}", rates, "", ""],
                ["Serve / bare", f"{bare['serve_share']:.0%}", f">= {TARGET_THROUGHPUT:.0%}"]
                + ["yes" if bare["serve_share"] >= TARGET_THROUGHPUT else "no"],
                [
                    f"one request, p50 ({meta['repeats']} each, alternating)",
                    f"{over['served_p50_s'] * 1e3:.0f} ms through Serve, "
                    f"{over['direct_p50_s'] * 1e3:.0f} ms direct in the replica",
                    "",
                    "",
                ],
                ["Serve / direct", f"{over['ratio']:.3f}x", f"<= {TARGET_OVERHEAD:.2f}x"]
                + ["yes" if over["ratio"] <= TARGET_OVERHEAD else "no"],
            ],
            "llrl",
        ),
        "",
        f"Batches the replica ran with batching on (count x size): {sizes}.",
        "",
        *load_table(data["load"]),
    ]


def load_table(rows: list[dict]) -> list[str]:
    """One row a batching mode and number of clients: requests, failures, rate, latencies."""
    header = ["batching", "clients", "requests", "failures", "requests/s"]
    header += ["p50 s", "p95 s", "p99 s"]
    cells = [
        [r["batching"], r["clients"], r["requests"], r["failures"]]
        + [f"{r[key]:.2f}" for key in ("requests_per_s", "p50_s", "p95_s", "p99_s")]
        for r in rows
    ]
    return md_table(header, cells)


def plot(rows: list[dict], bare: float, batch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("on", "off"):
        mine = [r for r in rows if r["batching"] == mode]
        x = [r["clients"] for r in mine]
        left.plot(x, [r["requests_per_s"] for r in mine], "o-", label=f"batching {mode}")
        right.plot(x, [r["p50_s"] for r in mine], "o-", label=f"p50, batching {mode}")
        right.plot(x, [r["p99_s"] for r in mine], "x--", label=f"p99, batching {mode}")
    left.axhline(bare, color="k", ls=":", label=f"bare pipeline, batch {batch}")
    for ax, ylabel in ((left, "requests/s"), (right, "latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("find_ray Serve endpoint under closed-loop load")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=BENCH_RUN)
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--seconds", type=float, default=30.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--bare-seconds", type=float, default=20.0, help="bare pipeline, each")
    parser.add_argument("--repeats", type=int, default=30, help="overhead: requests per side")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="per replica (and bare)")
    parser.add_argument("--torch-threads", type=int, default=1, help="per replica (and bare)")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data = measure(args)
    write_json(args.out / "serve_load.json", data)
    publish(args.out / "serve_load.md", markdown(data))
    plot(data["load"], data["bare"]["mean"], args.batch, args.out / "serve_load.png")


if __name__ == "__main__":
    main()
