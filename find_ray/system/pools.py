"""The rollout and reward actor pools: work goes out least-busy first, results and failures
come back here (images never pass through the driver; it reads versions and reward summaries).

    rollout actor --(rollouts, images refs)--> reward actor --(kept rollouts ref)--> learner

At most `ray.max_in_flight_per_actor` calls are queued per actor. Rollout batches that finish
while every reward actor is busy wait and go in the next call, so under load one reward call
scores many batches. A dead rollout actor's ids are dropped ("actor_died") and their prompts
issued again under new ids; a failed reward call's batches go to another (or the restarted)
reward actor, until they have failed `ray.max_restarts` times. An actor whose call failed gets
no work until a readiness probe (`__ray_ready__`) answers (`health.ActorHealth`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from find_ray.config import RayConfig
from find_ray.system.actors import Actors, ScoreSummary
from find_ray.system.flights import Flight, ProbeFlight, RewardFlight, RolloutFlight, ScoringJob
from find_ray.system.health import ActorHealth
from find_ray.system.ledger import RolloutLedger
from find_ray.system.scheduler import PromptScheduler

log = logging.getLogger(__name__)

# Errors that mean "the actor (or the object it made) is gone", not "the code is wrong".
LOST = (
    RayActorError,
    ActorDiedError,
    ActorUnavailableError,
    ObjectLostError,
    OutOfMemoryError,
    WorkerCrashedError,
)

Weights = tuple[int, ray.ObjectRef]  # (version, its weights object): see actors.Weights


class ActorPools:
    """Sends rollout and reward calls and handles their results; the driver owns `pending`."""

    def __init__(
        self,
        cfg: RayConfig,
        actors: Actors,
        ledger: RolloutLedger,
        scheduler: PromptScheduler,
        pending: dict[ray.ObjectRef, Flight],
        num_prompts: int,
    ) -> None:
        self.cfg, self.actors, self.ledger, self.scheduler = cfg, actors, ledger, scheduler
        self.pending = pending
        self.health = {  # an actor that died more than max_restarts times is retired
            "rollout": ActorHealth("rollout", cfg.num_rollout_actors, cfg.max_restarts + 1),
            "reward": ActorHealth("reward", cfg.num_reward_actors, cfg.max_restarts + 1),
        }
        self.loads: dict[str, Counter[int]] = {"rollout": Counter(), "reward": Counter()}
        self.to_score: deque[ScoringJob] = deque()
        self.grids_due: set[int] = set(range(num_prompts))  # prompts to show next

    def resting(self) -> bool:
        """Some actor is cooling down: work that waits for it will be taken later."""
        return any(h.resting() for h in self.health.values())

    def pool(self, kind: str) -> list:
        return self.actors.rollout if kind == "rollout" else self.actors.reward

    def live(self, kind: str) -> list:
        """The actors of a pool that are not retired."""
        return [a for i, a in enumerate(self.pool(kind)) if i not in self.health[kind].retired]

    def forget_calls(self) -> None:
        """The driver dropped every call in flight (a new learner restarts from a checkpoint):
        no load is counted, no job waits for scoring, probes are due again."""
        for loads in self.loads.values():
            loads.clear()
        self.to_score.clear()
        for health in self.health.values():
            health.forget_probes()

    # -- readiness of actors whose calls failed ---------------------------------------------
    def submit_probes(self) -> None:
        """One readiness call to each down actor whose probe is due (Ray queues it until the
        restarted actor has run its constructor)."""
        for kind, health in self.health.items():
            for i in health.probes_due():
                self.pending[self.pool(kind)[i].__ray_ready__.remote()] = ProbeFlight(kind, i)

    def on_probe(self, ref: ray.ObjectRef, flight: ProbeFlight) -> None:
        health = self.health[flight.kind]
        try:
            ray.get(ref)
        except (*LOST, RayTaskError) as e:
            log.info("%s actor %d not ready yet: %s", flight.kind, flight.actor, e)
            health.probe_failed(flight.actor, e, not isinstance(e, ActorUnavailableError))
            return
        log.info("%s actor %d is ready again", flight.kind, flight.actor)
        health.probe_ok(flight.actor)

    # -- rollouts -----------------------------------------------------------------------------
    def submit_rollouts(self, weights: Weights) -> None:
        """Fills every available rollout actor up to the in-flight limit, least busy first."""
        available = self.health["rollout"].available()
        loads = [
            self.loads["rollout"][i] if i in available else math.inf
            for i in range(self.cfg.num_rollout_actors)
        ]
        while min(loads) < self.cfg.max_in_flight_per_actor:
            prompts = self.scheduler.take(self.cfg.rollouts_per_task, weights[0])
            if not prompts:
                return
            i = loads.index(min(loads))
            ids = self.ledger.issue(prompts)
            call = self.actors.rollout[i].rollout.options(num_returns=3)
            version_ref, rollouts_ref, images_ref = call.remote(prompts, ids, *weights)
            self.pending[version_ref] = RolloutFlight(i, ScoringJob(ids, rollouts_ref, images_ref))
            self.loads["rollout"][i] += 1
            loads[i] += 1

    def on_rollout(self, ref: ray.ObjectRef, flight: RolloutFlight) -> None:
        self.loads["rollout"][flight.actor] -= 1
        try:
            ray.get(ref)
        except (*LOST, RayTaskError) as e:
            reason = "rollout_error" if isinstance(e, RayTaskError) else "actor_died"
            ids = flight.job.ids
            log.warning("rollout actor %d lost %d rollouts: %s", flight.actor, len(ids), e)
            self.scheduler.requeue(self.ledger.drop(ids, reason))
            self._failed("rollout", flight.actor, e)
            return
        self.health["rollout"].ok(flight.actor)
        self.to_score.append(flight.job)

    def _failed(self, kind: str, actor: int, error: Exception) -> bool:
        """Records a failed call; returns whether it counts (a restarting actor's does not)."""
        counts = not isinstance(error, ActorUnavailableError)
        self.health[kind].failed(actor, error, counts)
        return counts

    # -- rewards ------------------------------------------------------------------------------
    def submit_rewards(self) -> None:
        """Everything waiting to be scored, split over the available reward actors (least busy
        first), one call each; a retried job goes alone, to another actor."""
        limit = self.cfg.max_in_flight_per_actor
        available = [
            j for j in self.health["reward"].available() if self.loads["reward"][j] < limit
        ]
        if not available or not self.to_score:
            return  # none waiting, or the actors are restarting: the jobs wait
        available.sort(key=lambda j: self.loads["reward"][j])
        waiting = list(self.to_score)
        self.to_score.clear()
        for job in waiting:
            if job.attempts > 0:
                self._send_reward(available[job.attempts % len(available)], [job])
        fresh = [job for job in waiting if job.attempts == 0]
        share = -(-len(fresh) // len(available))
        for n, j in enumerate(available):
            if fresh[n * share : (n + 1) * share]:
                self._send_reward(j, fresh[n * share : (n + 1) * share])

    def _send_reward(self, j: int, jobs: list[ScoringJob]) -> None:
        """One reward call over several jobs (their refs resolved by Ray in the actor)."""
        prompts = {self.ledger.in_flight[job.ids[0]] for job in jobs}
        grids = sorted(prompts & self.grids_due)  # thumbnails of these prompts are due
        self.grids_due -= set(grids)
        refs = [ref for job in jobs for ref in (job.rollouts, job.images)]
        call = self.actors.reward[j].score.options(num_returns=2)
        summary_ref, kept_ref = call.remote(grids, *refs)
        attempts = max(job.attempts for job in jobs)
        self.pending[summary_ref] = RewardFlight(j, jobs, kept_ref, attempts)
        self.loads["reward"][j] += 1

    def on_reward(self, ref: ray.ObjectRef, flight: RewardFlight) -> ScoreSummary | None:
        """The call's summary (its drops recorded), or None when it failed and its jobs were
        queued again or dropped."""
        self.loads["reward"][flight.actor] -= 1
        try:
            summary = ray.get(ref)
        except ObjectLostError as e:  # the images are gone with their node: roll out again
            log.warning("images of %d rollouts lost: %s", len(flight.ids), e)
            self.scheduler.requeue(self.ledger.drop(flight.ids, "actor_died"))
            return None
        except (*LOST, RayTaskError) as e:
            log.warning("reward actor %d failed, resubmitting its batches: %s", flight.actor, e)
            attempts = flight.attempts + self._failed("reward", flight.actor, e)
            for job in flight.jobs:
                if attempts > self.cfg.max_restarts:
                    self.scheduler.requeue(self.ledger.drop(job.ids, "actor_died"))
                else:
                    job.attempts = attempts
                    self.to_score.append(job)
            return None
        self.health["reward"].ok(flight.actor)
        for reason, ids in summary.dropped.items():
            self.ledger.drop(ids, reason)
        self.scheduler.finish(len(flight.ids))
        return summary
