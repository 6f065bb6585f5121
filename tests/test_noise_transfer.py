"""benchmarks/noise_transfer.py: the transfer statistics on known outcomes, the partner rules,
and the script end to end on a tiny model (both suites on shared noises)."""

import json

import numpy as np

from find_ray.experiments import noise_transfer as transfer


def test_lift_is_positive_when_good_noises_coincide_and_zero_when_independent():
    t = np.array([1, 1, 0, 0, 1, 0, 0, 0], float)
    same = transfer.transfer_row("same", {1: 0}, np.stack([t, t]))
    assert same["on_partner_good_noises"] == 1.0 and same["lift"] == 1.0 - t.mean()
    assert same["phi"] == 1.0
    t, h = np.array([1, 1, 0, 0], float), np.array([1, 0, 1, 0], float)  # independent
    independent = transfer.transfer_row("independent", {1: 0}, np.stack([t, h]))
    assert independent["on_partner_good_noises"] == 0.5 and independent["lift"] == 0.0
    assert independent["phi"] == 0.0


def test_partner_rules():
    prompts = ["a red circle", "two red circles", "a blue circle", "two blue squares"]
    sim = np.array([[1, 0.9, 0.8, 0.1], [0.9, 1, 0.7, 0.6], [0.8, 0.7, 1, 0.2], [0.1, 0.6, 0.2, 1]])
    nearest = transfer.pick_partners("nearest", [3], [0, 1, 2], sim, prompts)
    assert nearest == {3: 1}
    same = transfer.pick_partners("same counts", [2, 3], [0, 1], sim, prompts)
    assert same == {2: 0, 3: 1}  # "a ..." has counts (1,), "two ..." (2,)
    assert transfer.counts_of("two red circles and a blue square") == (1, 2)


def test_script_on_a_tiny_model(tiny_shapes_dir, tmp_path):
    out = tmp_path / "results"
    transfer.main(
        ["--samples", "2", "--out", str(out), f"model.path={tiny_shapes_dir}", "model.steps=2"]
    )
    data = json.loads((out / "noise_transfer.json").read_text())
    assert np.array(data["exact"]).shape == (56, 2)
    assert [r["rule"] for r in data["rows"]][0] == "held-out <- nearest train prompt"
    assert "| held-out <- random train prompt |" in (out / "noise_transfer.md").read_text()
