"""Noise policy files and wire state: rebuild a policy of any kind from its tensors."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from find_ray.algo.amortized import AmortizedNoisePolicy
from find_ray.algo.policy import NoisePolicy, PerPromptPolicy

# a file's `kind` metadata -> its class ("gaussian": per-prompt files of earlier versions)
KINDS: dict[str, type[NoisePolicy]] = {
    PerPromptPolicy.kind: PerPromptPolicy,
    "gaussian": PerPromptPolicy,
    AmortizedNoisePolicy.kind: AmortizedNoisePolicy,
}


def policy_from_state(state: dict[str, Tensor]) -> NoisePolicy:
    """A per-prompt or amortized policy rebuilt from its state dict (weights travel this way)."""
    return (AmortizedNoisePolicy if "embeddings" in state else PerPromptPolicy).from_state(state)


def read_policy_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a policy file (kind, shape, num_prompts; version, prompts if saved)."""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_policy(path: str | Path) -> NoisePolicy:
    """The policy in a file written by ``NoisePolicy.save``, whichever its kind."""
    kind = read_policy_metadata(path).get("kind")
    if kind not in KINDS:
        raise ValueError(f"{path}: unknown policy kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind].from_state(load_file(str(path)))
