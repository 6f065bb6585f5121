"""benchmarks/sweep.py end to end on a tiny model: cells trained with their overrides, the
learner's statistics read back from TensorBoard, the table and the plot."""

import json

import pytest

from find_ray.config import load_config
from find_ray.experiments import sweep
from tests.experiment_args import tiny_run_args


@pytest.mark.slow
def test_sweep_cells_apply_their_factor_and_method(tiny_shapes_dir, tmp_path):
    tiny = tiny_run_args(tmp_path, tiny_shapes_dir, "[a red circle]", 4)
    sweep.main(
        ["--factors", "default", "noisy_reward", "--methods", "true_clip", "prompt_mean", *tiny]
    )
    data = json.loads((tmp_path / "results" / "sweep.json").read_text())
    cells = [(c["factor"], c["method"]) for c in data["cells"]]
    assert cells == [
        ("default", "true_clip"),
        ("default", "prompt_mean"),
        ("noisy_reward", "true_clip"),
        ("noisy_reward", "prompt_mean"),
    ]
    noisy = load_config(tmp_path / "runs" / "noisy_reward-prompt_mean" / "config.yaml")
    assert noisy.reward.noise_std == 0.3 and noisy.learner.baseline == "prompt_mean"
    assert noisy.learner.loss.logp_reduction == "mean"  # the shipped ratio, but for true_clip
    true = load_config(tmp_path / "runs" / "noisy_reward-true_clip" / "config.yaml")
    assert true.learner.loss.logp_reduction == "sum" and true.learner.baseline == "drcm"
    for cell in data["cells"]:
        assert 0 <= cell["clip_fraction"] <= 1 and cell["kl_to_prior"] >= 0
        assert {"gain", "low", "high"} <= set(cell["exact"])
    assert (tmp_path / "results" / "sweep.png").is_file()
    assert "| noisy_reward | prompt_mean |" in (tmp_path / "results" / "sweep.md").read_text()

    # a later sweep adds its cells to the table, in grid order, keeping the rows it did not rerun
    sweep.main(["--cells", "default/mean_clip", *tiny])
    data = json.loads((tmp_path / "results" / "sweep.json").read_text())
    assert [(c["factor"], c["method"]) for c in data["cells"]] == [("default", "mean_clip"), *cells]
    # rows trained with other overrides are not mixed in
    sweep.main(["--cells", "default/mean_clip", *tiny, "train.iterations=1"])
    data = json.loads((tmp_path / "results" / "sweep.json").read_text())
    assert [(c["factor"], c["method"]) for c in data["cells"]] == [("default", "mean_clip")]
