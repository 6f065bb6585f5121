"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets.

`config` (settings, presets), `bench` (what the methods share, a table row), `methods` (one
runner per method), `cells` (a method x seed's saved evaluations and training state),
`schedule` (tuning, then every cell budget by budget), `aggregate` (cells to rows over seeds),
`report` (tables and plot); `run_bench` runs what is not done yet and writes the results.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from find_ray.bench.aggregate import table_points
from find_ray.bench.bench import Bench
from find_ray.bench.cells import Cell, CellKey
from find_ray.bench.config import BenchConfig, load_bench_config
from find_ray.bench.reach import reach, reach_pairs, reach_table
from find_ray.bench.report import (
    cells_table,
    knob_points,
    markdown,
    plot,
    tuning_table,
    write_figures,
)
from find_ray.bench.schedule import (
    TRAINED,
    Allowance,
    Tuning,
    base_first,
    check_same_bench,
    run_cells,
    seeds_of,
    tune,
    with_params,
)
from find_ray.eval.report import write_json

__all__ = ["BenchConfig", "load_bench_config", "run_bench"]


def run_bench(
    cfg: BenchConfig,
    methods: list[str] | None = None,
    progress: bool = True,
    max_cells: int | None = None,
) -> Path:
    """Runs the cells not done yet (the tuning grid first; at most `max_cells` cell steps),
    then writes bench.json, bench.md, bench.png and cells.md to bench.out_dir from every cell
    saved there; returns bench.md."""
    out = Path(cfg.bench.out_dir)
    check_same_bench(cfg, out)
    methods = [m for m in (methods or cfg.bench.methods) if m != "best_of_n"]  # from the base
    allowance = Allowance(max_cells)
    tuning = tune(cfg, methods, allowance, progress)
    if tuning.complete:
        run_main_cells(cfg, methods, tuning, allowance, progress)
    return write_results(cfg, tuning)


def run_main_cells(
    cfg: BenchConfig, methods: list[str], tuning: Tuning, allowance: Allowance, progress: bool
) -> None:
    """Seed by seed: every method's first seed on the set budgets, then the next seed, and
    with the last seed the extensions of methods still rising. A bench stopped part-way has a
    row for every method before it has a second seed for any."""
    s, root = cfg.bench, Path(cfg.bench.out_dir) / "cells"
    for n in range(1, len(s.seeds) + 1):
        last = n == len(s.seeds)
        so_far = replace(cfg, bench=replace(s, seeds=s.seeds[:n], extend_to=s.extend_to * last))
        for method in base_first(methods):
            params = tuning.chosen.get(method, ())  # in the cell's key: a new choice, new cells
            tuned = with_params(so_far, method, params)
            if run_cells(tuned, method, root, allowance, progress, params) is None:
                return


def main_cells(cfg: BenchConfig, tuning: Tuning) -> dict[str, list[Cell]]:
    """The saved cells of every configured method and seed that has an evaluation, at the
    tuning's chosen point."""
    s, root = cfg.bench, Path(cfg.bench.out_dir) / "cells"
    found: dict[str, list[Cell]] = {}
    for method in base_first(s.methods):
        params = tuning.chosen.get(method, ())
        cells = [Cell.open(root, CellKey(method, seed, params)) for seed in seeds_of(s, method)]
        if any(c.evaluations for c in cells):
            found[method] = [c for c in cells if c.evaluations]
    return found


def write_results(cfg: BenchConfig, tuning: Tuning) -> Path:
    """The table, plot, JSON and the cells' ledger from what is saved (a partial bench
    writes the rows it has)."""
    out = Path(cfg.bench.out_dir)
    bench, cells = Bench(cfg, progress=False), main_cells(cfg, tuning)
    points, reaches, figures = [], [], []
    if "base" in cells:
        (base,) = cells["base"][0].evaluations
        points = table_points(cells, base, cfg.bench.best_of, seed=cfg.bench.surrogate.seed)
        reaches = [r for a, b in reach_pairs(TRAINED) if (r := reach(cells, a, b, base))]
        figures = write_figures(out, bench.prompts, cells)
    surrogate = bench.surrogate_report()
    write_json(
        out / "bench.json",
        {
            "prompts": bench.prompts,
            "surrogate": surrogate,
            "tuning": tuning.as_dict(),
            "cells": {c.key.name: c.elapsed_s for mine in cells.values() for c in mine},
            "points": [asdict(p) for p in points],
            "reach": [asdict(r) for r in reaches],
        },
    )
    if points:
        budgets = {e.budget for mine in cells.values() for c in mine for e in c.evaluations}
        plot(points, out / "bench.png", sorted(budgets - {0}), knob_points(out))
    lines = markdown(points, bench.prompts, surrogate) + figures
    if reaches:
        lines += ["", *reach_table(reaches)]
    if tuning.rows:
        lines += ["", *tuning_table(tuning)]
    table = out / "bench.md"
    table.write_text("\n".join(lines) + "\n")
    (out / "cells.md").write_text("\n".join(cells_table(cells, tuning)) + "\n")
    return table
