"""The Ray driver: an asynchronous actor-learner loop over `ray.wait`.

Flow of one batch of rollouts (images never pass through the driver; it reads versions,
reward summaries and learner results only):

    rollout actor --(rollouts, images refs)--> reward actor --(kept rollouts ref)--> learner

- Back-pressure: at most `ray.max_in_flight_per_actor` calls queued per rollout and per
  reward actor, one learner `add` at a time. Work that arrives meanwhile waits and goes in
  the next call, so under load one reward call scores many rollout batches and one `add`
  stores them: the driver's round trips per rollout fall as the load rises.
- Weights: the learner `ray.put`s each published version once; a rollout call carries
  (version, [ref]) and the actor fetches only a version that is new to it.
- Staleness: a rollout whose policy lag exceeds `learner.max_policy_lag` when it reaches the
  learner is dropped ("stale"); the rest are corrected by the ratio to their behaviour log-prob.
- Accounting: a RolloutLedger holds every id as in flight, stored or dropped by reason.
- Faults: a dead rollout actor's ids are dropped ("actor_died") and their prompts resubmitted
  under new ids; a dead reward actor's batch goes to another (or the restarted) reward actor.
  Ray restarts dead actors (`max_restarts`). A learner death ends the run: `--resume` it.
- Checkpoints: learner state + ledger + queue every `ray.checkpoint_every` updates.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from find_ray.algo.rollout import iteration_prompt_ids
from find_ray.backends import check_model
from find_ray.config import FindRayConfig, RayConfig, load_config, to_yaml
from find_ray.errors import FindRayError
from find_ray.eval.evaluate import EvalCollector, PromptResult, eval_batches, grid_rows, suite_grid
from find_ray.images import stack
from find_ray.rewards import check_reward
from find_ray.runs.in_process import TrainResult, reward_metrics, train_prompts, write_find_report
from find_ray.system.actors import Actors, start_actors
from find_ray.system.checkpoint import load_checkpoint, policy_from_state, save_checkpoint
from find_ray.system.health import ActorHealth
from find_ray.system.ledger import RolloutLedger

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


def new_window() -> dict[str, list]:
    return {"rewards": [], "prompts": [], "lags": []}


@dataclass
class Flight:
    """One remote call the driver waits for."""

    kind: str  # rollout | reward | add | update
    ids: list[int] = field(default_factory=list)
    actor: int = -1
    refs: tuple = ()  # rollout: (rollouts, images); reward: (kept,)
    attempts: int = 0
    parts: list = field(default_factory=list)  # reward: the queued batches it scores


class RayTrainer:
    """Runs FIND on Ray actors; `run()` trains, evaluates and writes the report."""

    def __init__(self, cfg: FindRayConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.prompts = train_prompts(cfg)  # bad prompts fail here, before any actor starts
        check_model(cfg.model)  # so does a missing model folder or a family mismatch
        check_reward(cfg.reward)  # and an unknown reward or missing weights
        self.out = Path(cfg.train.out_dir)
        self.resume = resume
        self._plan: tuple[int, list[int]] = (-1, [])
        self.per_update = len(self._iteration_prompts(0))
        self.total = cfg.train.iterations * self.per_update
        self.iterations_ahead = 1 if cfg.ray.sync else cfg.learner.max_policy_lag + 1
        self.ledger = RolloutLedger()
        self.next_slot = 0  # slots (prompt draws) issued so far, out of `total`
        self.requeued: deque[int] = deque()  # prompts of lost work, issued again first
        self.finished = 0  # slots scored or dropped for good
        self.updates = 0  # learner updates submitted
        self.version = 0  # newest learner version seen
        self.weights: tuple[int, list] = (0, [])
        self.pending: dict[ray.ObjectRef, Flight] = {}
        self.held_adds: list[tuple[int, ray.ObjectRef, list[int]]] = []  # sync mode only
        self.window = new_window()  # rewards, prompts and lags since the last update
        self.history: list[dict[str, float]] = []
        self.elapsed_before = 0.0  # training seconds of earlier (resumed) sessions
        self.last_reward = float("nan")
        self.after_update: Callable[[RayTrainer], None] | None = None  # test hook
        self.reward_queue: deque[tuple[list[int], tuple, int]] = deque()  # (ids, refs, attempts)
        self.loads = {"rollout": Counter(), "reward": Counter(), "add": Counter()}  # in flight
        self.grids_due: set[int] = set(range(len(self.prompts)))  # prompts to show next
        r = cfg.ray
        self.health = {  # an actor that died more than max_restarts times is retired
            "rollout": ActorHealth("rollout", r.num_rollout_actors, r.max_restarts + 1),
            "reward": ActorHealth("reward", r.num_reward_actors, r.max_restarts + 1),
        }
        self.actors: Actors | None = None

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        started_ray = connect(self.cfg.ray)
        try:
            self.actors = start_actors(self.cfg, self.prompts)
            self._load_or_start()
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.version)
            self._train()
            return self._report()
        finally:
            self._stop_actors()
            if started_ray:
                ray.shutdown()

    def _load_or_start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        learner = self.actors.learner
        if self.resume:
            state, meta = load_checkpoint(self.out / "checkpoint")
            self.version = self.updates = ray.get(learner.load_state_dict.remote(state))
            self.ledger.load_state_dict(meta["ledger"])
            self.next_slot, self.finished = meta["next_slot"], meta["finished"]
            self.requeued = deque([*meta["requeued"], *self.ledger.interrupt()])
            self.elapsed_before = meta["elapsed_s"]
            log.info("resumed %s at version %d", self.out, self.version)
        else:
            (self.out / "config.yaml").write_text(to_yaml(self.cfg))
        self.weights = ray.get(learner.publish.remote())
        self.weights_bytes = ray.get(learner.weights_bytes.remote())

    def _train(self) -> None:
        iterations = self.cfg.train.iterations
        self.began = self.last_update = time.monotonic()
        self.done_at_last_update = self.finished
        self.bar = tqdm(total=iterations, initial=self.version, desc="find (ray)", unit="update")
        while self.version < iterations:
            self._submit_rollouts()
            self._submit_rewards()
            self._maybe_update()
            if not self.pending:
                if not any(h.resting() for h in self.health.values()):
                    raise RuntimeError("the driver has nothing in flight and nothing to submit")
                time.sleep(0.1)  # work waits for an actor that is restarting
                continue
            for ref in self._ready():
                self._handle(ref, self.pending.pop(ref))
            if not self.cfg.ray.sync and not self.loads["add"][-1]:
                self._flush_adds()  # one learner call for all rollouts scored meanwhile
        self.bar.close()
        self.train_seconds = self.elapsed()

    def _ready(self) -> list[ray.ObjectRef]:
        """Every finished call (one loop pass handles them all), waiting up to 1 s for one."""
        refs = list(self.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not ready:
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
        return ready

    def _handle(self, ref: ray.ObjectRef, flight: Flight) -> None:
        if flight.kind in self.loads:
            self.loads[flight.kind][flight.actor] -= 1
        {
            "rollout": self._on_rollout,
            "reward": self._on_reward,
            "add": self._on_add,
            "update": self._on_update,
        }[flight.kind](ref, flight)

    # -- rollouts -------------------------------------------------------------------------
    def _next_prompts(self, n: int) -> list[int]:
        """Up to n prompts to roll out: lost work first, then new slots.

        Slots of iteration i are consumed by update i + 1, so issuing them with weights of
        version v only while i < v + iterations_ahead bounds their lag at the learner by
        iterations_ahead - 1 = max_policy_lag (sync: 0, one iteration at a time). This is also
        the back-pressure on a learner slower than the rollouts.
        """
        out = [self.requeued.popleft() for _ in range(min(n, len(self.requeued)))]
        limit = min(self.total, (self.weights[0] + self.iterations_ahead) * self.per_update)
        while len(out) < n and self.next_slot < limit:
            iteration, index = divmod(self.next_slot, self.per_update)
            out.append(self._iteration_prompts(iteration)[index])
            self.next_slot += 1
        return out

    def _iteration_prompts(self, iteration: int) -> list[int]:
        """The prompt of each slot of an iteration (the in-process loop's plan)."""
        t = self.cfg.train
        if self._plan[0] != iteration:
            ids = iteration_prompt_ids(
                len(self.prompts), t.samples_per_prompt, t.prompts_per_iteration, iteration, t.seed
            )
            self._plan = (iteration, ids)
        return self._plan[1]

    def _submit_rollouts(self) -> None:
        r = self.cfg.ray
        available = self.health["rollout"].available()
        loads = [
            self.loads["rollout"][i] if i in available else math.inf
            for i in range(r.num_rollout_actors)
        ]
        while min(loads) < r.max_in_flight_per_actor:
            prompts = self._next_prompts(r.rollouts_per_task)
            if not prompts:
                return
            i = loads.index(min(loads))
            ids = self.ledger.issue(prompts)
            version_ref, rollouts_ref, images_ref = (
                self.actors.rollout[i]
                .rollout.options(num_returns=3)
                .remote(prompts, ids, *self.weights)
            )
            self.pending[version_ref] = Flight("rollout", ids, i, (rollouts_ref, images_ref))
            self.loads["rollout"][i] += 1
            loads[i] += 1

    def _on_rollout(self, ref: ray.ObjectRef, flight: Flight) -> None:
        try:
            ray.get(ref)
        except (*LOST, RayTaskError) as e:
            reason = "rollout_error" if isinstance(e, RayTaskError) else "actor_died"
            log.warning("rollout actor %d lost %d rollouts: %s", flight.actor, len(flight.ids), e)
            self.requeued.extend(self.ledger.drop(flight.ids, reason))
            self._actor_failed("rollout", flight.actor, e)
            return
        self.health["rollout"].ok(flight.actor)
        self.reward_queue.append((flight.ids, flight.refs, 0))

    def _actor_failed(self, kind: str, actor: int, error: Exception) -> bool:
        """Records a failed call; returns whether it counts (a restarting actor's does not)."""
        counts = not isinstance(error, ActorUnavailableError)
        self.health[kind].failed(actor, error, counts)
        return counts

    # -- rewards --------------------------------------------------------------------------
    def _submit_rewards(self) -> None:
        """Queued batches to the reward actors, least busy first. Everything queued now is
        split over the available actors, one call each; a retry goes alone, to another actor."""
        limit = self.cfg.ray.max_in_flight_per_actor
        available = [
            j for j in self.health["reward"].available() if self.loads["reward"][j] < limit
        ]
        if not available or not self.reward_queue:
            return  # none queued, or they are restarting: the batches wait
        available.sort(key=lambda j: self.loads["reward"][j])
        queued = list(self.reward_queue)
        self.reward_queue.clear()
        fresh = [entry for entry in queued if entry[2] == 0]
        for entry in queued:
            if entry[2] > 0:
                self._send_reward(available[entry[2] % len(available)], [entry])
        share = -(-len(fresh) // len(available))
        for n, j in enumerate(available):
            if fresh[n * share : (n + 1) * share]:
                self._send_reward(j, fresh[n * share : (n + 1) * share])

    def _send_reward(self, j: int, parts: list[tuple[list[int], tuple, int]]) -> None:
        """One reward call over several rollout batches (their refs resolved by Ray)."""
        prompts = {self.ledger.in_flight[ids[0]] for ids, _, _ in parts}
        grids = sorted(prompts & self.grids_due)  # thumbnails of these prompts are due
        self.grids_due -= set(grids)
        refs = [ref for _, batch_refs, _ in parts for ref in batch_refs]
        summary_ref, kept_ref = (
            self.actors.reward[j].score.options(num_returns=2).remote(grids, *refs)
        )
        ids = [rid for batch_ids, _, _ in parts for rid in batch_ids]
        attempts = max(attempts for _, _, attempts in parts)
        self.pending[summary_ref] = Flight("reward", ids, j, (kept_ref,), attempts, parts)
        self.loads["reward"][j] += 1

    def _on_reward(self, ref: ray.ObjectRef, flight: Flight) -> None:
        try:
            summary = ray.get(ref)
        except ObjectLostError as e:  # the images are gone with their node: roll out again
            log.warning("images of %d rollouts lost: %s", len(flight.ids), e)
            self.requeued.extend(self.ledger.drop(flight.ids, "actor_died"))
            return
        except (*LOST, RayTaskError) as e:
            log.warning("reward actor %d failed, resubmitting its batches: %s", flight.actor, e)
            attempts = flight.attempts + self._actor_failed("reward", flight.actor, e)
            for ids, refs, _ in flight.parts:
                if attempts > self.cfg.ray.max_restarts:
                    self.requeued.extend(self.ledger.drop(ids, "actor_died"))
                else:
                    self.reward_queue.append((ids, refs, attempts))
            return
        self.health["reward"].ok(flight.actor)
        for prompt, grid in summary.grids.items():
            self.writer.add_image(f"rollouts/p{prompt:02d}", grid, self.version, dataformats="HWC")
        for reason, ids in summary.dropped.items():
            self.ledger.drop(ids, reason)
        self.finished += len(flight.ids)
        kept_ids = [rid for rid, _, _ in summary.kept]
        self.window["rewards"] += [reward for _, _, reward in summary.kept]
        self.window["prompts"] += [pid for _, pid, _ in summary.kept]
        if kept_ids:
            self.held_adds.append((kept_ids[0], flight.refs[0], kept_ids))

    # -- learner --------------------------------------------------------------------------
    def _flush_adds(self) -> None:
        """Sends held rollouts to the learner in one call, in id order (sync mode: as the
        in-process loop adds them)."""
        if not self.held_adds:
            return
        held = sorted(self.held_adds, key=lambda entry: entry[0])
        ids = [rid for _, _, batch_ids in held for rid in batch_ids]
        self.pending[self.actors.learner.add.remote(*[kept for _, kept, _ in held])] = Flight(
            "add", ids
        )
        self.loads["add"][-1] += 1
        self.held_adds.clear()

    def _on_add(self, ref: ray.ObjectRef, flight: Flight) -> None:
        result = self._learner_result(ref)
        stale = set(result["stale"])
        self.ledger.drop(sorted(stale), "stale")
        self.ledger.store([rid for rid in flight.ids if rid not in stale])
        self.window["lags"] += result["lags"]

    def _maybe_update(self) -> None:
        if self.updates > self.version or self.updates >= self.cfg.train.iterations:
            return  # one update in flight at a time
        if self.finished < (self.updates + 1) * self.per_update:
            return
        self._flush_adds()  # the learner runs calls in order: these adds land before the update
        self.updates += 1
        k = self.cfg.ray.broadcast_interval
        publish = self.updates % k == 0 or self.updates == self.cfg.train.iterations
        self.pending[self.actors.learner.update.remote(publish)] = Flight("update")

    def _on_update(self, ref: ray.ObjectRef, flight: Flight) -> None:
        metrics, self.version, box = self._learner_result(ref)
        if box is not None:
            self.weights = (self.version, box)
        self._log(metrics)
        if self.cfg.ray.grid_every and self.version % self.cfg.ray.grid_every == 0:
            self.grids_due = set(range(len(self.prompts)))
        every = self.cfg.ray.checkpoint_every
        if (every and self.version % every == 0) or self.version == self.cfg.train.iterations:
            self.checkpoint()
        if self.after_update is not None:
            self.after_update(self)

    def _learner_result(self, ref: ray.ObjectRef) -> Any:
        try:
            return ray.get(ref)
        except LOST as e:
            raise FindRayError(
                f"the learner actor died ({e}); continue with `find-ray train --resume {self.out}`"
            ) from e

    # -- observability and checkpoints ----------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.began

    def _log(self, learner_metrics: dict[str, float]) -> None:
        now = time.monotonic()
        w = self.window
        metrics = {**learner_metrics, **reward_metrics(w["rewards"], w["prompts"])}
        lags = w["lags"] or [0]
        metrics["policy_lag_mean"] = float(np.mean(lags))
        metrics["policy_lag_max"] = float(np.max(lags))
        metrics["rollouts_per_s"] = (self.finished - self.done_at_last_update) / max(
            now - self.last_update, 1e-9
        )
        metrics["learner_utilisation"] = learner_metrics.get("learner_busy_s", 0.0) / max(
            self.elapsed(), 1e-9
        )
        metrics["weights_bytes"] = float(self.weights_bytes)
        metrics["elapsed_s"] = self.elapsed()
        metrics["driver_cpu_s"] = time.process_time()  # this process, all its threads
        metrics["rollouts_finished"] = float(self.finished)
        totals = self.ledger.totals()
        for key, value in totals.items():
            metrics[f"rollouts/{key}"] = float(value)
        self.history.append(metrics)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.version)
        self.bar.update(self.version - self.bar.n)
        if "reward_mean" in metrics:  # an update right after another may have no new rollouts
            self.last_reward = metrics["reward_mean"]
        self.bar.set_postfix(
            reward=f"{self.last_reward:.3f}",
            lag=f"{metrics['policy_lag_mean']:.2f}",
            rps=f"{metrics['rollouts_per_s']:.1f}",
            dropped=totals["dropped"],
        )
        self.window = new_window()
        self.last_update, self.done_at_last_update = now, self.finished

    def checkpoint(self) -> None:
        """Learner state + ledger, consistent: every add sent to the learner is answered first."""
        if not self.cfg.ray.sync:
            self._flush_adds()
        for ref in [ref for ref, f in self.pending.items() if f.kind == "add"]:
            self._handle(ref, self.pending.pop(ref))
        state = ray.get(self.actors.learner.state_dict.remote())
        meta = {
            "version": self.version,
            "ledger": self.ledger.state_dict(),
            "totals": self.ledger.totals(),
            "next_slot": self.next_slot,
            "finished": self.finished,
            "requeued": list(self.requeued),
            "elapsed_s": self.elapsed(),
            "prompts": self.prompts,
            "config": to_yaml(self.cfg),
        }
        save_checkpoint(self.out / "checkpoint", state, meta)

    def _report(self) -> TrainResult:
        """Base and trained policy evaluated in parallel on two rollout actors; the report."""
        weights, _ = ray.get(self.actors.learner.weights.remote())
        before, after = self._evaluate([None, weights])
        policy_from_state(weights).save(self.out / "policy.safetensors", self.version, self.prompts)
        totals = self.ledger.totals()
        last = self.history[-1] if self.history else {}
        sections = [
            "",
            "## Ray run",
            "",
            f"{self.cfg.ray.num_rollout_actors} rollout actors, {self.cfg.ray.num_reward_actors} "
            f"reward actors, {'synchronous' if self.cfg.ray.sync else 'asynchronous'}; "
            f"training {self.train_seconds / 60:.1f} min (evaluation not included), "
            f"learner utilisation {last.get('learner_utilisation', 0):.2f}.",
            "",
            "| rollouts | count |",
            "|---|---:|",
            *[f"| {key} | {value} |" for key, value in totals.items()],
        ]
        report, gains = write_find_report(
            self.cfg, self.prompts, before, after, self.out, sections, {"rollouts": totals}
        )
        for p, (b, a) in enumerate(zip(before, after, strict=True)):
            grid = np.asarray(stack([suite_grid([b]), suite_grid([a])]).convert("RGB"))
            self.writer.add_image(f"before_after/p{p:02d}", grid, self.version, dataformats="HWC")
        self.writer.close()
        return TrainResult(self.out, report, self.history, gains)

    def _evaluate(self, policies: list[dict | None]) -> list[list[PromptResult]]:
        """Each policy's eval suite: rollout actors sample the batches, reward actors score
        them, at most two batches per rollout actor in flight; a lost batch is sent again."""
        cfg, live = self.cfg.eval, self._live_actors()
        batches = eval_batches(len(self.prompts), cfg.samples_per_prompt, cfg.batch_size)
        collectors = [
            EvalCollector(self.prompts, cfg.samples_per_prompt, cfg.grid_samples) for _ in policies
        ]
        todo = deque((k, n, 0) for k in range(len(policies)) for n in range(len(batches)))
        flying: dict[ray.ObjectRef, tuple[int, int, int]] = {}
        bar = tqdm(total=len(todo), desc="eval (ray)", unit="batch")
        while todo or flying:
            while todo and len(flying) < 2 * len(live["rollout"]):
                k, n, attempt = job = todo.popleft()
                rollout = live["rollout"][(n + attempt) % len(live["rollout"])]
                reward = live["reward"][(n + attempt) % len(live["reward"])]
                images = rollout.eval_images.remote(cfg, policies[k], n, batches[n])
                prompts = [self.prompts[i] for i, _ in batches[n]]
                rows = grid_rows(batches[n], cfg.grid_samples)
                flying[reward.score_eval.remote(images, prompts, rows)] = job
            ready, _ = ray.wait(list(flying), num_returns=1)
            k, n, attempt = flying.pop(ready[0])
            try:
                collectors[k].add(batches[n], *ray.get(ready[0]))
                bar.update()
            except (*LOST, RayTaskError) as e:
                if attempt >= self.cfg.ray.max_restarts:
                    raise FindRayError(f"evaluation failed: actors kept dying ({e})") from e
                log.warning("an eval batch lost its actor, sending it again: %s", e)
                time.sleep(self.health["rollout"].cooldown_s)  # let Ray restart it
                todo.append((k, n, attempt + 1))
        bar.close()
        return [c.results() for c in collectors]

    def _live_actors(self) -> dict[str, list]:
        return {
            kind: [a for i, a in enumerate(pool) if i not in self.health[kind].retired]
            for kind, pool in (("rollout", self.actors.rollout), ("reward", self.actors.reward))
        }

    def _stop_actors(self) -> None:
        if self.actors is None:
            return
        for actor in [*self.actors.rollout, *self.actors.reward, self.actors.learner]:
            ray.kill(actor, no_restart=True)
        self.actors = None


def train_with_ray(cfg: FindRayConfig) -> TrainResult:
    return RayTrainer(cfg).run()


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> FindRayConfig:
    """A run folder's own config (plus overrides, e.g. more train.iterations)."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FindRayError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_config(config, [*(overrides or []), f"train.out_dir={run_dir}"])


def resume_with_ray(run_dir: str | Path, overrides: list[str] | None = None) -> TrainResult:
    """Continues a run from `run_dir/checkpoint`: version, store, counters, RNG state."""
    return RayTrainer(resume_config(run_dir, overrides), resume=True).run()
