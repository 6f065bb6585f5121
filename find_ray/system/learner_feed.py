"""The learner's side of the driver loop: scored rollouts go to the learner as adds, in id
order, and an update is asked for once every slot it consumes has finished, one at a time."""

from __future__ import annotations

from typing import Any

import ray

from find_ray.errors import FindRayError
from find_ray.system.flights import AddFlight, Flight, ScoredBatch, UpdateFlight
from find_ray.system.ledger import RolloutLedger
from find_ray.system.pools import LOST
from find_ray.system.scheduler import PromptScheduler


class LearnerLost(FindRayError):
    """The learner actor died (killed, or its node lost)."""


class LearnerFeed:
    def __init__(
        self,
        learner: Any,
        ledger: RolloutLedger,
        scheduler: PromptScheduler,
        pending: dict[ray.ObjectRef, Flight],
        iterations: int,
        broadcast_interval: int,
        resume_hint: str,
    ) -> None:
        self.learner, self.ledger, self.scheduler, self.pending = (
            learner,
            ledger,
            scheduler,
            pending,
        )
        self.iterations, self.broadcast_interval = iterations, broadcast_interval
        self.resume_hint = resume_hint  # how to continue when the learner dies
        self.scored: list[ScoredBatch] = []  # waiting for the next add (sync: whole iterations)
        self.adds_in_flight = 0
        self.updates = 0  # updates asked for

    def replace(self, learner: Any, updates: int) -> None:
        """A new learner at version `updates`: what was waiting for the old one is forgotten
        (the driver has restored the ledger and scheduler that issue it again)."""
        self.learner, self.updates = learner, updates
        self.scored.clear()
        self.adds_in_flight = 0

    def flush(self) -> None:
        """Sends every scored batch to the learner in one call, in id order (sync mode: as the
        in-process loop adds them)."""
        if not self.scored:
            return
        batches = sorted(self.scored, key=lambda batch: batch.ids[0])
        ids = [rid for batch in batches for rid in batch.ids]
        self.pending[self.learner.add.remote(*[batch.kept for batch in batches])] = AddFlight(ids)
        self.adds_in_flight += 1
        self.scored.clear()

    def on_add(self, ref: ray.ObjectRef, flight: AddFlight) -> list[int]:
        """Records which rollouts were stored and which dropped as stale; returns their lags."""
        self.adds_in_flight -= 1
        result = self.result(ref)
        stale = set(result["stale"])
        self.ledger.drop(sorted(stale), "stale")
        self.ledger.store([rid for rid in flight.ids if rid not in stale])
        return result["lags"]

    def maybe_update(self, version: int) -> None:
        """Asks for the next update when none is in flight and its slots have all finished."""
        if self.updates > version or self.updates >= self.iterations:
            return
        if not self.scheduler.update_due(self.updates):
            return
        self.flush()  # the learner runs calls in order: these adds land before the update
        self.updates += 1
        last = self.updates == self.iterations
        publish = self.updates % self.broadcast_interval == 0 or last
        info, weights = self.learner.update.options(num_returns=2).remote(publish)
        self.pending[info] = UpdateFlight(weights if publish else None)

    def publish(self) -> tuple[int, ray.ObjectRef]:
        """(version, ref of its weights) of the learner as it stands; the driver owns the ref."""
        version, weights = self.learner.publish.options(num_returns=2).remote()
        return self.result(version), weights

    def result(self, ref: ray.ObjectRef) -> Any:
        """A learner call's result; a dead learner raises LearnerLost (with how to resume)."""
        try:
            return ray.get(ref)
        except LOST as e:
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            raise LearnerLost(f"the learner actor died ({first_line}); {self.resume_hint}") from e
