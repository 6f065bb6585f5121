"""Shared fixtures: tiny random models built from configs (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from find_ray.shapes.components import ShapesModelConfig, build_pipeline

TINY_SHAPES = ShapesModelConfig(
    block_out_channels=[8, 16], attention_heads=2, text_hidden_size=16, text_layers=1
)


def pytest_collection_modifyitems(items):
    """Tests that need Ray run the system end to end: they belong to the slow tier."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory):
    """A random-weight ShapesPipeline saved with save_pretrained."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-shapes")
    build_pipeline(TINY_SHAPES).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def no_hub_probe(monkeypatch):
    """No test opens a connection to the hub: its reachability probe answers "online" (a test
    of offline behaviour patches it to False). Nothing downloads either way: tests name local
    weights, or expect the one-line error."""
    from find_ray.rewards import hub

    monkeypatch.setattr(hub, "reachable", lambda url: True)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on a busy 2-core machine run ~100x slower with 2 intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard); yields its GCS address."""
    import ray

    from find_ray.serve.launch import patient_serve_env

    patient_serve_env()  # the Serve tests start an HTTP proxy on this Ray
    # address="local": a new Ray of its own, never one left running on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
