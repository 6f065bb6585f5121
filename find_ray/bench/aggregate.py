"""From cells to the table's rows: a method's evaluations at one point over its training seeds,
paired with the base on the same eval noise.

A row's mean is over seeds. Every seed is scored on the same eval noise, so its CI pairs each
eval noise's mean over the seeds with the base's sample there and resamples prompts, then their
samples (a prompt counts once however many seeds ran it); `exact_gain_sd` is the spread of the
per-seed gains (what another training seed would change). Best-of-N rows are the exact order
statistic of N draws from a pool of eval samples: the base's, and FIND's at its largest budget.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from find_ray.bench.bench import Point
from find_ray.bench.cells import Cell, Evaluation
from find_ray.eval.stats import expected_best_of, finite_mean, paired_bootstrap_ci


def _stacked(evaluations: list[Evaluation], name: str) -> np.ndarray:
    return np.concatenate([e.array(name) for e in evaluations])


def seed_mean(evaluations: list[Evaluation], name: str) -> np.ndarray:
    """(prompts, samples): each eval noise's `name` averaged over the seeds' evaluations."""
    return np.mean([e.array(name) for e in evaluations], axis=0)


def seeds_point(method: str, evaluations: list[Evaluation], base: Evaluation) -> Point:
    """One row: `evaluations` (the same label, one per seed) against the base."""
    n = len(evaluations)
    exact, scores = seed_mean(evaluations, "exact"), seed_mean(evaluations, "scores")
    per_seed = [e.array("exact").mean() - base.array("exact").mean() for e in evaluations]
    ratios = [d / b for e in evaluations for d, b in zip(e.diversity, base.diversity, strict=True)]
    extra = {}
    if base.quality is not None and all(e.quality is not None for e in evaluations):
        quality = seed_mean(evaluations, "quality")
        extra["quality"] = float(quality.mean())
        extra["quality_gain"] = paired_bootstrap_ci(base.array("quality"), quality)
    first = evaluations[0]
    return Point(
        method=method,
        label=first.label,
        train_nfe=int(np.mean([e.train_nfe for e in evaluations])),
        inference_nfe=first.inference_nfe,
        wall_s=finite_mean([e.wall_s for e in evaluations]),
        exact=float(exact.mean()),
        exact_gain=paired_bootstrap_ci(base.array("exact"), exact),
        score=float(scores.mean()),
        score_gain=paired_bootstrap_ci(base.array("scores"), scores),
        diversity_ratio=finite_mean(ratios),
        kl=finite_mean([e.kl for e in evaluations]),
        shell=finite_mean([e.shell for e in evaluations]),
        train_reward=finite_mean([e.train_reward for e in evaluations]),
        seeds=n,
        exact_gain_sd=float(np.std(per_seed, ddof=1)) if n > 1 else math.nan,
        **extra,
    )


def best_of_points(
    method: str,
    evaluations: list[Evaluation],
    base: Evaluation,
    best_of: list[int],
    seed: int = 0,
) -> list[Point]:
    """Expected best-of-N exact match and score from the evaluations' eval samples (each
    (seed, prompt) row a pool), for each N, against the base's one sample. Picking by the
    reward picks an exact sample whenever there is one (the shapes reward is 1 exactly then).
    Not paired per sample: the CI resamples each pool."""
    rng = np.random.default_rng(seed)
    exact, scores = _stacked(evaluations, "exact"), _stacked(evaluations, "scores")
    base_exact, base_score = base.array("exact").mean(), base.array("scores").mean()
    k, first, points = exact.shape[1], evaluations[0], []
    for n in (n for n in best_of if n <= k):

        def best(x: np.ndarray, n: int = n) -> float:
            return float(np.mean([expected_best_of(row, n) for row in x]))

        draws = (np.take_along_axis(exact, rng.integers(0, k, exact.shape), 1) for _ in range(200))
        low, high = np.quantile([best(d) for d in draws], [0.025, 0.975]) - base_exact
        e, s = best(exact), best(scores)
        points.append(
            Point(
                method=method,
                label=f"N={n}",
                train_nfe=int(np.mean([v.train_nfe for v in evaluations])),
                inference_nfe=n * first.inference_nfe,
                wall_s=finite_mean([v.wall_s for v in evaluations]),
                exact=e,
                exact_gain=(e - base_exact, float(low), float(high)),
                score=s,
                score_gain=(s - base_score, math.nan, math.nan),
                diversity_ratio=math.nan,
                seeds=len(evaluations),
            )
        )
    return points


def by_label(cells: list[Cell]) -> dict[str, list[Evaluation]]:
    """The cells' evaluations grouped by label (one per seed that reached it), in the order
    of budget, then inference cost."""
    groups: dict[str, list[Evaluation]] = defaultdict(list)
    for cell in cells:
        for e in cell.evaluations:
            groups[e.label].append(e)
    return dict(sorted(groups.items(), key=lambda g: (g[1][0].budget, g[1][0].inference_nfe)))


def table_points(
    cells: dict[str, list[Cell]], base: Evaluation, best_of: list[int], seed: int = 0
) -> list[Point]:
    """Every row: the base, its best-of-N, each method's points over seeds, and FIND's policy
    at its largest budget as the proposal of best-of-N."""
    points = [
        seeds_point("base", [base], base),
        *best_of_points("best_of_n", [base], base, best_of),
    ]
    for method, mine in cells.items():
        if method == "base":
            continue
        groups = by_label(mine)
        points += [seeds_point(method, group, base) for group in groups.values()]
        if method == "find" and groups:
            last = list(groups.values())[-1]
            points += best_of_points("find_best_of_n", last, base, best_of, seed)
    return points
