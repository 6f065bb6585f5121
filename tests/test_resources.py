"""Resources checked before any actor starts: the ray.*_num_gpus keys against the devices,
the actors against the cluster's nodes (plain dicts, no Ray), and CUDA devices without Ray."""

from __future__ import annotations

import logging

import pytest
import torch

from find_ray import cli
from find_ray.config import load_config
from find_ray.errors import ConfigError
from find_ray.runs.in_process import cuda_problems
from find_ray.system import driver, resources
from find_ray.system.resources import (
    ActorAsk,
    actor_asks,
    check_devices,
    check_resources,
    cluster_problems,
    device_problems,
)

SIMULATED = ["model.backend=simulated", "reward.name=brightness", "train.prompts=[p one]"]
ONE = ["ray.num_rollout_actors=1"]  # one actor too large, and the sum still fits


def problems(*overrides: str, config: str | None = None) -> list[str]:
    return device_problems(actor_asks(load_config(config, list(overrides))))


def test_sd15_on_cpu_names_the_rollout_gpu_key_and_its_fix():
    cfg = load_config("configs/sd15.yaml", ["model.device=cpu"])
    with pytest.raises(ConfigError) as e:
        check_devices(cfg)
    assert str(e.value) == (
        "config key 'ray.rollout_num_gpus': 0.5 GPU per rollout actor but model.device=cpu "
        "puts nothing on it; set ray.rollout_num_gpus=0 or model.device=cuda"
    )
    check_devices(load_config("configs/sd15.yaml"))  # as shipped: devices and shares agree


def test_cuda_without_a_gpu_share_names_the_key():
    (message,) = problems("model.device=cuda")
    assert message.startswith("config key 'ray.rollout_num_gpus': model.device=cuda but")
    assert message.endswith("set ray.rollout_num_gpus=0.5 (or 1) or model.device=cpu")


def test_reward_devices_against_the_reward_gpu_share():
    (idle,) = problems("reward.name=imagereward", "ray.reward_num_gpus=0.25")
    assert idle.startswith("config key 'ray.reward_num_gpus': 0.25 GPU per reward actor")
    assert "reward.device=cpu puts nothing on it" in idle and "reward.device=cuda" in idle
    (hidden,) = problems("reward.name=imagereward", "reward.device=cuda")
    assert hidden.startswith("config key 'ray.reward_num_gpus': reward.device=cuda but")
    (quality,) = problems("eval.quality.name=aesthetic", "eval.quality.device=cuda")
    assert "eval.quality.device=cuda" in quality and "'ray.reward_num_gpus'" in quality
    # a cheap scorer computes on the CPU whatever its device says; either device is fine
    assert problems("reward.name=brightness", "reward.device=cuda") == []
    assert problems("reward.name=imagereward", "reward.device=cuda", "eval.quality.device=cpu",
                    "ray.reward_num_gpus=0.25") == []  # fmt: skip


def test_learner_gpu_share_sits_idle():
    (message,) = problems("ray.learner_num_gpus=0.5")
    assert message.startswith("config key 'ray.learner_num_gpus': 0.5 GPU for the learner")
    assert message.endswith("set ray.learner_num_gpus=0")


def test_simulated_backend_has_no_device_to_check():
    assert problems(*SIMULATED, "model.device=cuda") == []
    assert problems(*SIMULATED, "ray.rollout_num_gpus=0.5") == []


def test_several_problems_are_one_line():
    with pytest.raises(ConfigError) as e:
        check_devices(load_config(None, ["model.device=cuda", "ray.learner_num_gpus=1"]))
    message = str(e.value)
    assert "\n" not in message and "; also config key 'ray.learner_num_gpus'" in message


# ---------------------------------------------------------------- the cluster


def asks(*overrides: str, config: str | None = None) -> list[ActorAsk]:
    return actor_asks(load_config(config, list(overrides)))


def test_gpus_asked_of_a_cluster_without_any():
    cpu_rollouts = asks("model.device=cpu", "ray.rollout_num_gpus=0", config="configs/sd15.yaml")
    (message,) = cluster_problems(cpu_rollouts, [{"CPU": 16.0, "memory": 1e10}])
    assert message == (
        "config key 'ray.reward_num_gpus': the reward actors ask for 0.25 GPU each but the Ray "
        "cluster has no GPU; set ray.reward_num_gpus=0 and reward.device=cpu and "
        "eval.quality.device=cpu, or join a cluster with GPUs (ray.address)"
    )
    assert cluster_problems(cpu_rollouts, [{"CPU": 16.0, "GPU": 1.0}]) == []


def test_an_actor_larger_than_every_node():
    (cpus,) = cluster_problems(asks(*ONE, "ray.rollout_num_cpus=4"), [{"CPU": 2.0}, {"CPU": 3.0}])
    assert cpus == (
        "config key 'ray.rollout_num_cpus': a rollout actor asks for 4 CPU but the largest Ray "
        "node has 3; set ray.rollout_num_cpus=3 or less"
    )
    big = asks(*ONE, "model.device=cuda", "ray.rollout_num_gpus=2")
    (gpus,) = cluster_problems(big, [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    assert gpus.startswith("config key 'ray.rollout_num_gpus': a rollout actor asks for 2 GPU")
    assert gpus.endswith("set ray.rollout_num_gpus=1 or less")


def test_an_actor_no_single_node_holds():
    both = asks(*ONE, "model.device=cuda", "ray.rollout_num_gpus=1", "ray.rollout_num_cpus=2")
    (message,) = cluster_problems(both, [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}])
    assert message.startswith("config keys 'ray.rollout_num_cpus', 'ray.rollout_num_gpus':")
    assert message.endswith("asks for CPU=2, GPU=1 but no Ray node has all")


def test_a_custom_resource_no_node_has():
    learner = ActorAsk("learner", 1, 0.25, 0.0, {"learner": 1.0}, {}, True)
    (message,) = cluster_problems([learner], [{"CPU": 2.0}])
    assert message.startswith("config key 'ray.learner_resources': a learner actor asks for 1")
    assert "`ray start --resources`" in message


def test_more_in_all_than_the_cluster_has():
    four = asks("ray.num_rollout_actors=4", "ray.rollout_num_cpus=1")  # + 0.25 + 0.25
    (message,) = cluster_problems(four, [{"CPU": 2.0}, {"CPU": 2.0}])
    assert message.startswith("config keys 'ray.num_rollout_actors', 'ray.rollout_num_cpus'")
    assert "ask for 4.5 CPU in all (4 rollout x 1, 1 reward x 0.25, 1 learner x 0.25)" in message
    assert message.endswith("but the Ray cluster has 4; lower them")
    assert cluster_problems(asks(), [{"CPU": 2.0}]) == []  # the defaults: 1.5 CPU


def test_check_resources_errs_on_a_ray_started_here_and_warns_on_a_joined_one(monkeypatch, caplog):
    cfg = load_config(None, [*SIMULATED, *ONE, "ray.rollout_num_cpus=4"])
    monkeypatch.setattr(resources, "live_nodes", lambda: [{"CPU": 2.0}, {"CPU": 3.0}])
    with pytest.raises(ConfigError, match="'ray.rollout_num_cpus'"):
        check_resources(cfg, started_here=True)
    with caplog.at_level(logging.WARNING, logger=resources.__name__):
        check_resources(cfg, started_here=False)  # a joined cluster: an autoscaler may add
    (record,) = caplog.records
    assert "'ray.rollout_num_cpus'" in record.getMessage() and "autoscaler" in record.getMessage()


def _never(*_):
    raise AssertionError("an actor was started")


def test_train_fails_in_one_line_before_ray_for_a_gpu_share_without_a_device(monkeypatch, capsys):
    def no_ray(*_):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(driver, "connect", no_ray)
    monkeypatch.setattr(driver, "start_actors", _never)
    assert cli.main(["train", "ray.rollout_num_gpus=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("find-ray: error: config key 'ray.rollout_num_gpus': 0.5 GPU")


def test_train_checks_the_cluster_after_connecting_and_before_any_actor(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(driver, "connect", lambda cfg: True)  # started a Ray: it cannot grow
    monkeypatch.setattr(resources, "live_nodes", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(driver, "start_actors", _never)
    argv = ["train", *SIMULATED, "ray.rollout_num_cpus=4", f"train.out_dir={tmp_path / 'run'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'ray.rollout_num_cpus'" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- --no-ray


def test_cuda_devices_this_machine_lacks():
    assert cuda_problems({"model.device": "cuda"}, 0) == [
        "config key 'model.device': cuda but torch sees no CUDA GPU on this machine "
        "(torch.cuda.is_available() is False); set model.device=cpu"
    ]
    (index,) = cuda_problems({"model.device": "cpu", "reward.device": "cuda:1"}, 1)
    assert index.startswith("config key 'reward.device': cuda:1 but torch sees 1 CUDA GPU")
    assert cuda_problems({"model.device": "cuda:0", "reward.device": "cuda"}, 1) == []


def test_no_ray_train_with_cuda_on_a_machine_without_fails_in_one_line(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert cli.main(["train", "--no-ray", "model.device=cuda", f"train.out_dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config key 'model.device': cuda but torch" in err
    assert not run.exists()  # nothing was written, nothing loaded
