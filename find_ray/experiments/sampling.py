"""Sampling throughput of the shipped shapes model on this machine's CPU.

Writes benchmarks/results/sampling.json and sampling.md. Run: `python benchmarks/sampling.py`
(or `make bench`) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from find_ray.backends import PipelineBackend
from find_ray.config import ModelConfig
from find_ray.eval.report import md_table, publish, write_json

RESULTS = Path("benchmarks/results")


def images_per_second(backend: PipelineBackend, batch: int, repeats: int) -> float:
    z = torch.randn((batch, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    prompts = ["two green triangles and a yellow circle"] * batch
    backend.generate(z, prompts)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        backend.generate(z, prompts)
    return batch * repeats / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    backend = PipelineBackend.from_config(cfg)
    rows = [
        {"batch_size": b, "images_per_s": round(images_per_second(backend, b, args.repeats), 2)}
        for b in args.batch_sizes
    ]
    meta = {
        "model": "shapes (shipped)",
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    write_json(RESULTS / "sampling.json", {**meta, "rows": rows})
    table = [
        f"Shipped shapes model, DDIM {cfg.steps} steps, CFG {cfg.guidance} (2 unet passes per "
        f"step), {args.threads} CPU threads, torch {torch.__version__}.",
        "",
        *md_table(
            ["batch size", "images/s"],
            [[r["batch_size"], f"{r['images_per_s']:.2f}"] for r in rows],
            "rr",
        ),
    ]
    publish(RESULTS / "sampling.md", table)


if __name__ == "__main__":
    main()
