"""The Ray driver: FIND as an asynchronous actor-learner loop over `ray.wait`.

Each pass of the loop sends work (rollouts, then their scoring: `pools.ActorPools`; then the
learner's adds and updates, here), waits for whatever finished and handles it. The driver reads
versions, reward summaries and learner metrics only; rollouts and images move between actors.

- Weights: each published version is one object, the second return of the learner's update
  (so the driver owns it, and it outlives a lost learner); rollout calls take (version, ref):
  Ray inlines small weights into each call, so no call waits on a fetch from the learner.
- Staleness: which slots may be issued is `scheduler.PromptScheduler`'s job; a rollout whose
  policy lag still exceeds `learner.max_policy_lag` when it reaches the learner is dropped
  ("stale"); the rest are corrected by the ratio to their behaviour log-prob.
- Accounting: a RolloutLedger holds every id as in flight, stored or dropped by reason.
- Faults: see `pools`; Ray restarts dead rollout and reward actors (`max_restarts`). A dead
  learner is replaced by a new one restored from the last checkpoint (up to `max_restarts`
  times; after that the run stops and `--resume` continues it). Checkpoints: learner state +
  ledger + scheduler at the start and every `ray.checkpoint_every` updates.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray

from find_ray.algo.loop import reward_metrics
from find_ray.algo.policy_files import policy_from_state
from find_ray.algo.rollout import iteration_prompt_ids
from find_ray.backends import check_model
from find_ray.config import FindRayConfig, RayConfig, load_saved_config, to_yaml
from find_ray.errors import FindRayError
from find_ray.eval.report import md_table
from find_ray.prompts import train_prompts
from find_ray.rewards import check_scorers
from find_ray.runs.folder import TrainResult, finish_run, start_run
from find_ray.runs.logger import RunLogger
from find_ray.system.actors import (
    Actors,
    ScoreSummary,
    restart_learner,
    start_actors,
    stop_actors,
)
from find_ray.system.checkpoint import restore, save_checkpoint
from find_ray.system.evaluation import evaluate_on_actors
from find_ray.system.flights import (
    AddFlight,
    Flight,
    ProbeFlight,
    RewardFlight,
    RolloutFlight,
    ScoredBatch,
    UpdateFlight,
)
from find_ray.system.learner_feed import LearnerFeed, LearnerLost
from find_ray.system.ledger import RolloutLedger
from find_ray.system.pools import ActorPools
from find_ray.system.resources import check_devices, check_resources
from find_ray.system.scheduler import PromptScheduler

log = logging.getLogger(__name__)


def connect(cfg: RayConfig) -> bool:
    """Joins `ray.address`, RAY_ADDRESS or a `ray start` on this machine, else starts a local
    Ray. Returns True when it started one (and so should shut it down)."""
    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return False
    try:
        ray.init(address="auto")
        return False
    except ConnectionError:
        ray.init(num_cpus=cfg.local_num_cpus or None, include_dashboard=False)
        return True


# After a first call finishes, the calls finishing within this time come along: one loop pass
# handles them together (at 32 actors x 0.1 s, ~1.4 passes per rollout call without it, each
# scanning every pool), and the reward actors get fuller batches. A rollout actor loses nothing:
# its next call is already queued.
GATHER_S = 0.01


def finished_calls(pending: dict[ray.ObjectRef, Flight]) -> list[ray.ObjectRef]:
    """Every call finished by GATHER_S after the first one (which it waits up to 1 s for)."""
    refs = list(pending)
    ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
    if ready and len(refs) > 1:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=GATHER_S, fetch_local=False)
    return ready


@dataclass
class Window:
    """What arrived since the last update: fresh rewards (with their prompts) and policy lags."""

    rewards: list[float] = field(default_factory=list)
    prompts: list[int] = field(default_factory=list)
    lags: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Reward statistics and policy lags of what arrived since the last update."""
        lags = self.lags or [0]
        lag = {"policy_lag_mean": float(np.mean(lags)), "policy_lag_max": float(max(lags))}
        return {**reward_metrics(self.rewards, self.prompts), **lag}


class RayTrainer:
    """Runs FIND on Ray actors; `run()` trains, evaluates and writes the run folder."""

    def __init__(self, cfg: FindRayConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.prompts = train_prompts(cfg)  # bad prompts fail here, before any actor starts
        check_model(cfg.model)  # so does a missing model folder or a family mismatch
        check_scorers(cfg)  # and an unknown reward or quality scorer, or missing weights
        check_devices(cfg)  # and GPU shares that contradict the devices
        self.out, self.resume = Path(cfg.train.out_dir), resume
        t = cfg.train

        def plan(iteration: int) -> list[int]:
            n, k, per = len(self.prompts), t.samples_per_prompt, t.prompts_per_iteration
            return iteration_prompt_ids(n, k, per, iteration, t.seed)

        ahead = 1 if cfg.ray.sync else cfg.learner.max_policy_lag + 1
        self.scheduler = PromptScheduler(plan, t.iterations, ahead)
        self.ledger = RolloutLedger()
        self.version = 0  # newest learner version seen
        self.weights: tuple[int, ray.ObjectRef | None] = (0, None)  # newest published
        self.pending: dict[ray.ObjectRef, Flight] = {}
        self.window = Window()
        self.elapsed_before = 0.0  # training seconds of earlier (resumed) sessions
        self.after_update: Callable[[RayTrainer], None] | None = None  # test hook
        self.actors: Actors | None = None
        self.pools: ActorPools | None = None
        self.feed: LearnerFeed | None = None
        self.learner_restarts = 0  # learners replaced after their actor died
        self.redone = 0  # rollouts issued again because the learner that had them died

    def run(self) -> TrainResult:
        started_ray = connect(self.cfg.ray)
        try:
            check_resources(self.cfg, started_ray)  # one line before any actor starts
            self.actors = start_actors(self.cfg, self.prompts)
            pools = (self.cfg.ray, self.actors, self.ledger, self.scheduler, self.pending)
            self.pools = ActorPools(*pools, len(self.prompts))
            hint = f"continue with `find-ray train --resume {self.out}`"
            feed = (self.actors.learner, *pools[2:], self.cfg.train.iterations)
            self.feed = LearnerFeed(*feed, self.cfg.ray.broadcast_interval, hint)
            self._load_or_start()
            self.logger = RunLogger(self.out, self.cfg.train.iterations, self.version, "find (ray)")
            self._train()
            return self._report()
        finally:
            self._stop_actors()
            if started_ray:
                ray.shutdown()

    def _load_or_start(self) -> None:
        if self.resume:
            self.elapsed_before = self._restore()["elapsed_s"]
            log.info("resumed %s at version %d", self.out, self.version)
        else:
            start_run(self.cfg)
            self.weights = self.feed.publish()
        self.weights_bytes = ray.get(self.actors.learner.weights_bytes.remote())

    def _restore(self) -> dict:
        """Learner, ledger and queue as the last checkpoint left them; returns its metadata."""
        learner = self.actors.learner
        self.version, meta = restore(self.out / "checkpoint", learner, self.ledger, self.scheduler)
        self.feed.replace(learner, self.version)
        self.weights = self.feed.publish()
        return meta

    def _train(self) -> None:
        self.began = self.last_update = time.monotonic()
        self.done_at_last_update = self.scheduler.finished
        if not self.resume:
            self.checkpoint()  # version 0: a learner lost before the first one starts from here
        while self.version < self.cfg.train.iterations:
            self.pools.submit_probes()
            self.pools.submit_rollouts(self.weights)
            self.pools.submit_rewards()
            self.feed.maybe_update(self.version)
            if not self.pending:
                if not self.pools.resting():
                    raise RuntimeError("the driver has nothing in flight and nothing to submit")
                time.sleep(0.05)  # work waits for a down actor's next readiness probe
                continue
            try:
                for ref in finished_calls(self.pending):
                    # one handled before may have taken others along (a checkpoint waits
                    # for the adds in flight)
                    if (flight := self.pending.pop(ref, None)) is not None:
                        self._handle(ref, flight)
            except LearnerLost as lost:
                self._replace_learner(lost)
                continue
            if not self.cfg.ray.sync and not self.feed.adds_in_flight:
                self.feed.flush()  # one learner call for all rollouts scored meanwhile
        self.train_seconds = self.elapsed()

    def _replace_learner(self, lost: LearnerLost) -> None:
        """A new learner from the last checkpoint; the rollouts issued since are issued again
        (the ledger goes back with it, so none is counted twice)."""
        if self.learner_restarts >= self.cfg.ray.max_restarts:
            raise lost
        self.learner_restarts += 1
        log.warning("%s: a new learner continues from the last checkpoint", lost)
        issued = self.ledger.next_id
        self.pending.clear()  # what the old learner would have consumed is done again
        self.pools.forget_calls()
        self.actors.learner = restart_learner(self.cfg, self.prompts, self.actors)
        self._restore()
        self.redone += issued - self.ledger.next_id
        self.logger.rewind(self.version)

    def _handle(self, ref: ray.ObjectRef, flight: Flight) -> None:
        if isinstance(flight, RolloutFlight):
            self.pools.on_rollout(ref, flight)
        elif isinstance(flight, RewardFlight):
            summary = self.pools.on_reward(ref, flight)
            if summary is not None:
                self._record(summary, flight)
        elif isinstance(flight, AddFlight):
            self.window.lags += self.feed.on_add(ref, flight)
        elif isinstance(flight, ProbeFlight):
            self.pools.on_probe(ref, flight)
        else:
            self._on_update(ref, flight)

    def _record(self, summary: ScoreSummary, flight: RewardFlight) -> None:
        """A scored call: its rewards into the window, its thumbnails to TensorBoard, its kept
        rollouts in line for the learner."""
        for prompt, grid in summary.grids.items():
            self.logger.image(f"rollouts/p{prompt:02d}", grid, self.version)
        self.window.rewards += [reward for _, _, reward in summary.kept]
        self.window.prompts += [row for _, row, _ in summary.kept]
        if summary.kept:
            self.feed.scored.append(ScoredBatch([rid for rid, _, _ in summary.kept], flight.kept))

    def _on_update(self, ref: ray.ObjectRef, flight: UpdateFlight) -> None:
        metrics, self.version = self.feed.result(ref)
        if flight.weights is not None:
            self.weights = (self.version, flight.weights)
        self._log(metrics)
        if self.cfg.ray.grid_every and self.version % self.cfg.ray.grid_every == 0:
            self.pools.grids_due = set(range(len(self.prompts)))
        every = self.cfg.ray.checkpoint_every
        if (every and self.version % every == 0) or self.version == self.cfg.train.iterations:
            self.checkpoint()
        if self.after_update is not None:
            self.after_update(self)

    # -- observability, checkpoints, the report -----------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.began

    def _log(self, learner_metrics: dict[str, float]) -> None:
        now, finished = time.monotonic(), self.scheduler.finished
        metrics = {**learner_metrics, **self.window.metrics()}
        since = max(now - self.last_update, 1e-9)
        metrics["rollouts_per_s"] = (finished - self.done_at_last_update) / since
        busy = learner_metrics.get("learner_busy_s", 0.0)
        metrics["learner_utilisation"] = busy / max(self.elapsed(), 1e-9)
        metrics["weights_bytes"] = float(self.weights_bytes)
        metrics["elapsed_s"] = self.elapsed()
        metrics["driver_cpu_s"] = time.process_time()  # this process, all its threads
        metrics["rollouts_finished"] = float(finished)
        totals = self.ledger.totals()
        metrics.update({f"rollouts/{key}": float(value) for key, value in totals.items()})
        lag, rps = f"{metrics['policy_lag_mean']:.2f}", f"{metrics['rollouts_per_s']:.1f}"
        self.logger.log(self.version, metrics, lag=lag, rps=rps, dropped=totals["dropped"])
        self.window = Window()
        self.last_update, self.done_at_last_update = now, finished

    def checkpoint(self) -> None:
        """Learner state + ledger, consistent: every add sent to the learner is answered first."""
        if not self.cfg.ray.sync:
            self.feed.flush()
        for ref in [ref for ref, f in self.pending.items() if isinstance(f, AddFlight)]:
            self._handle(ref, self.pending.pop(ref))
        state = self.feed.result(self.actors.learner.state_dict.remote())
        meta = {"version": self.version, "elapsed_s": self.elapsed(), "prompts": self.prompts}
        meta |= {"ledger": self.ledger.state_dict(), "totals": self.ledger.totals()}
        meta |= {**self.scheduler.state_dict(), "config": to_yaml(self.cfg)}
        save_checkpoint(self.out / "checkpoint", state, meta)

    def _report(self) -> TrainResult:
        """Base and trained policy evaluated on the actors; the run folder's report."""
        weights, _ = ray.get(self.actors.learner.weights.remote())
        r, live = self.cfg.ray, (self.pools.live("rollout"), self.pools.live("reward"))
        policy = policy_from_state(weights)
        args = (self.prompts, self.cfg.eval, [None, weights], policy.shape, r.max_restarts)
        results = evaluate_on_actors(*live, *args)
        totals = self.ledger.totals()
        sections = ray_section(r, totals, self.train_seconds, self.logger.history)
        extra = {"rollouts": totals, "learner_restarts": self.learner_restarts}
        extra["rollouts_redone_after_learner_loss"] = self.redone
        return finish_run(
            self.cfg, self.prompts, policy, self.version, results, self.logger, sections, extra
        )

    def _stop_actors(self) -> None:
        if self.actors is not None:
            stop_actors([*self.actors.rollout, *self.actors.reward, self.actors.learner])
        self.actors = None


def ray_section(
    cfg: RayConfig, totals: dict[str, int], train_seconds: float, history: list[dict]
) -> list[str]:
    """The report's section on the Ray run: actors, mode, time, and the rollout accounting."""
    utilisation = history[-1].get("learner_utilisation", 0) if history else 0
    return [
        "",
        "## Ray run",
        "",
        f"{cfg.num_rollout_actors} rollout actors, {cfg.num_reward_actors} reward actors, "
        f"{'synchronous' if cfg.sync else 'asynchronous'}; training "
        f"{train_seconds / 60:.1f} min (evaluation not included), "
        f"learner utilisation {utilisation:.2f}.",
        "",
        *md_table(["rollouts", "count"], list(totals.items())),
    ]


def train_with_ray(cfg: FindRayConfig) -> TrainResult:
    return RayTrainer(cfg).run()


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> FindRayConfig:
    """A run folder's own config (plus overrides, e.g. more train.iterations)."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FindRayError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_saved_config(config, [*(overrides or []), f"train.out_dir={run_dir}"])


def resume_with_ray(run_dir: str | Path, overrides: list[str] | None = None) -> TrainResult:
    """Continues a run from `run_dir/checkpoint`: version, store, counters, RNG state."""
    return RayTrainer(resume_config(run_dir, overrides), resume=True).run()
