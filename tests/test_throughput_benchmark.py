"""benchmarks/throughput.py on a tiny random SD pipeline on CPU: its three rows are measured."""

from __future__ import annotations

import json

import pytest

from find_ray.experiments import throughput
from tests.tiny_pipelines import save_tiny


@pytest.mark.ray
def test_throughput_benchmark_measures_pipeline_actor_and_train_loop(ray_local, tmp_path):
    folder = save_tiny("sd", tmp_path)
    out = tmp_path / "results"
    throughput.main(
        [
            "--batch=2",
            "--calls=2",
            "--iterations=2",
            f"--out={out}",
            f"model.path={folder}",
            "model.steps=2",
            "reward.name=brightness",
            "train.max_prompts=2",
            "train.samples_per_prompt=2",
            "eval.samples_per_prompt=1",
            "eval.grid_samples=1",
            f"eval.out_dir={tmp_path / 'eval'}",
            "ray.num_rollout_actors=1",
            "ray.rollout_num_cpus=0.5",
            "ray.checkpoint_every=0",
        ]
    )
    rows = json.loads((out / "throughput.json").read_text())["rows"]
    assert [r["what"] for r in rows] == [
        "bare diffusers pipeline",
        "one rollout actor",
        "train loop (brightness reward)",
    ]
    assert all(r["images_per_s"] > 0 for r in rows)
    assert rows[0]["vs_bare"] == 1.0 and rows[0]["peak_memory_mib"] > 0
    assert "no GPU" in (out / "throughput.md").read_text()
