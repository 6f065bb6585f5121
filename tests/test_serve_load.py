"""The Serve load benchmark end to end, short, on a simulated-backend run: Serve beside the bare
pipeline in one run, every level answered, the replica's batches no larger than asked."""

from __future__ import annotations

import json

import pytest

from find_ray.config import load_config
from find_ray.experiments import serve_load
from find_ray.runs.in_process import train_in_process
from tests.test_serve import RUN, free_port


@pytest.mark.ray
def test_serve_load_measures_serve_beside_the_bare_pipeline(ray_local, tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(load_config(None, [*RUN, "train.iterations=2", f"train.out_dir={run_dir}"]))
    out = tmp_path / "results"
    serve_load.main(
        [str(run_dir), "--batch", "4", "--seconds", "1", "--max-requests", "12"]
        + ["--bare-seconds", "0.3", "--repeats", "3", "--num-cpus", "0.5"]
        + ["--port", str(free_port()), "--out", str(out)]
    )
    data = json.loads((out / "serve_load.json").read_text())
    levels = [(row["batching"], row["clients"]) for row in data["load"]]
    assert levels == [(mode, n) for mode in ("on", "off") for n in serve_load.CLIENTS]
    assert all(row["failures"] == 0 and row["requests"] > 0 for row in data["load"])
    bare = data["bare"]
    assert len(bare["images_per_s"]) == 2 and min(bare["images_per_s"]) > 0
    top = next(r for r in data["load"] if r["batching"] == "on" and r["clients"] == 64)
    assert bare["serve_share"] == pytest.approx(top["requests_per_s"] / bare["mean"])
    over = data["overhead"]
    assert over["ratio"] == pytest.approx(over["served_p50_s"] / over["direct_p50_s"])
    sizes = {int(size): count for size, count in data["batch_sizes"]["on"].items()}
    served = sum(r["requests"] for r in data["load"] if r["batching"] == "on")
    assert max(sizes) <= 4 and sum(size * count for size, count in sizes.items()) >= served
    assert "Serve / bare" in (out / "serve_load.md").read_text()
    assert (out / "serve_load.png").is_file()
