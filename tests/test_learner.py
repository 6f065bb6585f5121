"""Learner, rollout worker and the in-process FIND loop (tiny random models)."""

import copy
import math

import pytest
import torch

from find_ray.algo.learner import Learner
from find_ray.algo.policy_files import load_policy
from find_ray.algo.rollout import RolloutWorker, score_rollouts
from find_ray.algo.store import Rollout
from find_ray.backends import PipelineBackend, load_pipeline
from find_ray.config import FindLossConfig, LearnerConfig, load_config
from tests.learner_inputs import prompt_names, scored_rollouts

SHAPE = (2, 4, 4)


def make_rollouts(learner: Learner, n: int, first_id: int = 0, seed: int = 0) -> list[Rollout]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % learner.policy.num_prompts
    z = learner.policy.sample(ids, gen)
    logp = learner.policy.log_prob(z, ids).detach()
    reward = z.flatten(1).mean(1)  # higher mean noise, higher reward
    return scored_rollouts(learner, ids, z, logp, reward, first_id, learner.version)


def test_natural_step_is_the_advantage_weighted_mean_of_z_minus_mu():
    cfg = LearnerConfig(
        optimizer="natural",
        epochs=1,
        minibatch_size=64,
        drcm_steps=0,
        learn_sigma=False,
        loss=FindLossConfig(reg_weight=0.0, policy_lr=0.5),
    )
    learner = Learner(cfg, SHAPE, prompt_names(1), torch.zeros(1, 3))
    rollouts = make_rollouts(learner, 8)
    mu_before = learner.policy.mu.detach().clone()
    with torch.no_grad():
        baseline = learner.drcm(mu_before, torch.ones_like(mu_before), torch.zeros(1, 3))
    learner.add(rollouts)
    learner.update()
    z = torch.stack([r.z for r in rollouts])
    adv = torch.tensor([r.reward for r in rollouts]) - baseline  # rho = 1 on the first epoch
    expected = mu_before[0] + 0.5 * (adv[:, None, None, None] * (z - mu_before)).mean(0)
    assert torch.allclose(learner.policy.mu.detach()[0], expected, atol=1e-5)


def test_update_moves_towards_reward_and_reports_metrics():
    cfg = LearnerConfig(
        epochs=2,
        minibatch_size=16,
        drcm_steps=5,
        loss=FindLossConfig(policy_lr=0.3, drcm_lr=1e-3, drcm_hidden=16),
    )
    learner = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2))
    for v in range(5):
        learner.add(make_rollouts(learner, 32, first_id=100 * v, seed=v))
        metrics = learner.update()
    assert learner.version == 5
    assert learner.policy.mu.mean() > 0.05  # reward is the mean of z
    for key in (
        "adv_var_raw",
        "adv_var_calibrated",
        "clip_fraction",
        "approx_kl",
        "pg_loss",
        "reg_loss",
        "kl_to_prior",
        "store_size",
        "drops/stale",
    ):
        assert math.isfinite(metrics[key]), key
    assert metrics["drops/stale"] > 0  # max_policy_lag 2 drops the first batches


def test_state_dict_resumes_exactly():
    cfg = LearnerConfig(
        epochs=2, minibatch_size=8, drcm_steps=3, loss=FindLossConfig(policy_lr=0.3, drcm_hidden=16)
    )
    a = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2), seed=3)
    a.add(make_rollouts(a, 16))
    a.update()
    b = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2), seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    batch = make_rollouts(a, 16, first_id=1000, seed=1)
    a.add(batch)
    b.add(batch)
    a.update()
    b.update()
    assert a.version == b.version == 2
    assert torch.equal(a.policy.mu, b.policy.mu) and torch.equal(
        a.policy.log_sigma, b.policy.log_sigma
    )
    with pytest.raises(ValueError, match="duplicate"):
        b.add(batch[:1])  # the seen ids were restored too


@pytest.fixture(scope="module")
def tiny_backend(tiny_shapes_dir):
    return PipelineBackend(load_pipeline(str(tiny_shapes_dir)), steps=2, guidance=2.0, eta=0.0)


def test_worker_rollouts_carry_version_and_behaviour_logp(tiny_backend):
    prompts = ["a red circle", "two blue squares"]
    worker = RolloutWorker(tiny_backend, prompts, batch_size=3, seed=0)
    learner = Learner(LearnerConfig(), tiny_backend.latent_shape, prompts, torch.zeros(2, 4))
    with torch.no_grad():
        learner.policy.mu.add_(0.5)
    weights, _ = learner.weights()
    worker.set_weights(weights, version=7)
    rollouts, images = worker.rollout([0, 1, 0, 1], [10, 11, 12, 13])
    assert images.shape == (4, 3, 32, 32) and [r.rollout_id for r in rollouts] == [10, 11, 12, 13]
    assert all(r.policy_version == 7 and math.isnan(r.reward) for r in rollouts)
    assert [r.prompt for r in rollouts] == [prompts[i] for i in (0, 1, 0, 1)]
    z = torch.stack([r.z for r in rollouts])
    expected = learner.policy.log_prob(z, torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(torch.tensor([r.behaviour_logp for r in rollouts]), expected)
    assert z.mean() > 0.3  # sampled from the shifted policy, not from N(0, I)


def test_bad_rewards_are_dropped_and_counted(tiny_backend):
    worker = RolloutWorker(tiny_backend, ["a red circle"], seed=0)
    rollouts, images = worker.rollout([0, 0, 0], [0, 1, 2])

    def nan_scorer(images, prompts):
        return torch.tensor([0.5, float("nan"), float("inf")]), {}

    def failing_scorer(images, prompts):
        raise RuntimeError("scorer crashed")

    kept, drops = score_rollouts(nan_scorer, rollouts, images)
    assert [r.rollout_id for r in kept] == [0] and kept[0].reward == 0.5
    assert drops == {"bad_reward": [1, 2]}
    kept, drops = score_rollouts(failing_scorer, rollouts, images)
    assert kept == [] and drops == {"reward_error": [0, 1, 2]}


def test_rollout_noise_depends_only_on_seed_and_id(tiny_backend):
    """The same rollout id gives the same z in any batch and on any worker (Ray == in-process)."""
    a = RolloutWorker(tiny_backend, ["a red circle", "two blue squares"], batch_size=4, seed=3)
    b = RolloutWorker(tiny_backend, ["a red circle", "two blue squares"], batch_size=1, seed=3)
    whole, _ = a.rollout([0, 1, 0], [5, 6, 7])
    alone, _ = b.rollout([0], [7])
    assert torch.equal(whole[2].z, alone[0].z)
    assert not torch.equal(whole[0].z, whole[2].z)


def test_train_in_process_writes_policy_report_and_tensorboard(tiny_shapes_dir, tmp_path):
    from find_ray.runs.in_process import train_in_process

    cfg = load_config(
        None,
        [
            f"model.path={tiny_shapes_dir}",
            "model.steps=2",
            "train.prompts=[a red circle,a blue square]",
            "train.iterations=2",
            "train.samples_per_prompt=4",
            f"train.out_dir={tmp_path}",
            "eval.samples_per_prompt=3",
            "learner.loss.drcm_hidden=16",
        ],
    )
    result = train_in_process(cfg)
    text = result.report.read_text()
    assert len(result.history) == 2 and "reward_mean" in result.history[0]
    assert set(result.gains) == {"scores", "exact"}
    assert "| a red circle |" in text and "scores gain" in text and "exact gain" in text
    policy = load_policy(tmp_path / "policy.safetensors")
    assert policy.num_prompts == 2 and policy.shape == (3, 32, 32)
    assert policy.mu.abs().sum() > 0  # it was updated
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "reward_mean",
        "reward_mean/p00",
        "reward_mean/p01",
        "adv_var_raw",
        "adv_var_calibrated",
        "clip_fraction",
        "kl_to_prior",
        "store_size",
    } <= tags
    assert len(events.Scalars("reward_mean")) == 2  # one point per iteration
    assert (tmp_path / "before_after.png").is_file()


def test_an_overflowing_ratio_stays_finite_and_non_finite_steps_are_skipped():
    cfg = LearnerConfig(
        epochs=1, minibatch_size=4, drcm_steps=1, loss=FindLossConfig(drcm_hidden=16, policy_lr=0.3)
    )
    learner = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2))
    rollouts = make_rollouts(learner, 4)
    rollouts[0].behaviour_logp = -1e30  # exp(log ratio) would overflow to inf
    learner.add(rollouts)
    metrics = learner.update()
    assert metrics["skipped_steps"] == 0.0 and metrics["clip_fraction"] > 0
    assert torch.isfinite(learner.policy.mu).all()  # inf * 0 in backward would give NaN

    learner = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2))
    rollouts = make_rollouts(learner, 4)
    rollouts[1].z = torch.full_like(rollouts[1].z, math.nan)  # a corrupt rollout
    learner.add(rollouts)
    metrics = learner.update()
    assert metrics["skipped_steps"] == 1.0
    assert torch.isfinite(learner.policy.mu).all() and learner.policy.mu.abs().sum() == 0


def test_no_drcm_baseline_uses_raw_rewards():
    cfg = LearnerConfig(baseline="none", epochs=1, loss=FindLossConfig(drcm_hidden=16))
    learner = Learner(cfg, SHAPE, prompt_names(2), torch.eye(2))
    drcm_before = copy.deepcopy(learner.drcm.state_dict())
    learner.add(make_rollouts(learner, 8))
    metrics = learner.update()
    rewards = torch.tensor([r.reward for r in learner.store.rollouts()])
    assert metrics["adv_var_calibrated"] == pytest.approx(rewards.var(unbiased=False).item())
    assert all(torch.equal(v, learner.drcm.state_dict()[k]) for k, v in drcm_before.items())
