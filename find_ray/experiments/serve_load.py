"""Load on the Serve endpoint: closed-loop clients, batching on vs off, and Serve's overhead.

For each mode (batching on: up to `--batch` requests per pipeline call; off: one) and each
number of concurrent clients (1, 8, 32, 64), every client posts /generate (one image of a
trained prompt) and posts again as soon as it is answered, for `--seconds` (at most
`--max-requests` per level). Reports requests/s, p50/p95/p99 latency and failures. Then the
overhead: the p50 of one request through Serve against the p50 of the same work called
directly on the generator (AlignedGenerator.generate, same torch threads), sequentially.
Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.

    python benchmarks/serve_load.py runs/find-shapes   # about 10 minutes on 2 cores
Writes benchmarks/results/serve/{serve_load.json, serve_load.md, serve_load.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from find_ray.eval.report import md_table, write_json

RESULTS = Path("benchmarks/results") / "serve"
CLIENTS = (1, 8, 32, 64)


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


def sequential_p50(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def overhead(url: str, run_dir: str, prompt: str, threads: int, repeats: int) -> dict:
    """p50 of one request through Serve vs the generator called in this process."""
    import httpx
    import torch

    from find_ray.serve.generator import AlignedGenerator

    with httpx.Client(base_url=url, timeout=300) as http:
        body = {"prompt": prompt, "n": 1, "seed": 0}
        http.post("generate", json=body)  # warm
        served = sequential_p50(
            lambda: http.post("generate", json=body).raise_for_status(), repeats
        )
    torch.set_num_threads(threads)
    generator = AlignedGenerator(run_dir)
    job = generator.describe().job(prompt, 1, 0)
    generator.generate([job])  # warm
    direct = sequential_p50(lambda: generator.generate([job]), repeats)
    return {"served_p50_s": served, "direct_p50_s": direct, "ratio": served / direct}


def markdown(rows: list[dict], over: dict, meta: dict) -> str:
    lines = [
        f"Serve load on `{meta['run_dir']}` ({meta['steps']} steps, CFG {meta['guidance']}), one "
        f"image per request, {meta['seconds']:.0f} s per level, {meta['cpus']} CPU cores; "
        f"batching on = up to {meta['batch']} requests per pipeline call.",
        "",
        *load_table(rows),
        "",
        f"Overhead, one request at a time ({meta['repeats']} each): through Serve "
        f"p50 {over['served_p50_s'] * 1000:.0f} ms, the generator called directly "
        f"p50 {over['direct_p50_s'] * 1000:.0f} ms: **{over['ratio']:.3f}x** (target <= 1.10x).",
        "",
    ]
    return "\n".join(lines)


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


def plot(rows: list[dict], path: Path) -> None:
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
    for ax, ylabel in ((left, "requests/s"), (right, "latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("find_ray Serve endpoint under closed-loop load")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import os

    import httpx
    from ray import serve

    from find_ray.serve.launch import deploy
    from find_ray.serve.schema import ServeArgs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--seconds", type=float, default=30.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size with batching on")
    parser.add_argument("--repeats", type=int, default=30, help="overhead: requests per side")
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    run_dir = str(Path(args.run_dir).resolve())
    rows, over = [], {}
    for mode, batch in (("on", args.batch), ("off", 1)):
        serve_args = ServeArgs(run_dir=run_dir, max_batch_size=batch, torch_threads=1)
        url, _ = deploy(serve_args, port=args.port)
        info = httpx.get(f"{url}prompts", timeout=60).json()
        body = {"prompt": info["prompts"][0], "n": 1}
        for clients in CLIENTS:
            asyncio.run(closed_loop(url, body, clients, 3.0, clients))  # warm-up
            row = asyncio.run(closed_loop(url, body, clients, args.seconds, args.max_requests))
            rows.append({"batching": mode, **row})
            print(rows[-1], flush=True)
        if mode == "off":
            over = overhead(url, run_dir, info["prompts"][0], 1, args.repeats)
            print(over, flush=True)
        serve.delete("find-ray")
    serve.shutdown()
    meta = {
        "run_dir": args.run_dir,
        "steps": info["steps"],
        "guidance": info["guidance"],
        "seconds": args.seconds,
        "batch": args.batch,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
    }
    write_json(args.out / "serve_load.json", {"meta": meta, "load": rows, "overhead": over})
    table = markdown(rows, over, meta)
    (args.out / "serve_load.md").write_text(table)
    plot(rows, args.out / "serve_load.png")
    print(table)


if __name__ == "__main__":
    main()
