"""Arguments that shrink an experiment's runs to a tiny model (for its tests)."""

from pathlib import Path


def tiny_run_args(tmp_path: Path, tiny_dir: Path, prompts: str, samples_per_prompt: int) -> list:
    """A benchmark's output folders and the overrides that shrink its runs to a tiny model:
    2 sampler steps, 2 iterations, 2 eval samples per prompt."""
    return [
        "--out",
        str(tmp_path / "results"),
        "--runs",
        str(tmp_path / "runs"),
        f"model.path={tiny_dir}",
        "model.steps=2",
        f"train.prompts={prompts}",
        "train.iterations=2",
        f"train.samples_per_prompt={samples_per_prompt}",
        "eval.samples_per_prompt=2",
        "learner.loss.drcm_hidden=8",
    ]
