"""Which actors of a pool may get work (plain Python; the driver keeps one per actor kind).

A failed call marks its actor down: Ray is restarting it (or it is gone), and work sent to it
now would fail too. A down actor gets no work until a readiness probe answers (the driver sends
the probes `probes_due` names, one at a time, with exponential back-off between failed ones), so
a lost actor or node costs only the work that was in flight on it. An actor that fails `limit`
times in a row (its restarts used up, or an error that repeats) is retired; when every actor of
the pool is retired the run cannot go on, and `failed` raises.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from find_ray.errors import FindRayError


@dataclass
class Down:
    """A down actor: when it may be probed next, how many probes failed, one in flight?"""

    probe_at: float
    failed_probes: int = 0
    probing: bool = False


class ActorHealth:
    def __init__(
        self,
        kind: str,
        count: int,
        limit: int,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind, self.count, self.limit = kind, count, limit
        self.backoff_s, self.max_backoff_s, self.clock = backoff_s, max_backoff_s, clock
        self.in_a_row: Counter[int] = Counter()
        self.down: dict[int, Down] = {}
        self.retired: set[int] = set()

    def available(self) -> list[int]:
        """Actors that may get work now."""
        return [i for i in range(self.count) if i not in self.retired and i not in self.down]

    def resting(self) -> bool:
        """Some actor is down but not retired (work that waits for it will be taken later)."""
        return any(i not in self.retired for i in self.down)

    def ok(self, i: int) -> None:
        self.in_a_row[i] = 0

    def failed(self, i: int, error: Exception, counts: bool = True) -> None:
        """Records a failed work call; `counts=False` for "temporarily unavailable".

        Calls that fail while the actor is down failed with the same death: they count once.
        """
        if i in self.down or i in self.retired:
            return
        self.down[i] = Down(probe_at=self.clock())
        if counts:
            self._count(i, error)

    def probes_due(self) -> list[int]:
        """Down actors whose next readiness probe is due; each is marked as being probed."""
        now, due = self.clock(), []
        for i, down in self.down.items():
            if i not in self.retired and not down.probing and down.probe_at <= now:
                down.probing = True
                due.append(i)
        return due

    def forget_probes(self) -> None:
        """The probes in flight were dropped: each down actor is probed again."""
        for down in self.down.values():
            down.probing = False

    def probe_ok(self, i: int) -> None:
        """The actor answered its probe: it gets work again."""
        self.down.pop(i, None)

    def probe_failed(self, i: int, error: Exception, counts: bool) -> None:
        """A probe failed: probe again after a longer wait; a death (not a restart) counts."""
        down = self.down.get(i)
        if down is None:
            return
        down.probing = False
        down.failed_probes += 1
        wait = self.backoff_s * 2 ** (down.failed_probes - 1)
        down.probe_at = self.clock() + min(wait, self.max_backoff_s)
        if counts and i not in self.retired:
            self._count(i, error)

    def _count(self, i: int, error: Exception) -> None:
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
