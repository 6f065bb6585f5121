"""Where a trained policy's mean lives: coarse structure, or a white-noise-like pattern.

For each prompt's mu (C, H, W) it measures the fraction of its energy (sum of squares) that a
g x g map captures (average-pooled to g x g, then upsampled back), for g = 1, 2, 4, 8, 16,
beside the fraction white noise would give (g^2 / (H W)), and the fraction shared by all
prompts (the energy of the mean over prompts). It tells whether an amortized policy with a
low-resolution map can express what per-prompt FIND learns, and whether anything is shared.

    python benchmarks/policy_spectrum.py runs/alignment/per-prompt-alpha1/seed0/policy.safetensors

Prints a markdown table (and writes it next to the policy file as spectrum.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from find_ray.algo.policy_files import load_policy
from find_ray.eval.report import md_table

GRIDS = (1, 2, 4, 8, 16)


def energy(x: Tensor) -> Tensor:
    """(P,) sum of squares of each row of x (P, ...)."""
    return x.square().flatten(1).sum(1)


def low_resolution_fraction(mu: Tensor, grid: int) -> Tensor:
    """(P,) fraction of each mu's energy (P, C, H, W) that a grid x grid map captures."""
    coarse = F.interpolate(F.adaptive_avg_pool2d(mu, grid), size=mu.shape[-2:], mode="nearest")
    return energy(coarse) / energy(mu)


def shared_fraction(mu: Tensor) -> Tensor:
    """(P,) fraction of each mu's energy in the mean over prompts."""
    return energy(mu.mean(0, keepdim=True).expand_as(mu)) / energy(mu)


def spectrum_table(mu: Tensor) -> str:
    height, width = mu.shape[-2:]
    fractions = [low_resolution_fraction(mu, g).mean().item() for g in GRIDS]
    rows = [
        [f"{g}x{g}", f"{frac:.3f}", f"{g * g / (height * width):.4f}"]
        for g, frac in zip(GRIDS, fractions, strict=True)
    ]
    shared = shared_fraction(mu).mean().item()
    rows.append([f"shared by all {mu.shape[0]} prompts", f"{shared:.3f}", f"{1 / mu.shape[0]:.3f}"])
    header = ["map", "energy fraction of mu (mean over prompts)", "white noise"]
    rms = (energy(mu) / mu[0].numel()).sqrt()
    lines = [*md_table(header, rows), ""]
    lines += [f"RMS of mu per element: {rms.min():.2f} to {rms.max():.2f} over prompts.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a policy.safetensors (per-prompt or amortized)")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy)
    with torch.no_grad():
        mu, _ = policy.mean_std(torch.arange(policy.num_prompts))
    mu = mu.flatten(1, -3)  # frames (video) fold into channels
    table = f"# Spectrum of mu: `{args.policy}`\n\n" + spectrum_table(mu)
    print(table)
    (Path(args.policy).parent / "spectrum.md").write_text(table)


if __name__ == "__main__":
    main()
