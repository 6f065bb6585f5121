"""The bench's answer to "how much faster": for two trained methods, the first training budget
at which one's exact match (mean over its seeds) reaches the other's best, the ratio of their
training NFE there, and the paired CI of the difference on the shared eval noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from find_ray.bench.aggregate import by_label, seed_mean
from find_ray.bench.cells import Cell, Evaluation
from find_ray.eval.report import ci_cell, md_table
from find_ray.eval.stats import paired_bootstrap_ci


@dataclass
class Reach:
    """Whether `method` reaches `target`'s best exact match within its budgets, and where."""

    method: str
    target: str
    target_label: str  # the target's best point
    target_exact: float
    target_nfe: int
    label: str  # the method's first point at or above the target's best, else its best point
    exact: float
    train_nfe: int
    target_gain: tuple[float, float, float]  # the target's best against the base, 95 % CI
    reached: bool
    at_first: bool  # reached at the method's smallest budget: the speed-up is a lower bound
    difference: tuple[float, float, float]  # method at `label` minus the target's best, 95 % CI

    @property
    def target_moved(self) -> bool:
        """Whether the target's best is above the base (its CI): else there is nothing to reach."""
        return self.target_gain[1] > 0

    @property
    def speedup(self) -> float:
        """The target's training NFE at its best over the method's where it reaches it."""
        return self.target_nfe / self.train_nfe if self.reached and self.target_moved else math.nan


def _trained(cells: list[Cell]) -> list[tuple[str, list[Evaluation], np.ndarray]]:
    """(label, evaluations, per-sample exact match averaged over the seeds that reached it)
    per training budget, in budget order."""
    return [
        (f"{label} ({len(group)} seed{'s' * (len(group) > 1)})", group, seed_mean(group, "exact"))
        for label, group in by_label(cells).items()
        if group[0].budget > 0
    ]


def reach(cells: dict[str, list[Cell]], method: str, target: str, base: Evaluation) -> Reach | None:
    """`method` against `target`'s best point (highest mean exact match), both paired with
    `base` on the same eval noise; None when either has no trained point."""
    mine, theirs = _trained(cells.get(method, [])), _trained(cells.get(target, []))
    if not mine or not theirs:
        return None
    t_label, t_group, t_exact = max(theirs, key=lambda point: point[2].mean())
    reaching = [p for p in mine if p[2].mean() >= t_exact.mean()]
    label, group, exact = reaching[0] if reaching else max(mine, key=lambda p: p[2].mean())
    return Reach(
        method=method,
        target=target,
        target_label=t_label,
        target_exact=float(t_exact.mean()),
        target_nfe=int(np.mean([e.train_nfe for e in t_group])),
        label=label,
        exact=float(exact.mean()),
        train_nfe=int(np.mean([e.train_nfe for e in group])),
        target_gain=paired_bootstrap_ci(base.array("exact"), t_exact),
        reached=bool(reaching),
        at_first=bool(reaching) and reaching[0] is mine[0],
        difference=paired_bootstrap_ci(t_exact, exact),
    )


def reach_pairs(trained: tuple[str, ...]) -> list[tuple[str, str]]:
    """FIND against each other trained method, both ways."""
    peers = [m for m in trained if m != "find"]
    return [pair for peer in peers for pair in (("find", peer), (peer, "find"))]


def reach_table(found: list[Reach]) -> list[str]:
    """The reaches as a markdown table."""
    rows = [
        [
            *(r.method, f"{r.target} at {r.target_label}: {r.target_exact:.3f}"),
            _reached(r),
            ci_cell(*r.difference),
            f"{'≥ ' * r.at_first}{r.speedup:.1f}×" if math.isfinite(r.speedup) else "n/a",
        ]
        for r in found
    ]
    header = [
        *("method", "target's best exact", "first point reaching it", "difference [95 % CI]"),
        "target's NFE / method's",
    ]
    return [
        "Training NFE to reach a peer's best (means over the seeds each budget has; the CI pairs "
        "the eval samples; ≥: reached at the smallest budget):",
        "",
        *md_table(header, rows, "lllll"),
    ]


def _reached(r: Reach) -> str:
    if not r.target_moved:
        passed = f"; passed at {r.label}: {r.exact:.3f}" if r.reached else ""
        return f"nothing to reach ({r.target}'s best vs the base {ci_cell(*r.target_gain)}){passed}"
    return f"{r.label}: {r.exact:.3f}" if r.reached else f"no; best {r.label}: {r.exact:.3f}"
