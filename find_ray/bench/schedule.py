"""Which cells the bench runs, in which order, and how far: the tuning grid first (on the
tuning prompts, one seed, one budget; the best point per method is what the main cells run
with), then every method's cells seed by seed, budget by budget, extending a trained method
that is still rising once all its seeds reached the set budgets. `--max-cells N` stops after
N cell steps (one budget of one cell each), so the whole bench can run in the background a
step at a time and be committed as it goes.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from find_ray.bench.bench import Bench, eval_prompts
from find_ray.bench.cells import Cell, CellKey
from find_ray.bench.config import BenchConfig, BenchSettings, TuningSettings
from find_ray.bench.methods import RUNNERS
from find_ray.errors import ConfigError
from find_ray.prompts import load_suite

TRAINED = ("find", "ddpo", "drtune", "flow_grpo")  # budget by budget; others: a cell at once
SEEDLESS = ("base", "reno")  # nothing random but the shared eval noise: one seed says it all
Params = tuple[tuple[str, Any], ...]


def seeds_of(settings: BenchSettings, method: str) -> list[int]:
    """The training seeds a method's cells run with."""
    return settings.seeds[:1] if method in SEEDLESS else settings.seeds


def base_first(methods: list[str]) -> list[str]:
    """The methods that have cells (best-of-N reads the base's), the base first."""
    return ["base", *(m for m in methods if m not in ("base", "best_of_n"))]


@dataclass
class Allowance:
    """How many more cell steps this invocation may run (None: no limit)."""

    left: int | None = None

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def with_params(cfg: BenchConfig, method: str, params: Params) -> BenchConfig:
    """`cfg` with a method's knobs set: `bench.<method>.<key>`, or for find a FindRayConfig
    override appended to `bench.find`; validated like the config file."""
    if not params:
        return cfg
    node = OmegaConf.structured(cfg)
    if method == "find":
        node.bench.find = [*cfg.bench.find, *(f"{k}={v}" for k, v in params)]
    else:
        dotlist = [f"bench.{method}.{k}={v}" for k, v in params]
        node = OmegaConf.merge(node, OmegaConf.from_dotlist(dotlist))
    try:
        return OmegaConf.to_object(node)
    except Exception as e:  # noqa: BLE001 - omegaconf's errors name the key
        raise ConfigError(f"config key 'bench.tuning.grid.{method}': {e}") from None


def grid_points(grid: dict[str, list[Any]]) -> list[Params]:
    """Every combination of the grid's values, in the grid's order."""
    keys = list(grid)
    return [tuple(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def tuning_config(cfg: BenchConfig) -> BenchConfig:
    """The bench on the tuning prompts: its own eval samples, one seed, one budget, its own
    output folder (and surrogate). The tuning prompts never include an eval prompt."""
    s, t = cfg.bench, cfg.bench.tuning
    evaluated = set(eval_prompts(s))
    prompts = [p for p in (t.prompts or load_suite(t.suite)) if p not in evaluated]
    if not prompts:
        raise ConfigError("config key 'bench.tuning.suite': no prompts apart from the eval's")
    settings = replace(
        s,
        prompts=prompts[: t.max_prompts or None],
        eval_samples=t.eval_samples,
        seeds=[t.seed],
        budgets=[t.budget],
        extend_to=0,
        out_dir=str(Path(s.out_dir) / "tuning"),
        tuning=TuningSettings(),  # nothing to tune inside the tuning
    )
    return replace(cfg, bench=settings)


def pending_budgets(method: str, cell: Cell, budgets: list[int]) -> list[int]:
    if method not in TRAINED:
        return [] if cell.evaluations else [0]
    return [b for b in sorted(budgets) if b not in cell.budgets_done]


def extended_budgets(
    cells: list[Cell], budgets: list[int], extend_to: int, plateau: float
) -> list[int]:
    """`budgets` and, while every seed's cell reached the largest and its mean exact match
    rose by >= `plateau` over the one before, 4x the largest (up to `extend_to`)."""
    budgets = sorted(budgets)
    while len(budgets) >= 2 and budgets[-1] * 4 <= extend_to:
        means = []
        for b in budgets[-2:]:
            found = [e for c in cells for e in c.evaluations if e.budget == b]
            if len(found) < len(cells):
                return budgets
            means.append(np.mean([e.array("exact").mean() for e in found]))
        if means[1] - means[0] < plateau:
            return budgets
        budgets.append(budgets[-1] * 4)
    return budgets


def run_cells(
    cfg: BenchConfig,
    method: str,
    root: Path,
    allowance: Allowance,
    progress: bool,
    params: Params = (),
) -> list[Cell] | None:
    """Every seed's cell of `method` (at the grid point `params`, while tuning) to its last
    budget; None when the allowance ran out."""
    s, bench = cfg.bench, Bench(cfg, progress)
    cells = [Cell.open(root, CellKey(method, seed, params)) for seed in seeds_of(s, method)]
    budgets = list(s.budgets)
    while True:
        for cell in cells:
            for budget in pending_budgets(method, cell, budgets):
                if not allowance.take():
                    return None
                start = time.perf_counter()
                RUNNERS[method](bench, cell, budget)
                cell.add_elapsed(time.perf_counter() - start)
        more = extended_budgets(cells, budgets, s.extend_to, s.plateau)
        if method not in TRAINED or more == budgets:
            return cells
        budgets = more


@dataclass
class Tuning:
    """The grid's outcome: each point's exact match and score at its last evaluation, the
    chosen params per method, and whether every grid point has run."""

    rows: dict[str, list[tuple[Params, float, float]]] = field(default_factory=dict)
    earlier: dict[tuple[str, Params], list[tuple[str, float]]] = field(default_factory=dict)
    chosen: dict[str, Params] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            method: {
                "grid": [
                    {"params": dict(p), "exact": e, "score": s, "earlier": self.earlier[method, p]}
                    for p, e, s in rows
                ],
                "chosen": dict(self.chosen.get(method, ())),
            }
            for method, rows in self.rows.items()
        }


def tune(cfg: BenchConfig, methods: list[str], allowance: Allowance, progress: bool) -> Tuning:
    """The base and each grid point of each method on the tuning prompts, one seed, the tuning
    budget. The best point has the highest exact match (then score) at that budget (inference-time
    methods: at their last snapshot); a trained cell's smaller budgets are kept as `earlier`."""
    tuning = Tuning()
    grid = {m: g for m, g in cfg.bench.tuning.grid.items() if m in methods and g}
    if not grid or not cfg.bench.tuning.enabled:
        return tuning
    tcfg = tuning_config(cfg)
    root = Path(tcfg.bench.out_dir) / "cells"
    for method, knobs in {"base": {}, **grid}.items():  # the base: what the grid moves from
        rows = tuning.rows[method] = []
        for params in grid_points(knobs):
            tuned = with_params(tcfg, method, params)
            cells = run_cells(tuned, method, root, allowance, progress, params)
            if cells is None:
                tuning.complete = False
                return tuning
            (cell,) = cells
            tuning.cells.append(cell)
            budget = tcfg.bench.budgets[0] if method in TRAINED else 0
            done = sorted(cell.evaluations, key=lambda e: e.budget)
            last = next(e for e in done if e.budget == budget) if budget else done[-1]
            rows.append((params, last.array("exact").mean(), last.array("scores").mean()))
            tuning.earlier[method, params] = [
                (e.label, e.array("exact").mean()) for e in done if 0 < e.budget < budget
            ]
        tuning.chosen[method] = max(rows, key=lambda row: (row[1], row[2]))[0]
    return tuning


# What an evaluation's figures depend on: saved cells are only comparable under the same.
SAME_BENCH = (
    *("model", "reward", "quality", "bench.prompts", "bench.suite", "bench.max_prompts"),
    *("bench.eval_samples", "bench.eval_seed", "bench.surrogate"),
    *(f"bench.{method}" for method in TRAINED + ("dno", "reno")),  # what a cell ran with
    *(f"bench.tuning.{k}" for k in ("suite", "prompts", "max_prompts", "budget", "eval_samples")),
    "bench.tuning.seed",
)


def check_same_bench(cfg: BenchConfig, out: Path) -> None:
    """Writes out/config.yaml; ConfigError when a bench saved there ran under another setting
    of what the evaluations depend on (its cells would not be comparable)."""
    out.mkdir(parents=True, exist_ok=True)
    node, saved = OmegaConf.structured(cfg), out / "config.yaml"
    if saved.is_file():
        before = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.load(saved))
        changed = [
            k for k in SAME_BENCH if OmegaConf.select(before, k) != OmegaConf.select(node, k)
        ]
        if changed:
            raise ConfigError(
                f"config key '{changed[0]}': the bench in {out} ran with another value "
                "(its cells would not compare); set bench.out_dir to a new folder"
            )
    saved.write_text(OmegaConf.to_yaml(node))
