"""`reward.noise_std`: the sweep's noisy reward adds seeded Gaussian noise to the score only."""

import torch

from find_ray.config import load_config
from find_ray.rewards import make_reward


def test_noisy_reward_adds_gaussian_noise_and_keeps_the_clean_score():
    images = torch.rand(4000, 3, 4, 4)
    prompts = ["a"] * len(images)
    clean, _ = make_reward(load_config(None, ["reward.name=brightness"]).reward)(images, prompts)
    noisy_cfg = load_config(None, ["reward.name=brightness", "reward.noise_std=0.3"]).reward
    noisy, info = make_reward(noisy_cfg)(images, prompts)
    torch.testing.assert_close(info["clean_score"], clean)
    noise = noisy - clean
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 0.3) < 0.02
    again, _ = make_reward(noisy_cfg)(images, prompts)
    torch.testing.assert_close(again, noisy)  # seeded by reward.fault_seed: reproducible
