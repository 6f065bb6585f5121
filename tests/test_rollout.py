"""The rollout worker under `policy.shell: project`: it stores the Gaussian action (whose
log-prob makes the ratio) and hands the denoiser that action projected onto the shell."""

import math

import torch

from find_ray.algo.gaussian import project_to_shell
from find_ray.algo.noise import normals_by_index
from find_ray.algo.policy import PerPromptPolicy
from find_ray.algo.rollout import RolloutWorker
from find_ray.backends.simulated import SimulatedBackend


class Recording(SimulatedBackend):
    """The simulated backend, keeping every z_T it is given."""

    def __init__(self):
        super().__init__()
        self.latents: list[torch.Tensor] = []

    def generate(self, z_T, prompts, seed=0, **sampler):
        self.latents.append(z_T.clone())
        return super().generate(z_T, prompts, seed, **sampler)


def test_rollouts_store_the_action_and_the_denoiser_gets_it_on_the_shell():
    backend = Recording()
    worker = RolloutWorker(backend, ["a", "b"], batch_size=3, seed=5)
    policy = PerPromptPolicy(2, backend.latent_shape, shell="project")
    with torch.no_grad():
        policy.mu.fill_(0.8)  # ||mu + eps||^2 / d ~ 1.64: far off the shell
    worker.set_weights(policy.state_dict(), version=3)
    ids, rollout_ids = [0, 1, 1, 0], [10, 11, 12, 13]
    rollouts, _ = worker.rollout(ids, rollout_ids)
    eps = normals_by_index(backend.latent_shape, rollout_ids, seed=5)
    actions = policy.reparameterise(torch.tensor(ids), eps)
    torch.testing.assert_close(torch.stack([r.z for r in rollouts]), actions)
    logp = policy.log_prob(actions, torch.tensor(ids))
    torch.testing.assert_close(torch.tensor([r.behaviour_logp for r in rollouts]), logp)
    seen = torch.cat(backend.latents)  # two batches of at most 3
    torch.testing.assert_close(seen, project_to_shell(actions))
    assert seen.pow(2).flatten(1).mean(1).sub(1).abs().max() < 1e-5
    assert actions.pow(2).flatten(1).mean(1).min() > 1.3
    assert all(r.policy_version == 3 and math.isnan(r.reward) for r in rollouts)
