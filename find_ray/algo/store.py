"""Historical rollout store: bounded capacity, bounded policy lag, counted drops."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor


@dataclass
class Rollout:
    """One scored action: noise z drawn by policy ``policy_version`` for ``prompt``. Rollouts
    are keyed by the prompt's text: its row in a policy's table is the learner's business."""

    rollout_id: int
    prompt: str
    z: Tensor  # the initial noise z_T, (*latent_shape)
    behaviour_logp: float  # log pi_behaviour(z | c), as used in the ratio
    policy_version: int
    reward: float


class RolloutBatch(NamedTuple):
    """Rollouts stacked along a leading batch dim, each prompt as its row in the learner's
    prompt table."""

    rollout_id: Tensor  # (B,) long
    prompt_row: Tensor  # (B,) long: the row of each rollout's prompt
    z: Tensor  # (B, *latent_shape)
    behaviour_logp: Tensor  # (B,) z.dtype
    policy_version: Tensor  # (B,) long
    reward: Tensor  # (B,) z.dtype


SCALAR_FIELDS = ("rollout_id", "prompt", "behaviour_logp", "policy_version", "reward")


def prompt_table(prompts: Sequence[str]) -> dict[str, int]:
    """Each prompt's row: the key from a rollout's prompt text to a policy's parameters."""
    table = {prompt: row for row, prompt in enumerate(prompts)}
    if len(table) != len(prompts):
        twice = sorted({p for p in prompts if prompts.count(p) > 1})
        raise ValueError(f"prompts must be distinct (rollouts are keyed by text): {twice}")
    return table


def stack_rollouts(rollouts: list[Rollout], rows: Mapping[str, int]) -> RolloutBatch:
    """Stack a non-empty list of rollouts into a RolloutBatch; `rows` maps each prompt to its
    row (`prompt_table`)."""
    unknown = sorted({r.prompt for r in rollouts} - rows.keys())
    if unknown:
        raise KeyError(f"rollouts of prompts the learner does not hold: {unknown}")
    z = torch.stack([r.z for r in rollouts])

    def col(name: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor([getattr(r, name) for r in rollouts], dtype=dtype)

    return RolloutBatch(
        rollout_id=col("rollout_id", torch.long),
        prompt_row=torch.tensor([rows[r.prompt] for r in rollouts], dtype=torch.long),
        z=z,
        behaviour_logp=col("behaviour_logp", z.dtype),
        policy_version=col("policy_version", torch.long),
        reward=col("reward", z.dtype),
    )


class PackedRollouts(NamedTuple):
    """Rollouts as numpy columns: how they travel between actors. Ray serialises a few numpy
    arrays ~10x cheaper than a list of small objects holding tensors."""

    rollout_id: np.ndarray  # (B,) int64
    prompt: np.ndarray  # (B,) str
    z: np.ndarray  # (B, *latent_shape)
    behaviour_logp: np.ndarray  # (B,) float64
    policy_version: np.ndarray  # (B,) int64
    reward: np.ndarray  # (B,) float64


WIRE = (
    ("rollout_id", np.int64),
    ("prompt", np.str_),
    ("behaviour_logp", np.float64),
    ("policy_version", np.int64),
    ("reward", np.float64),
)


def pack_rollouts(rollouts: list[Rollout], latent_shape: tuple[int, ...]) -> PackedRollouts:
    """The wire form of `rollouts` (`latent_shape` gives an empty list its z shape)."""
    z = (
        torch.stack([r.z for r in rollouts]).numpy()
        if rollouts
        else np.zeros((0, *latent_shape), np.float32)
    )
    cols = {name: np.array([getattr(r, name) for r in rollouts], dtype) for name, dtype in WIRE}
    return PackedRollouts(z=z, **cols)


def unpack_rollouts(packed: PackedRollouts) -> list[Rollout]:
    """Rollouts back from their wire form (one copy of z; received arrays are read-only)."""
    z = torch.tensor(packed.z)
    return [
        Rollout(int(rid), str(prompt), z[n], float(logp), int(version), float(reward))
        for n, (rid, prompt, logp, version, reward) in enumerate(
            zip(
                packed.rollout_id,
                packed.prompt,
                packed.behaviour_logp,
                packed.policy_version,
                packed.reward,
                strict=True,
            )
        )
    ]


class RolloutStore:
    """FIFO store of scored rollouts for reuse over several learner steps.

    A rollout is dropped (counted under ``drops[reason]``) when its policy lag
    ``current_version - policy_version`` exceeds ``max_policy_lag`` ("stale"), or when the store
    is over ``capacity`` (oldest first, "evicted"). Rollout ids are unique forever: adding an id
    that was ever seen raises ``ValueError``.
    """

    def __init__(self, capacity: int, max_policy_lag: int) -> None:
        if capacity < 1 or max_policy_lag < 0:
            raise ValueError(
                f"need capacity >= 1 and max_policy_lag >= 0: {capacity}, {max_policy_lag}"
            )
        self.capacity = capacity
        self.max_policy_lag = max_policy_lag
        self._records: deque[Rollout] = deque()
        self._seen: set[int] = set()
        self.drops: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._records)

    def _is_stale(self, rollout: Rollout, current_version: int) -> bool:
        return current_version - rollout.policy_version > self.max_policy_lag

    def add(self, rollout: Rollout, current_version: int) -> bool:
        """Store a rollout; False if it was dropped as stale. Evicts the oldest when full."""
        if rollout.rollout_id in self._seen:
            raise ValueError(f"duplicate rollout_id {rollout.rollout_id}")
        self._seen.add(rollout.rollout_id)
        if self._is_stale(rollout, current_version):
            self.drops["stale"] += 1
            return False
        self._records.append(rollout)
        while len(self._records) > self.capacity:
            self._records.popleft()
            self.drops["evicted"] += 1
        return True

    def evict_stale(self, current_version: int) -> int:
        """Drop held rollouts whose lag exceeds the bound; returns how many were dropped."""
        kept = deque(r for r in self._records if not self._is_stale(r, current_version))
        dropped = len(self._records) - len(kept)
        self._records = kept
        self.drops["stale"] += dropped
        return dropped

    def rollouts(self) -> list[Rollout]:
        """The held rollouts, oldest first."""
        return list(self._records)

    def minibatches(
        self,
        batch_size: int,
        rows: Mapping[str, int],
        epochs: int = 1,
        generator: torch.Generator | None = None,
    ) -> Iterator[RolloutBatch]:
        """Each epoch yields every held rollout exactly once, in random order (last batch short);
        `rows` maps prompts to rows as in `stack_rollouts`."""
        held = self.rollouts()
        for _ in range(epochs):
            order = torch.randperm(len(held), generator=generator).tolist()
            for start in range(0, len(order), batch_size):
                yield stack_rollouts([held[i] for i in order[start : start + batch_size]], rows)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore the store exactly (records, seen ids, drop counters)."""
        return {
            "capacity": self.capacity,
            "max_policy_lag": self.max_policy_lag,
            # z stacked into one tensor (compact: no record drags a shared storage along),
            # the scalars as Python numbers (exact)
            "records": {
                **{f: [getattr(r, f) for r in self._records] for f in SCALAR_FIELDS},
                "z": torch.stack([r.z for r in self._records]) if self._records else None,
            },
            "seen_ids": sorted(self._seen),
            "drops": dict(self.drops),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``."""
        self.capacity = int(state["capacity"])
        self.max_policy_lag = int(state["max_policy_lag"])
        records = state["records"]
        zs = records["z"] if records["z"] is not None else []
        self._records = deque(
            Rollout(**{f: records[f][i] for f in SCALAR_FIELDS}, z=z.clone())
            for i, z in enumerate(zs)
        )
        self._seen = set(state["seen_ids"])
        self.drops = Counter(state["drops"])
