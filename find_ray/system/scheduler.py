"""Which prompt each rollout slot draws and when it may be issued (plain Python).

A run is `iterations` x `per_update` slots; the slots of iteration i draw the prompts of the
in-process loop's plan for i, and are consumed by learner update i + 1. Issuing them with
weights of version v only while i < v + iterations_ahead bounds their policy lag at the
learner by iterations_ahead - 1 (the store's max policy lag; sync mode: 0, one iteration at a
time); it is also the back-pressure on a learner slower than the rollouts. The prompts of
lost work are issued again first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class PromptScheduler:
    """Slots issued, prompts to issue again, slots finished for good."""

    def __init__(
        self, plan: Callable[[int], list[int]], iterations: int, iterations_ahead: int
    ) -> None:
        self.plan = plan  # iteration -> the prompt of each of its slots
        self._planned: tuple[int, list[int]] = (-1, [])
        self.per_update = len(self.prompts_of(0))
        self.total = iterations * self.per_update
        self.iterations_ahead = iterations_ahead
        self.next_slot = 0  # slots issued so far, out of `total`
        self.requeued: deque[int] = deque()  # prompts of lost work
        self.finished = 0  # slots scored or dropped for good

    def prompts_of(self, iteration: int) -> list[int]:
        """The plan of one iteration (kept for the iteration being issued)."""
        if self._planned[0] != iteration:
            self._planned = (iteration, self.plan(iteration))
        return self._planned[1]

    def take(self, n: int, version: int) -> list[int]:
        """Up to n prompts to roll out with weights of `version`: lost work first, then the
        next slots inside the lag bound."""
        out = [self.requeued.popleft() for _ in range(min(n, len(self.requeued)))]
        limit = min(self.total, (version + self.iterations_ahead) * self.per_update)
        while len(out) < n and self.next_slot < limit:
            iteration, index = divmod(self.next_slot, self.per_update)
            out.append(self.prompts_of(iteration)[index])
            self.next_slot += 1
        return out

    def requeue(self, prompts: list[int]) -> None:
        """Prompts whose rollouts were lost: issued again, under new ids, before new slots."""
        self.requeued.extend(prompts)

    def finish(self, n: int) -> None:
        """n slots ended for good (scored, or dropped for a reason that is not retried)."""
        self.finished += n

    def update_due(self, updates: int) -> bool:
        """Whether every slot that update `updates + 1` consumes has finished."""
        return self.finished >= (updates + 1) * self.per_update

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_slot": self.next_slot,
            "finished": self.finished,
            "requeued": [*self.requeued],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_slot, self.finished = int(state["next_slot"]), int(state["finished"])
        self.requeued = deque(int(p) for p in state["requeued"])
