"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets.

`config` (settings), `bench` (what the methods share, a result row), `methods` (one runner per
method), `report` (table and plot); `run_bench` runs the configured methods and writes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from find_ray.bench.bench import Bench, Point
from find_ray.bench.config import BenchConfig, load_bench_config
from find_ray.bench.methods import RUNNERS
from find_ray.bench.report import markdown, plot

__all__ = ["BenchConfig", "load_bench_config", "run_bench"]


def run_bench(cfg: BenchConfig, methods: list[str] | None = None, progress: bool = True) -> Path:
    """Runs the configured methods (those without saved points), then writes bench.json,
    bench.md and bench.png to bench.out_dir; returns the markdown file."""
    bench = Bench(cfg, progress)
    points_dir = bench.out / "points"
    points_dir.mkdir(parents=True, exist_ok=True)
    (bench.out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    for method in methods or cfg.bench.methods:
        saved = points_dir / f"{method}.json"
        if saved.is_file():
            print(f"{method}: reusing {saved}")
            continue
        points = RUNNERS[method](bench)
        saved.write_text(json.dumps([asdict(p) for p in points], indent=1))
    points = [
        Point(**{**p, **{k: tuple(v) for k, v in p.items() if k.endswith("_gain")}})
        for method in cfg.bench.methods
        if (points_dir / f"{method}.json").is_file()
        for p in json.loads((points_dir / f"{method}.json").read_text())
    ]
    (bench.out / "bench.json").write_text(
        json.dumps(
            {
                "prompts": bench.prompts,
                "surrogate": bench.surrogate_report(),
                "points": [asdict(p) for p in points],
            },
            indent=1,
        )
    )
    plot(points, bench.out / "bench.png")
    table = bench.out / "bench.md"
    table.write_text(markdown(points, bench.prompts, bench.surrogate_report()))
    return table
