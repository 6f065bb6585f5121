"""The sampler's own knobs on the bench's eval noise: are they a cheaper way to FIND's gain?

The base model at other guidance scales and step counts, each evaluated on the bench's prompts
and eval noise and paired with the bench's saved base (a knob that changes nothing gains exactly
0), beside FIND's rows from the same bench.

    python benchmarks/sampler_knobs.py --config configs/bench-shapes.yaml --knob model.steps=20 \
        --knob model.guidance=1.5 --knob model.guidance=2.0 --knob model.guidance=3.0

A knob of several space-separated overrides (--knob "model.steps=12 model.guidance=2.0") sets
them together. Each knob's evaluation is saved as a cell under <bench.out_dir>/knobs/ (a rerun
reuses it); writes knobs.{json,md} there and redraws the bench's plot with them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

from find_ray.bench import BenchConfig, load_bench_config, run_bench
from find_ray.bench.aggregate import seeds_point
from find_ray.bench.bench import Bench, Point
from find_ray.bench.cells import Cell, CellKey, Evaluation, slug
from find_ray.bench.schedule import check_same_bench, seeds_of
from find_ray.errors import ConfigError
from find_ray.eval.report import ci_cell, md_table, publish, write_json


def knob_evaluation(config: str | None, overrides: list[str], knob: str, root: Path) -> Evaluation:
    """The base's evaluation with `knob` (one or more space-separated `key=value` overrides) set;
    saved under `root`."""
    cell = Cell.open(root, CellKey("base", 0, (("knob", slug(knob)),)))
    if not cell.evaluations:
        bench = Bench(load_bench_config(config, [*overrides, *knob.split()]))
        began = time.perf_counter()
        results = bench.base
        cell.add_elapsed(time.perf_counter() - began)
        costs = {"budget": 0, "train_nfe": 0, "inference_nfe": bench.calls, "wall_s": 0.0}
        cell.add(Evaluation.of(knob, results, **costs, kl=0.0), results=results)
    return cell.evaluations[0]


def saved_base(cfg: BenchConfig, out: Path) -> Evaluation:
    """The bench's own base evaluation in `out` (run `find-ray bench` first), refused if the
    bench there ran under other eval settings than `cfg`'s."""
    check_same_bench(cfg, out)
    cell = Cell.open(out / "cells", CellKey("base", seeds_of(cfg.bench, "base")[0]))
    if not cell.evaluations:
        raise ConfigError(f"no base evaluation in {cell.folder}: run `find-ray bench` first")
    return cell.evaluations[0]


def knob_rows(points: list[Point]) -> list[str]:
    header = ["setting", "NFE / image", "exact", "exact gain vs base [95 % CI]", "quality change"]
    rows = [
        [p.label, f"{p.inference_nfe:.0f}", f"{p.exact:.3f}", ci_cell(*p.exact_gain)]
        + [ci_cell(*p.quality_gain, spec="+.4f")]
        for p in points
    ]
    return md_table(header, rows, "lrrll")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="the bench's YAML config (default: built-in defaults)")
    parser.add_argument(
        "--knob",
        action="append",
        required=True,
        help="key=value to try (space-separated: together)",
    )
    parser.add_argument("overrides", nargs="*", help="the bench's config overrides")
    args = parser.parse_args(argv)
    cfg = load_bench_config(args.config, args.overrides)
    out = Path(cfg.bench.out_dir)
    base = saved_base(cfg, out)
    root = out / "knobs" / "cells"
    knobs = [knob_evaluation(args.config, args.overrides, k, root) for k in args.knob]
    m = cfg.model
    points = [seeds_point("base", [e], base) for e in [base, *knobs]]
    points[0] = replace(points[0], label=f"as benched: {m.steps} steps, guidance {m.guidance}")
    knob_args = " ".join(f"--knob {k}" for k in args.knob)
    given = " ".join([f"--config {args.config}" if args.config else "", knob_args, *args.overrides])
    command = f"python benchmarks/sampler_knobs.py {given.strip()}"
    noise = f"{len(base.exact)} prompts x {len(base.exact[0])} eval samples"
    lines = [
        f"`{command}`",
        "",
        f"The base model ({m.path}) with one sampler setting changed, on the bench's {noise},",
        "paired with the first row on the same eval noise.",
        "",
        *knob_rows(points),
    ]
    data = {"command": command, "points": [asdict(p) for p in points]}
    write_json(out / "knobs" / "knobs.json", data)
    publish(out / "knobs" / "knobs.md", lines)
    run_bench(cfg, progress=False, max_cells=0)  # bench.png's inference panel shows the knobs


if __name__ == "__main__":
    main()
