import random
from collections import Counter

import numpy as np
import pytest

from find_ray.errors import PromptError
from find_ray.prompts import load_suite
from find_ray.shapes import caption_for, detect, match_score, parse_caption, render, sample_scene
from find_ray.shapes.captions import VOCABULARY


def test_detector_recovers_ground_truth_scenes():
    rng = random.Random(123)
    scenes = [sample_scene(rng) for _ in range(1000)]
    exact = np.mean([detect(render(s)) == s.multiset for s in scenes])
    assert exact >= 0.99


def test_scenes_are_seeded():
    a = [render(sample_scene(random.Random(7))) for _ in range(3)]
    assert all(np.array_equal(a[0], x) for x in a)


@pytest.mark.parametrize(
    "drawn, asked",
    [
        ("two red circles", "three red circles"),  # wrong count
        ("two red circles", "two blue circles"),  # wrong colour
        ("two red circles", "two red squares"),  # wrong shape
        ("a red circle and a blue square", "a blue circle and a red square"),  # wrong binding
        ("a green triangle", "a green circle"),
        ("four yellow squares", "three yellow squares"),
    ],
)
def test_detector_rejects_mismatched_scenes(drawn, asked):
    rng = random.Random(0)
    for _ in range(20):
        image = render(sample_scene(rng, list(parse_caption(drawn).elements())))
        detected = detect(image)
        assert match_score(parse_caption(drawn), detected) == (1.0, True)
        score, exact = match_score(parse_caption(asked), detected)
        assert not exact and score < 1.0


def test_blank_and_noise_images_have_no_objects():
    assert detect(np.full((32, 32, 3), 255, np.uint8)) == Counter()
    speckles = np.full((32, 32, 3), 255, np.uint8)
    speckles[::6, ::6] = (220, 30, 30)  # isolated pixels are not objects
    assert detect(speckles) == Counter()


def test_match_score_by_hand():
    target = Counter({("red", "circle"): 2})
    assert match_score(target, Counter({("red", "circle"): 2})) == (1.0, True)
    assert match_score(target, Counter({("red", "circle"): 1})) == (0.5, False)
    assert match_score(target, Counter({("red", "circle"): 1, ("red", "square"): 1})) == (
        0.75,
        False,
    )
    assert match_score(target, Counter({("red", "circle"): 4})) == (0.5, False)
    assert match_score(target, Counter()) == (0.0, False)


def test_caption_round_trip():
    rng = random.Random(1)
    for _ in range(500):
        scene = sample_scene(rng)
        assert parse_caption(caption_for(scene.multiset, rng)) == scene.multiset


def test_parser_examples():
    assert parse_caption("Two green triangles and a yellow circle.") == Counter(
        {("green", "triangle"): 2, ("yellow", "circle"): 1}
    )
    assert parse_caption("a red square, a green circle and a yellow triangle") == Counter(
        {("red", "square"): 1, ("green", "circle"): 1, ("yellow", "triangle"): 1}
    )


@pytest.mark.parametrize(
    "text",
    [
        "a purple circle",
        "two red circle",
        "a red circles",
        "five red circles",
        "red circle",
        "three red circles and two blue squares",
        "",
        "a dog",
    ],
)
def test_parser_rejects_text_outside_grammar(text):
    with pytest.raises(PromptError) as info:
        parse_caption(text)
    assert "valid words" in str(info.value) and "triangle" in str(info.value)


def test_vocabulary_is_listed_in_errors():
    with pytest.raises(PromptError) as info:
        parse_caption("a purple circle")
    assert "purple" in str(info.value)
    assert all(word in str(info.value) for word in VOCABULARY)


def test_prompt_suites_are_disjoint_and_cover_the_categories():
    train, heldout = load_suite("train"), load_suite("heldout")
    assert len(train) >= 24 and len(heldout) >= 24
    as_sets = [{frozenset(parse_caption(p).items()) for p in s} for s in (train, heldout)]
    assert not as_sets[0] & as_sets[1]
    for suite in (train, heldout):
        parsed = [parse_caption(p) for p in suite]
        singles = [m for m in parsed if sum(m.values()) == 1]
        counts = {n for m in parsed if len(m) == 1 for n in m.values()}
        binding = [m for m in parsed if len(m) >= 2]
        assert len(singles) >= 4 and {2, 3, 4} <= counts and len(binding) >= 6
