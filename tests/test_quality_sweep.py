"""The quality sweep end to end on a tiny model: each cell an alignment run through Ray, the
table carrying the gain beside artifacts, shell, diversity and best-of-4."""

import json

import pytest

from find_ray.experiments import quality_sweep
from tests.experiment_args import tiny_run_args


@pytest.mark.ray
def test_quality_sweep_runs_cells_and_tabulates_them(ray_local, tiny_shapes_dir, tmp_path):
    args = tiny_run_args(tmp_path, tiny_shapes_dir, "[a red circle,two blue squares]", 4)
    quality_sweep.main(
        ["--cells", "plain", "project", "--seeds", "0", *args[:4], "--", *args[4:]]
        + ["eval.samples_per_prompt=4", "train.rollout_batch_size=8", "ray.num_rollout_actors=1"]
        + ["ray.rollouts_per_task=8"]
    )
    data = json.loads((tmp_path / "results" / "quality_sweep.json").read_text())
    assert [c["cell"] for c in data["cells"]] == ["plain", "project"]
    project = json.loads((tmp_path / "results" / "quality-project.json").read_text())
    row = project["seeds"][0]["train"]
    assert row["shell_shell_mean"] == pytest.approx(1.0)  # every latent on the shell
    assert row["shell_shell_outside_99"] == 0 and "artifacts_relative" in row
    assert set(row["find_best_of"]) == {"1", "2", "4"}  # N <= the 4 eval samples
    assert row["find_best_of"]["1"] == pytest.approx(row["exact_after"])
    table = (tmp_path / "results" / "quality_sweep.md").read_text()
    assert "| project | 1 |" in table and (tmp_path / "results" / "quality_sweep.png").is_file()
