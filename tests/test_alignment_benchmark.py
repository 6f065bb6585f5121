"""benchmarks/alignment.py end to end on a tiny model: seeds trained through Ray, held-out
evaluation with the shared base, the table, and finished seeds read back, not retrained."""

import json
import shutil

import pytest

from find_ray.experiments import alignment
from tests.experiment_args import tiny_run_args


@pytest.mark.ray
def test_alignment_runs_seeds_and_reads_them_back(
    ray_local, tiny_shapes_dir, tmp_path, monkeypatch
):
    args = [
        "--name",
        "tiny",
        "--config",
        "configs/find-shapes-amortized.yaml",
        "--seeds",
        "0",
        "1",
        "--heldout",
        *tiny_run_args(tmp_path, tiny_shapes_dir, "[a red circle,two blue squares]", 4),
        "model.guidance=1.5",
        "train.rollout_batch_size=8",
        "eval.batch_size=64",
        "ray.num_rollout_actors=1",
        "ray.rollouts_per_task=8",
    ]
    alignment.main(args)
    data = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [row["seed"] for row in data["seeds"]] == [0, 1]
    for row in data["seeds"]:
        assert row["minutes"] > 0 and row["kl_to_prior"] >= 0
        assert {"exact_gain", "exact_low", "exact_high", "diversity_ratio"} <= set(row["heldout"])
        run = tmp_path / "runs" / "tiny" / f"seed{row['seed']}"
        report = json.loads((run / "metrics.json").read_text())
        assert row["train"]["exact_gain"] == report["gains"]["exact"]["gain"]  # its own run
        assert row["train"]["exact_low"] <= row["train"]["exact_gain"] <= row["train"]["exact_high"]
    refs = data["references"]
    assert set(refs) == {"best_of_1", "best_of_2", "cfg_1.0"}
    assert refs["best_of_1"] <= refs["best_of_2"]  # the best of two draws is never worse
    assert "heldout_gain" in data["summary"]
    held = json.loads(
        (tmp_path / "runs" / "tiny" / "seed1" / "eval-heldout" / "metrics.json").read_text()
    )
    assert len(held["prompts"]) == 28 and held["base_only"] == []  # amortized: every prompt
    table = (tmp_path / "results" / "tiny.md").read_text()
    assert "| 1 |" in table and "best of 2" in table

    def no_training(cfg):
        raise AssertionError(f"retrained {cfg.train.out_dir}")

    monkeypatch.setattr("find_ray.system.driver.train_with_ray", no_training)
    alignment.main(args)  # finished seeds of the same config are read back
    again = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [r["train"] for r in again["seeds"]] == [r["train"] for r in data["seeds"]]
    shutil.rmtree(tmp_path / "runs" / "tiny" / "seed0")  # a fresh checkout: rows, no folders
    alignment.main(args)
    third = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert third["seeds"][0] == again["seeds"][0]
