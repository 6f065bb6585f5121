"""Which actors of a pool may get work (plain Python; the driver keeps one per actor kind).

A failed call puts its actor on a short cooldown (Ray is restarting it: calls to a restarting
actor fail at once, and resubmitting straight away would spin). An actor that fails `limit`
times in a row (its restarts used up, or an error that repeats) is retired; when every actor of
the pool is retired the run cannot go on, and `failed` raises.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from find_ray.errors import FindRayError


class ActorHealth:
    def __init__(
        self,
        kind: str,
        count: int,
        limit: int,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind, self.count, self.limit = kind, count, limit
        self.cooldown_s, self.clock = cooldown_s, clock
        self.in_a_row: Counter[int] = Counter()
        self.resting_until: dict[int, float] = {}
        self.retired: set[int] = set()

    def available(self) -> list[int]:
        """Actors that may get work now."""
        now = self.clock()
        return [
            i
            for i in range(self.count)
            if i not in self.retired and self.resting_until.get(i, 0.0) <= now
        ]

    def resting(self) -> bool:
        """Some actor is cooling down (so work that waits for one will be taken later)."""
        now = self.clock()
        return any(t > now for i, t in self.resting_until.items() if i not in self.retired)

    def ok(self, i: int) -> None:
        self.in_a_row[i] = 0

    def failed(self, i: int, error: Exception, counts: bool = True) -> None:
        """Records a failed call; `counts=False` for "temporarily unavailable" (restarting).

        The calls that fail while the actor rests failed with the same death: they count once.
        """
        now = self.clock()
        already_resting = self.resting_until.get(i, 0.0) > now
        self.resting_until[i] = now + self.cooldown_s
        if not counts or already_resting or i in self.retired:
            return
        self.in_a_row[i] += 1
        if self.in_a_row[i] < self.limit:
            return
        self.retired.add(i)
        if len(self.retired) == self.count:
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise FindRayError(
                f"every {self.kind} actor failed {self.limit} calls in a row; "
                f"last error: {first_line}"
            )
