"""Exact rollout accounting: every id is in flight, stored, or dropped with a reason, once.

Plain Python; the Ray driver keeps one ledger and checkpoints it with the learner.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Drops whose work is done again under a new id (the prompt goes back in the queue).
RESUBMITTED = ("actor_died", "interrupted")


class RolloutLedger:
    """Issues rollout ids and records how each one ended.

    A transition from anything but "in flight" raises ValueError: an id stored twice, or
    stored after it was dropped, is a bug the ledger refuses to hide.
    """

    def __init__(self) -> None:
        self.next_id = 0
        self.in_flight: dict[int, int] = {}  # rollout id -> prompt id
        self.stored: set[int] = set()
        self.dropped: dict[int, str] = {}  # rollout id -> reason

    def issue(self, prompt_ids: list[int]) -> list[int]:
        """New ids for rollouts of these prompts, now in flight."""
        ids = list(range(self.next_id, self.next_id + len(prompt_ids)))
        self.next_id += len(prompt_ids)
        self.in_flight.update(zip(ids, prompt_ids, strict=True))
        return ids

    def _finish(self, rollout_id: int) -> int:
        if rollout_id not in self.in_flight:
            state = "stored" if rollout_id in self.stored else self.dropped.get(rollout_id)
            raise ValueError(f"rollout {rollout_id} is not in flight (it is {state or 'unknown'})")
        return self.in_flight.pop(rollout_id)

    def store(self, rollout_ids: list[int]) -> None:
        for rid in rollout_ids:
            self._finish(rid)
            self.stored.add(rid)

    def drop(self, rollout_ids: list[int], reason: str) -> list[int]:
        """Marks the ids dropped; returns their prompt ids (to resubmit when the work was lost)."""
        prompts = [self._finish(rid) for rid in rollout_ids]
        self.dropped.update(dict.fromkeys(rollout_ids, reason))
        return prompts

    def interrupt(self) -> list[int]:
        """On resume: what was in flight when the driver stopped is dropped as "interrupted"."""
        return self.drop(sorted(self.in_flight), "interrupted")

    @property
    def done(self) -> int:
        """Rollouts ended for good: stored, or dropped for a reason that is not resubmitted."""
        return len(self.stored) + sum(r not in RESUBMITTED for r in self.dropped.values())

    def totals(self) -> dict[str, int]:
        """issued = stored + dropped + in_flight, with drops by reason."""
        by_reason = Counter(self.dropped.values())
        totals = {
            "issued": self.next_id,
            "stored": len(self.stored),
            "dropped": len(self.dropped),
            "in_flight": len(self.in_flight),
            **{f"dropped/{reason}": n for reason, n in sorted(by_reason.items())},
        }
        if totals["issued"] != totals["stored"] + totals["dropped"] + totals["in_flight"]:
            raise AssertionError(f"rollout accounting does not add up: {totals}")
        return totals

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "in_flight": sorted(self.in_flight.items()),
            "stored": sorted(self.stored),
            "dropped": sorted(self.dropped.items()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        self.in_flight = {int(k): int(v) for k, v in state["in_flight"]}
        self.stored = {int(k) for k in state["stored"]}
        self.dropped = {int(k): str(v) for k, v in state["dropped"]}
