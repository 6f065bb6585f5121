"""The Ray actor-learner system on one shared local Ray (2 CPUs).

Sync mode with one rollout actor equals the in-process loop; async runs survive killed actors,
NaN and raising scorers and a killed driver, with the accounting adding up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch

from find_ray import cli
from find_ray.algo.policy_files import load_policy
from find_ray.config import load_config
from find_ray.errors import FindRayError
from find_ray.runs.in_process import train_in_process
from find_ray.system import driver
from find_ray.system.checkpoint import load_checkpoint
from find_ray.system.driver import RayTrainer, resume_config
from find_ray.system.flights import RolloutFlight

pytestmark = pytest.mark.ray

SIMULATED = [
    "model.backend=simulated",
    "model.latency_s=0.05",
    "reward.name=brightness",
    "train.prompts=[p one,p two]",
    "train.samples_per_prompt=8",
    "train.iterations=8",
    "eval.samples_per_prompt=4",
    "ray.rollouts_per_task=4",
    "learner.loss.drcm_hidden=8",
    "learner.drcm_steps=2",
]


def simulated(tmp_path, *overrides: str):
    return load_config(None, [*SIMULATED, f"train.out_dir={tmp_path / 'run'}", *overrides])


def totals_add_up(run_dir) -> dict[str, int]:
    totals = json.loads((run_dir / "metrics.json").read_text())["rollouts"]
    assert totals["in_flight"] == 0
    assert totals["issued"] == totals["stored"] + totals["dropped"]
    assert totals["dropped"] == sum(v for k, v in totals.items() if k.startswith("dropped/"))
    return totals


def finite_policy(run_dir) -> bool:
    policy = load_policy(run_dir / "policy.safetensors")
    return all(torch.isfinite(p).all() for p in policy.parameters())


@pytest.mark.parametrize("kind", ["per_prompt", "amortized"])
def test_sync_ray_run_learns_like_the_in_process_loop(ray_local, tiny_shapes_dir, tmp_path, kind):
    common = [
        f"policy.kind={kind}",
        # the amortized run also draws one of the two prompts per iteration (same plan in both)
        f"train.prompts_per_iteration={1 if kind == 'amortized' else 0}",
        f"model.path={tiny_shapes_dir}",
        "model.steps=2",
        "train.prompts=[a red circle,two blue squares]",
        "train.iterations=3",
        "train.samples_per_prompt=4",
        "train.rollout_batch_size=4",
        "eval.samples_per_prompt=4",
        "learner.loss.drcm_hidden=8",
        "learner.optimizer=adamw",
        "learner.loss.policy_lr=0.05",
    ]
    local = train_in_process(load_config(None, [*common, f"train.out_dir={tmp_path / 'local'}"]))
    sync = [
        "ray.num_rollout_actors=1",
        "ray.rollouts_per_task=4",
        "ray.sync=true",
        f"train.out_dir={tmp_path / 'ray'}",
    ]
    remote = RayTrainer(load_config(None, [*common, *sync])).run()
    a = load_policy(tmp_path / "local" / "policy.safetensors")
    b = load_policy(tmp_path / "ray" / "policy.safetensors")
    assert a.kind == b.kind == kind
    ids = torch.arange(2)
    (mu_a, sigma_a), (mu_b, sigma_b) = a.mean_std(ids), b.mean_std(ids)
    assert mu_a.abs().max() > 1e-3  # it learned something
    assert torch.allclose(mu_a, mu_b, atol=1e-5)  # the stated tolerance: 1e-5 per element
    assert torch.allclose(sigma_a, sigma_b, atol=1e-5)
    for h_local, h_ray in zip(local.history, remote.history, strict=True):
        assert h_ray["reward_mean"] == pytest.approx(h_local["reward_mean"], abs=1e-6)
    assert remote.gains["scores"] == pytest.approx(local.gains["scores"], abs=1e-6)
    assert totals_add_up(tmp_path / "ray")["stored"] == 3 * (1 if kind == "amortized" else 2) * 4


def test_killed_actors_and_nan_scores_keep_the_accounting(ray_local, tmp_path):
    cfg = simulated(tmp_path, "reward.fault=nan", "reward.fault_rate=0.2", "train.iterations=10")
    trainer = RayTrainer(cfg)
    killed: list[int] = []

    def kill_rollout_and_reward_actor(t: RayTrainer) -> None:
        busy = {f.actor for f in t.pending.values() if isinstance(f, RolloutFlight)}
        if killed or 0 not in busy:  # kill actor 0 while it holds rollouts in flight
            return
        for actor in (t.actors.rollout[0], t.actors.reward[0]):
            os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
        killed.append(t.version)

    trainer.after_update = kill_rollout_and_reward_actor
    result = trainer.run()
    assert killed and result.history[-1]["store_size"] > 0
    totals = totals_add_up(result.run_dir)
    assert totals["dropped/actor_died"] >= 1  # its lost work was counted, then resubmitted
    assert totals["dropped/bad_reward"] >= 1
    assert totals["stored"] + totals["dropped"] - totals["dropped/actor_died"] == 10 * 16
    assert finite_policy(result.run_dir)


def test_an_actor_dead_for_good_is_retired_and_the_run_finishes(ray_local, tmp_path):
    # calls of 0.2 s: the run outlasts the 4 failures (1 s of cooldown apart) that retire one
    trainer = RayTrainer(simulated(tmp_path, "train.iterations=16", "model.latency_s=0.2"))

    def kill_for_good(actors: list[int]):
        def hook(t: RayTrainer) -> None:
            if t.version == 2:
                for i in actors:
                    ray.kill(t.actors.rollout[i], no_restart=True)

        return hook

    trainer.after_update = kill_for_good([1])
    result = trainer.run()
    health = trainer.pools.health["rollout"]  # actor 1 failed 4 calls in a row: retired
    assert health.retired == {1} and health.in_a_row[1] == 4
    totals = totals_add_up(result.run_dir)
    assert totals["dropped/actor_died"] > 0
    assert totals["stored"] + totals["dropped"] - totals["dropped/actor_died"] == 16 * 16

    doomed = RayTrainer(simulated(tmp_path / "all"))
    doomed.after_update = kill_for_good([0, 1])
    with pytest.raises(FindRayError, match="every rollout actor failed 4 calls in a row"):
        doomed.run()  # with no actor left the run stops with the reason, it does not hang


def test_a_killed_learner_is_replaced_from_its_checkpoint(ray_local, tmp_path):
    trainer = RayTrainer(simulated(tmp_path, "train.iterations=10", "ray.checkpoint_every=3"))
    killed: list[int] = []

    def kill_the_learner(t: RayTrainer) -> None:
        if not killed and t.version == 5:  # two updates after the checkpoint at version 3
            pid = ray.get(t.actors.learner.__ray_call__.remote(lambda self: os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    trainer.after_update = kill_the_learner
    result = trainer.run()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert killed and metrics["learner_restarts"] == 1
    assert metrics["rollouts_redone_after_learner_loss"] > 0  # versions 4 and 5 were redone
    assert trainer.logger.versions == list(range(1, 11))  # each version logged once
    totals = totals_add_up(result.run_dir)
    resubmitted = totals.get("dropped/actor_died", 0) + totals.get("dropped/interrupted", 0)
    assert totals["stored"] + totals["dropped"] - resubmitted == 10 * 16  # none counted twice
    assert finite_policy(result.run_dir)


def test_a_learner_that_keeps_dying_stops_the_run_with_how_to_resume(ray_local, tmp_path):
    trainer = RayTrainer(simulated(tmp_path, "ray.max_restarts=0"))

    def kill_the_learner(t: RayTrainer) -> None:
        if t.version == 2:
            ray.kill(t.actors.learner, no_restart=True)

    trainer.after_update = kill_the_learner
    with pytest.raises(FindRayError, match="the learner actor died .*find-ray train --resume"):
        trainer.run()


def test_a_raising_scorer_drops_whole_batches(ray_local, tmp_path):
    cfg = simulated(tmp_path, "reward.fault=raise", "reward.fault_rate=0.3")
    result = RayTrainer(cfg).run()
    totals = totals_add_up(result.run_dir)
    assert totals["dropped/reward_error"] >= 4 and totals["dropped/reward_error"] % 4 == 0
    assert finite_policy(result.run_dir)


def test_tensorboard_has_rollout_thumbnails_and_before_after_grids(ray_local, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = RayTrainer(simulated(tmp_path, "ray.grid_every=4")).run()
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert {"rollouts/p00", "rollouts/p01", "before_after/p00", "before_after/p01"} <= tags
    assert len(events.Images("rollouts/p00")) >= 2  # at the start and after update 4
    assert {"policy_lag_mean", "rollouts_per_s", "clip_fraction"} <= set(events.Tags()["scalars"])


def test_killed_driver_resumes_from_its_checkpoint(ray_local, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *SIMULATED,
        "train.iterations=60",
        "model.latency_s=0.1",
        "ray.checkpoint_every=1",
        f"train.out_dir={run_dir}",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    proc = subprocess.Popen(
        [sys.executable, "-m", "find_ray", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def checkpoint_version() -> int:
        try:  # a checkpoint may be mid-swap (renames): load_checkpoint falls back to the old one
            return load_checkpoint(run_dir / "checkpoint")[1]["version"]
        except (FindRayError, OSError, ValueError, EOFError, RuntimeError):
            return -1

    deadline = time.monotonic() + 240
    while checkpoint_version() < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = load_checkpoint(run_dir / "checkpoint")[1]
    assert meta["version"] < 60

    trainer = RayTrainer(resume_config(run_dir), resume=True)
    versions: list[int] = []
    trainer.after_update = lambda t: versions.append(t.version)
    trainer.run()
    assert versions[0] == meta["version"] + 1 and versions[-1] == 60
    totals = totals_add_up(run_dir)
    assert totals["dropped/interrupted"] == meta["totals"]["in_flight"]
    assert totals["stored"] >= meta["totals"]["stored"]
    assert totals["issued"] > meta["totals"]["issued"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ray.num_rollout_actors=0", "ray.num_rollout_actors"),
        ("model.path=/no/such/model", "/no/such/model"),
        ("ray.no_such_key=1", "no_such_key"),
    ],
)
def test_a_bad_config_fails_before_any_actor_starts(monkeypatch, capsys, override, message):
    def never(*_):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(driver, "connect", never)
    monkeypatch.setattr(driver, "start_actors", never)
    assert cli.main(["train", override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
