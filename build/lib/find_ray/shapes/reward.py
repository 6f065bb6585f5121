"""The shapes consistency reward: how well a detected multiset matches the requested one."""

from __future__ import annotations

from collections import Counter

from find_ray.shapes.world import Obj


def match_score(target: Counter[Obj], detected: Counter[Obj]) -> tuple[float, bool]:
    """(graded score in [0, 1], exact match).

    Objects matching in colour and shape count 1, the remaining ones matching only in colour
    count 0.5; the sum is divided by max(#requested, #detected), so missing and extra objects
    both cost.
    """
    full = target & detected
    left_target, left_detected = target - full, detected - full
    colours = Counter[str]()
    for (colour, _), n in left_target.items():
        colours[colour] += n
    detected_colours = Counter[str]()
    for (colour, _), n in left_detected.items():
        detected_colours[colour] += n
    partial = sum((colours & detected_colours).values())
    denominator = max(sum(target.values()), sum(detected.values()), 1)
    score = (sum(full.values()) + 0.5 * partial) / denominator
    return score, target == detected
