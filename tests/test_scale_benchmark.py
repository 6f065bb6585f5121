"""The scale benchmark end to end on 1 and 2 simulated actors (tiny latency, few updates)."""

import json

import pytest

from find_ray.experiments import scale


@pytest.mark.ray
def test_scale_benchmark_writes_table_and_plot(ray_local, tmp_path):
    scale.main(
        ["--actors", "1", "2", "--latency", "0.1", "--iterations", "5", "--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "scale.json").read_text())
    rows, settings = data["rows"], data["settings"]
    assert [r["actors"] for r in rows] == [1, 2]
    for row in rows:  # no actor finishes more than one call per simulated latency
        cap = row["actors"] * settings["per_task"] / settings["latency_s"]
        assert 0 < row["rollouts_per_s"] <= 1.05 * cap
    assert rows[1]["rollouts_per_s"] > rows[0]["rollouts_per_s"]  # two actors do more work
    # mu + log_sigma (4 prompts, fp32) + the sigma_range (2 x fp32) and shell_mode (int64) buffers
    assert rows[0]["weights_bytes"] == 2 * 4 * 3 * 8 * 8 * 4 + 2 * 4 + 8
    assert (tmp_path / "scale.png").is_file() and "| 2 |" in (tmp_path / "scale.md").read_text()
