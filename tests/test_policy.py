"""Tests of find_ray.algo.policy: Gaussian log-densities, KL, sampling, safetensors round-trip."""

import math

import pytest
import torch
from safetensors.torch import save_file
from torch.distributions import Normal

from find_ray.algo.gaussian import diagonal_gaussian_kl, gaussian_log_prob, initial_log_prob
from find_ray.algo.policy import PerPromptPolicy
from find_ray.algo.policy_files import load_policy, policy_from_state

SHAPE = (2, 3, 3)


def _policy_with_params(seed: int = 0) -> PerPromptPolicy:
    g = torch.Generator().manual_seed(seed)
    policy = PerPromptPolicy(num_prompts=3, shape=SHAPE)
    with torch.no_grad():
        policy.mu.copy_(torch.randn(policy.mu.shape, generator=g))
        policy.log_sigma.copy_(0.3 * torch.randn(policy.log_sigma.shape, generator=g))
    return policy


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_matches_torch_normal(reduction):
    policy = _policy_with_params()
    ids = torch.tensor([2, 0, 2, 1])
    z = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    mu, sigma = policy.mean_std(ids)
    elem = Normal(mu, sigma).log_prob(z).flatten(1)
    expected = elem.mean(1) if reduction == "mean" else elem.sum(1)
    assert torch.allclose(policy.log_prob(z, ids, reduction), expected, atol=1e-5)
    assert torch.allclose(gaussian_log_prob(z, mu, sigma, reduction), expected, atol=1e-5)


def test_bad_reduction_raises():
    with pytest.raises(ValueError):
        initial_log_prob(torch.zeros(1, 2), "max")


def test_initial_policy_is_standard_normal():
    policy = PerPromptPolicy(num_prompts=2, shape=SHAPE)
    z = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([0, 1, 1, 0, 1])
    expected = Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(policy.log_prob(z, ids, "sum"), expected, atol=1e-5)
    assert torch.allclose(initial_log_prob(z, "sum"), expected, atol=1e-5)
    assert torch.allclose(policy.log_prob(z, ids), initial_log_prob(z), atol=1e-6)
    # hand value: z = 0 gives -0.5 log(2 pi) per element
    assert initial_log_prob(torch.zeros(1, 4)).item() == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_sigma_stays_positive():
    policy = PerPromptPolicy(num_prompts=1, shape=(4,))
    with torch.no_grad():
        policy.log_sigma.fill_(-1000.0)
    _, sigma = policy.mean_std(torch.tensor([0]))
    assert (sigma > 0).all() and torch.allclose(sigma, torch.full_like(sigma, 1e-4))
    assert torch.isfinite(policy.log_prob(torch.zeros(1, 4), torch.tensor([0]))).all()


def test_kl_zero_at_init_and_closed_form():
    policy = PerPromptPolicy(num_prompts=2, shape=(2,))
    ids = torch.tensor([0, 1])
    assert torch.allclose(policy.kl_to_standard_normal(ids), torch.zeros(2))
    with torch.no_grad():
        policy.mu[1] = torch.tensor([1.0, 0.0])
        policy.log_sigma[1] = torch.tensor([0.0, math.log(2.0)])
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1) - log s
    # element 0: m=1, s=1 -> 0.5;  element 1: m=0, s=2 -> 1.5 - log 2
    per_elem = [0.5, 1.5 - math.log(2.0)]
    kl_mean = policy.kl_to_standard_normal(ids)
    assert kl_mean[0].item() == pytest.approx(0.0, abs=1e-7)
    assert kl_mean[1].item() == pytest.approx(sum(per_elem) / 2, rel=1e-6)
    assert policy.kl_to_standard_normal(ids, "sum")[1].item() == pytest.approx(sum(per_elem))
    # regulariser: mean over prompts 0 and 1 of mu^2 + (sigma - 1)^2 -> (0 + 0 + 1 + 1) / 4
    assert policy.regulariser(ids).item() == pytest.approx(0.5)


def test_save_load_roundtrip(tmp_path):
    policy = _policy_with_params(seed=3)
    path = tmp_path / "policy.safetensors"
    policy.save(path)
    loaded = load_policy(path)
    assert loaded.shape == SHAPE and loaded.num_prompts == 3
    assert torch.equal(loaded.mu, policy.mu) and torch.equal(loaded.log_sigma, policy.log_sigma)


def test_per_prompt_files_of_the_earlier_kind_name_load(tmp_path):
    """Per-prompt files written as kind "gaussian" (before the class was renamed) still load."""
    policy = _policy_with_params(seed=4)
    path = tmp_path / "policy.safetensors"
    tensors = {k: v.contiguous() for k, v in policy.state_dict().items()}
    save_file(tensors, str(path), metadata={"kind": "gaussian"})
    loaded = load_policy(path)
    assert isinstance(loaded, PerPromptPolicy) and torch.equal(loaded.mu, policy.mu)
    save_file(tensors, str(path), metadata={"kind": "banana"})
    with pytest.raises(ValueError, match="unknown policy kind 'banana'"):
        load_policy(path)


def test_reparameterise_is_mu_plus_sigma_eps():
    policy = _policy_with_params(seed=5)
    ids, eps = torch.tensor([2, 0]), torch.randn(2, *SHAPE)
    mu, sigma = policy.mean_std(ids)
    assert torch.equal(policy.reparameterise(ids, eps), mu + sigma * eps)


def test_sampling_reproducible_with_right_moments():
    policy = PerPromptPolicy(num_prompts=2, shape=(2,))
    with torch.no_grad():
        policy.mu[1] = torch.tensor([3.0, -1.0])
        policy.log_sigma[1] = torch.tensor([math.log(0.5), math.log(2.0)])
    ids = torch.ones(20000, dtype=torch.long)
    z1 = policy.sample(ids, torch.Generator().manual_seed(7))
    z2 = policy.sample(ids, torch.Generator().manual_seed(7))
    assert z1.shape == (20000, 2) and not z1.requires_grad
    assert torch.equal(z1, z2)
    assert torch.allclose(z1.mean(0), torch.tensor([3.0, -1.0]), atol=0.05)
    assert torch.allclose(z1.std(0), torch.tensor([0.5, 2.0]), rtol=0.03)
    z0 = policy.sample(torch.zeros(3, dtype=torch.long))
    assert z0.shape == (3, 2)


def test_diagonal_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    mu0, mu1 = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    s0, s1 = torch.rand(4, 2, 3, 3, generator=g) + 0.3, torch.rand(4, 2, 3, 3, generator=g) + 0.3
    expected = torch.distributions.kl_divergence(Normal(mu0, s0), Normal(mu1, s1)).flatten(1)
    assert torch.allclose(diagonal_gaussian_kl(mu0, s0, mu1, s1), expected.sum(1), atol=1e-5)
    assert torch.allclose(diagonal_gaussian_kl(mu0, s0, mu1, s1, "mean"), expected.mean(1))


def test_bounded_sigma_starts_at_one_and_never_leaves_its_range():
    policy = PerPromptPolicy(3, (2, 2), sigma_range=(0.5, 2.0))
    ids = torch.arange(3)
    assert torch.equal(policy.mean_std(ids)[1], torch.ones(3, 2, 2))  # pi_0 exactly
    assert torch.allclose(policy.log_sigma_slope(), torch.ones(3, 2, 2))  # identity near 0
    with torch.no_grad():
        policy.log_sigma[0] = 1e4
        policy.log_sigma[1] = -1e4
        policy.log_sigma[2] = 0.01
    sigma = policy.mean_std(ids)[1]
    assert torch.allclose(sigma[0], torch.full((2, 2), 2.0))
    assert torch.allclose(sigma[1], torch.full((2, 2), 0.5))
    assert torch.allclose(sigma[2], torch.full((2, 2), math.exp(0.01)), rtol=1e-4)
    assert torch.isfinite(policy.log_prob(torch.randn(3, 2, 2), ids)).all()


def test_bounds_travel_with_the_weights_and_old_files_load_unbounded(tmp_path):
    bounded = PerPromptPolicy(2, (3,), sigma_range=(0.25, 4.0))
    plain = PerPromptPolicy(2, (3,))
    plain.load_state_dict(bounded.state_dict())  # what a rollout actor does with the weights
    assert plain.bounds() == (0.25, 4.0)
    legacy = {k: v for k, v in PerPromptPolicy(2, (3,)).state_dict().items() if k != "sigma_range"}
    old = PerPromptPolicy(2, (3,), sigma_range=(0.5, 2.0))
    old.load_state_dict(legacy)
    assert old.bounds()[1] == math.inf


def _shelled(shell: str, seed: int = 6) -> PerPromptPolicy:
    policy = PerPromptPolicy(2, (3, 8, 8), (0.5, 2.0), shell)
    with torch.no_grad():
        policy.mu.copy_(
            0.7 * torch.randn(policy.mu.shape, generator=torch.Generator().manual_seed(seed))
        )
    return policy


@pytest.mark.parametrize("shell", ["project", "tied"])
def test_shell_policies_have_the_exact_gaussian_log_prob(shell):
    policy = _shelled(shell)
    ids = torch.tensor([0, 1, 1])
    y = policy.sample(ids, torch.Generator().manual_seed(1))
    mu, sigma = policy.mean_std(ids)
    expected = torch.distributions.Normal(mu, sigma).log_prob(y).flatten(1)
    torch.testing.assert_close(policy.log_prob(y, ids, "sum"), expected.sum(1))
    torch.testing.assert_close(policy.log_prob(y, ids), expected.mean(1))
    if shell == "tied":  # sigma = sqrt(1 - ||mu||^2 / d), one value per prompt
        d = math.prod(policy.shape)
        want = (1 - policy.mu.pow(2).flatten(1).sum(1) / d).sqrt()
        torch.testing.assert_close(sigma.flatten(1)[:, 0], want[ids])
        assert (sigma == sigma.flatten(1)[:, :1].view(-1, 1, 1, 1)).all()


def test_projected_latents_sit_on_the_shell_and_tied_ones_on_average():
    ids = torch.zeros(4000, dtype=torch.long)
    eps = torch.randn(4000, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    d = 3 * 8 * 8
    plain = _shelled("none").noise(ids, eps).pow(2).flatten(1).mean(1)
    assert plain.mean() > 1.3  # mu of 0.7 per element moves ||z||^2 / d to about 1.49
    projected = _shelled("project").noise(ids, eps).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(projected, torch.ones(4000))  # on the shell, every sample
    tied = _shelled("tied").noise(ids, eps).pow(2).flatten(1).mean(1)
    # E ||z||^2 / d = 1; the Monte-Carlo error of the mean is about sd / sqrt(n)
    assert abs(tied.mean().item() - 1) < 4 * tied.std().item() / math.sqrt(4000)
    assert tied.std().item() < 1.5 * math.sqrt(2 / d)  # and close to it, like N(0, I)


def test_a_projected_action_is_the_denoisers_input_only():
    """The rollout stores the action (its log-prob makes the ratio); the latent is derived."""
    policy = _shelled("project")
    ids, eps = torch.tensor([1]), torch.randn(1, 3, 8, 8)
    action = policy.reparameterise(ids, eps)
    mu, sigma = policy.mean_std(ids)
    torch.testing.assert_close(action, mu + sigma * eps)
    latent = policy.latent(action)
    torch.testing.assert_close(latent, action * math.sqrt(192) / action.norm())


@pytest.mark.parametrize("shell", ["project", "tied"])
def test_the_shell_setting_travels_with_the_weights(tmp_path, shell):
    policy = _shelled(shell)
    policy.save(tmp_path / "p.safetensors")
    loaded = load_policy(tmp_path / "p.safetensors")
    assert loaded.shell == shell and policy_from_state(policy.state_dict()).shell == shell
    eps = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        loaded.noise(torch.arange(2), eps), policy.noise(torch.arange(2), eps)
    )
