"""The scale benchmark end to end on 1 and 2 simulated actors (tiny latency, few updates)."""

import json

import pytest

from find_ray.experiments import scale


@pytest.mark.ray
def test_scale_benchmark_writes_table_and_plot(ray_local, tmp_path):
    scale.main(
        ["--actors", "1", "2", "--latency", "0.1", "--iterations", "6", "--repeats", "2"]
        + ["--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "scale.json").read_text())
    rows, runs, settings = data["rows"], data["runs"], data["settings"]
    assert [r["actors"] for r in rows] == [1, 2] and len(runs) == 4
    assert [(r["repeat"], r["actors"]) for r in runs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for run in runs:  # an actor finishes one call per simulated latency, plus the one in flight
        window_s = run["measured_s"] - 0.05  # rounded to 0.1 s
        calls_per_s = 1 / settings["latency_s"] + 1 / window_s
        cap = run["actors"] * settings["per_task"] * calls_per_s
        assert 0 < run["rollouts_per_s"] <= cap
        assert run["cpu_cores"]["rollout"] > 0 and run["cpu_cores"]["driver"] > 0
        assert 0 < run["learner_cpu_share"] <= run["learner_busy_share"] + 0.01 < 1.01
    for row in rows:  # the table's figure is the median of the runs, each against its repeat
        assert len(row["efficiency_runs"]) == 2
        low, high = sorted(row["efficiency_runs"])
        assert low - 0.05 <= 100 * row["efficiency"] <= high + 0.05
    assert rows[0]["efficiency"] == 1.0
    assert rows[1]["rollouts_per_s"] > rows[0]["rollouts_per_s"]  # two actors do more work
    # mu + log_sigma (4 prompts, fp32) + the sigma_range (2 x fp32) and shell_mode (int64) buffers
    assert rows[0]["weights_bytes"] == 2 * 4 * 3 * 8 * 8 * 4 + 2 * 4 + 8
    assert (tmp_path / "scale.png").is_file() and "| 2 |" in (tmp_path / "scale.md").read_text()
