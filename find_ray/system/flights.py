"""What the driver waits for: one typed record per remote call in flight, keyed by the ref
the driver waits on (a rollout call's version, a reward call's summary, the learner's reply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ray import ObjectRef


@dataclass
class ScoringJob:
    """A batch of unscored rollouts and their images (refs held by the rollout actor's
    object store), waiting for or being scored; `attempts` counts failed reward calls."""

    ids: list[int]
    rollouts: ObjectRef
    images: ObjectRef
    attempts: int = 0


@dataclass
class RolloutFlight:
    actor: int
    job: ScoringJob


@dataclass
class RewardFlight:
    """One reward call over several jobs; `kept` is the ref of the scored rollouts."""

    actor: int
    jobs: list[ScoringJob]
    kept: ObjectRef
    attempts: int = 0

    @property
    def ids(self) -> list[int]:
        return [rid for job in self.jobs for rid in job.ids]


@dataclass
class ScoredBatch:
    """Scored rollouts waiting to go to the learner (sent in order of their first id)."""

    ids: list[int]
    kept: ObjectRef


@dataclass
class AddFlight:
    ids: list[int] = field(default_factory=list)


@dataclass
class UpdateFlight:
    """A learner update; `weights` is the ref of its published weights (None: not published)."""

    weights: ObjectRef | None = None


@dataclass
class ProbeFlight:
    """A readiness call to a down actor (`kind` "rollout" or "reward"): work waits for it."""

    kind: str
    actor: int


Flight = RolloutFlight | RewardFlight | AddFlight | UpdateFlight | ProbeFlight
