"""benchmarks/policy_spectrum.py: coarse maps capture all of a smooth mean and g^2/(HW) of
white noise; the shared fraction is 1 for identical means; the script reads a policy file."""

import torch

from find_ray.algo.policy import PerPromptPolicy
from find_ray.experiments import policy_spectrum as spectrum


def test_coarse_fractions_of_constant_and_white_noise_means():
    constant = torch.ones(2, 3, 32, 32)
    assert torch.allclose(spectrum.low_resolution_fraction(constant, 1), torch.ones(2))
    white = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    frac = spectrum.low_resolution_fraction(white, 8).mean().item()
    assert abs(frac - 64 / 1024) < 0.02
    assert torch.allclose(spectrum.shared_fraction(constant), torch.ones(2))
    assert spectrum.shared_fraction(white).mean() < 0.5


def test_script_reads_a_policy_file(tmp_path):
    policy = PerPromptPolicy(3, (3, 16, 16))
    with torch.no_grad():
        policy.mu.normal_()
    path = tmp_path / "policy.safetensors"
    policy.save(path)
    spectrum.main([str(path)])
    table = (tmp_path / "spectrum.md").read_text()
    assert "| 8x8 |" in table and "shared by all 3 prompts" in table
