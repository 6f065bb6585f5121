"""The caption grammar of the shapes world: multiset <-> text, with a strict parser.

caption := group | group "and" group | group ("," group)* "and" group
group   := ("a" | "one") colour shape | ("two" | "three" | "four") colour shapes
"""

from __future__ import annotations

import random
from collections import Counter

from find_ray.errors import PromptError
from find_ray.shapes.world import COLOURS, MAX_OBJECTS, SHAPES, Obj

NUMBER_WORDS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4}
COUNT_TO_WORD = {1: "a", 2: "two", 3: "three", 4: "four"}
PLURALS = {shape: shape + "s" for shape in SHAPES}
VOCABULARY = sorted(
    set(NUMBER_WORDS) | set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | {"and"}
)


def caption_for(objects: Counter[Obj], rng: random.Random | None = None) -> str:
    """The caption of a multiset; groups in sorted order, or shuffled when `rng` is given."""
    groups = [
        f"{COUNT_TO_WORD[n]} {colour} {shape if n == 1 else PLURALS[shape]}"
        for (colour, shape), n in sorted(objects.items())
    ]
    if rng is not None:
        rng.shuffle(groups)
    if len(groups) == 1:
        return groups[0]
    return ", ".join(groups[:-1]) + " and " + groups[-1]


def _error(text: str, why: str) -> PromptError:
    return PromptError(
        f"prompt {text!r} is outside the shapes grammar ({why}); valid words: "
        f"{' '.join(VOCABULARY)}; e.g. 'two green triangles and a yellow circle'"
    )


def parse_caption(text: str) -> Counter[Obj]:
    """The multiset {(colour, shape): count} a caption asks for; raises PromptError."""
    words = text.lower().strip().rstrip(".").replace(",", " , ").split()
    unknown = sorted({w for w in words if w not in VOCABULARY and w != ","})
    if unknown:
        raise _error(text, f"unknown words: {', '.join(unknown)}")
    groups: list[list[str]] = [[]]
    for w in words:
        if w in (",", "and"):
            groups.append([])
        else:
            groups[-1].append(w)
    objects: Counter[Obj] = Counter()
    for group in groups:
        if len(group) != 3 or group[0] not in NUMBER_WORDS or group[1] not in COLOURS:
            raise _error(text, "each group is <number> <colour> <shape>")
        count, colour, noun = NUMBER_WORDS[group[0]], group[1], group[2]
        singular = noun in SHAPES
        shape = noun if singular else noun[:-1]
        if shape not in SHAPES or singular != (count == 1):
            raise _error(text, f"'{group[0]} {noun}': the noun must agree with the number")
        objects[(colour, shape)] += count
    if sum(objects.values()) > MAX_OBJECTS:
        raise _error(text, f"at most {MAX_OBJECTS} objects")
    return objects
