"""Ray actors: thin wrappers that move data to and from the plain FIND classes.

Each class here is a plain Python class; `start_actors` turns them into Ray actors with the
resources the `ray:` config section asks for. No algorithm lives in this module. A failing
constructor is kept, not raised, on the first start: `actor_start` makes it one line.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor

from find_ray.algo.learner import Learner
from find_ray.algo.policy_files import policy_from_state
from find_ray.algo.rollout import RolloutWorker, score_rollouts
from find_ray.algo.store import PackedRollouts, pack_rollouts, prompt_table, unpack_rollouts
from find_ray.backends import make_backend
from find_ray.config import (
    EvalConfig,
    FindRayConfig,
    LearnerConfig,
    ModelConfig,
    PolicyConfig,
    RayConfig,
    Reduction,
)
from find_ray.eval.evaluate import EvalJob, policy_transform, sample_eval_batch, score_eval_batch
from find_ray.images import image_grid, to_uint8
from find_ray.rewards import ray_runtime_env, scorers
from find_ray.system.actor_start import (
    START_LOG,
    StartChecked,
    keeps_start_error,
    start_error,
    start_failure,
)

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 600.0

# Weights: one object per published version, a return value of the learner's call (so the
# driver owns it and it outlives a lost learner), as numpy arrays (Ray reads them ~10x faster
# than pickled tensors). A rollout call takes it as a top-level argument: Ray inlines a small one
# (< 100 KB) into the call, or hands a large one over through the node's object store before the
# call runs, so no call waits on a fetch from the learner; an actor rebuilds its policy only when
# the version is new to it.
Weights = dict[str, np.ndarray]


def wire_weights(weights: dict[str, Tensor]) -> Weights:
    """A policy's state dict in its wire form (`policy_weights` reverses it)."""
    return {name: tensor.numpy() for name, tensor in weights.items()}


def policy_weights(weights: Weights) -> dict[str, Tensor]:
    """The state dict back from its wire form (a copy: received arrays are read-only)."""
    return {name: torch.tensor(array) for name, array in weights.items()}


GRID_IMAGES = 8  # images in a TensorBoard rollout thumbnail


class RolloutActor(StartChecked):
    """One backend + RolloutWorker; loads the newest weights between batches."""

    @keeps_start_error
    def __init__(
        self,
        model: ModelConfig,
        prompts: list[str],
        batch_size: int,
        reduction: Reduction,
        seed: int,
        torch_threads: int,
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.prompts = prompts
        self.backend = make_backend(model)
        self.backend_device = model.device
        self.worker = RolloutWorker(self.backend, prompts, batch_size, reduction, seed)

    def pid(self) -> int:
        return os.getpid()

    def peak_memory_mib(self) -> float:
        return peak_memory_mib(self.backend_device)

    def describe(self) -> tuple[tuple[int, ...], Tensor]:
        """What the learner needs from the backend: latent shape and prompt embeddings."""
        return self.backend.latent_shape, self.backend.encode_prompts(self.prompts)

    def rollout(
        self, prompt_ids: list[int], rollout_ids: list[int], version: int, weights: Weights
    ) -> tuple[int, PackedRollouts, np.ndarray]:
        """(version used, unscored rollouts, images as numpy); the driver reads the version."""
        if version != self.worker.version:
            self.worker.set_weights(policy_weights(weights), version)
        rollouts, images = self.worker.rollout(prompt_ids, rollout_ids)
        return (
            self.worker.version,
            pack_rollouts(rollouts, self.backend.latent_shape),
            images.numpy(),
        )

    def eval_images(
        self, cfg: EvalConfig, weights: dict[str, Tensor] | None, n: int, batch: list[EvalJob]
    ) -> Tensor:
        """Images of eval batch `n` under the base policy (weights None) or trained weights;
        the reward actors score them (a reward model never loads in a rollout actor)."""
        transform = None
        if weights is not None:
            transform = policy_transform(policy_from_state(weights))
        k, seed, size = cfg.samples_per_prompt * cfg.best_of, cfg.seed, cfg.batch_size
        return sample_eval_batch(self.backend, self.prompts, batch, n, k, seed, size, transform)


@dataclass
class ScoreSummary:
    """What the driver learns from a reward call (the rollouts themselves go to the learner)."""

    kept: list[tuple[int, int, float]]  # (rollout id, prompt's row in the suite, reward)
    dropped: dict[str, list[int]]  # reason -> rollout ids
    grids: dict[int, np.ndarray] = field(default_factory=dict)  # prompt -> labelled thumbnail


class RewardActor(StartChecked):
    """Scores images by object ref; failures and NaN/inf become counted drops. Rollouts get the
    training reward, eval batches the reward with the quality figures beside it."""

    @keeps_start_error
    def __init__(self, cfg: FindRayConfig, prompts: list[str], torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)
        self.reward, self.eval_reward = scorers(cfg)  # one model each, shared
        self.prompts = prompts
        self.prompt_rows = prompt_table(prompts)

    def pid(self) -> int:
        return os.getpid()

    def score(
        self, grid_prompts: list[int], *batches: PackedRollouts | np.ndarray
    ) -> tuple[ScoreSummary, PackedRollouts]:
        """Scores rollout batches passed as refs (rollouts_1, images_1, rollouts_2, ...) in one
        call, and draws a thumbnail of each prompt in `grid_prompts` from its kept rollouts."""
        rollouts = [r for part in batches[0::2] for r in unpack_rollouts(part)]
        images = torch.from_numpy(np.concatenate(batches[1::2]))
        kept, dropped = score_rollouts(self.reward, rollouts, images)
        summary = ScoreSummary(
            [(r.rollout_id, self.prompt_rows[r.prompt], r.reward) for r in kept], dropped
        )
        rewards = {r.rollout_id: r.reward for r in kept}
        for prompt in grid_prompts:
            shown = [
                n
                for n, r in enumerate(rollouts)
                if r.rollout_id in rewards and r.prompt == self.prompts[prompt]
            ][:GRID_IMAGES]
            if shown:
                labels = [f"{rewards[rollouts[n].rollout_id]:.2f}" for n in shown]
                grid = image_grid(to_uint8(images[shown]), labels, title=self.prompts[prompt])
                summary.grids[prompt] = np.asarray(grid)
        return summary, pack_rollouts(kept, batches[0].z.shape[1:])

    def score_eval(
        self, images: Tensor, prompts: list[str], rows: list[int]
    ) -> tuple[Tensor, dict[str, Tensor], np.ndarray, np.ndarray]:
        """An eval batch's scores and figures, the uint8 thumbnails of its grid rows and the
        diversity features of its images (`score_eval_batch`)."""
        return score_eval_batch(self.eval_reward, images, prompts, rows)


class LearnerActor(StartChecked):
    """The Learner (store, DRCM, policies); returns each published version's weights once."""

    @keeps_start_error
    def __init__(
        self,
        cfg: LearnerConfig,
        latent_shape: tuple[int, ...],
        prompts: list[str],
        embeddings: Tensor,
        seed: int,
        torch_threads: int,
        policy: PolicyConfig | None = None,
    ) -> None:
        torch.set_num_threads(torch_threads)
        self.learner = Learner(cfg, latent_shape, prompts, embeddings, seed, policy)
        self.busy_s = 0.0  # time spent in add/update: learner utilisation = busy / wall
        self.cpu_s = 0.0  # CPU time of this thread in add/update (busy_s counts waits for a core)

    def add(self, *batches: PackedRollouts) -> dict[str, Any]:
        """Stores batches of rollouts (refs resolved by Ray); returns the stale ids and the
        policy lag of each rollout."""
        began, cpu = time.perf_counter(), time.thread_time()
        rollouts = [r for batch in batches for r in unpack_rollouts(batch)]
        version = self.learner.version
        stale = self.learner.add(rollouts)
        self.busy_s += time.perf_counter() - began
        self.cpu_s += time.thread_time() - cpu
        return {"stale": stale, "lags": [version - r.policy_version for r in rollouts]}

    def update(self, publish: bool) -> tuple[tuple[dict[str, float], int], Weights | None]:
        """One new version: ((metrics, version), its weights if `publish`). Called with two
        returns, so the weights are an object of their own that the driver passes on."""
        began, cpu = time.perf_counter(), time.thread_time()
        metrics = self.learner.update()
        weights = wire_weights(self.learner.weights()[0]) if publish else None
        self.busy_s += time.perf_counter() - began
        self.cpu_s += time.thread_time() - cpu
        metrics["learner_busy_s"], metrics["learner_cpu_s"] = self.busy_s, self.cpu_s
        return (metrics, self.learner.version), weights

    def publish(self) -> tuple[int, Weights]:
        """(version, weights); called with two returns, as `update`."""
        weights, version = self.learner.weights()
        return version, wire_weights(weights)

    def weights(self) -> tuple[dict[str, Tensor], int]:
        return self.learner.weights()

    def weights_bytes(self) -> int:
        """Size of one broadcast (no copy of the weights is made to count it)."""
        return sum(t.numel() * t.element_size() for t in self.learner.policy.state_dict().values())

    def state_dict(self) -> dict[str, Any]:
        return {**self.learner.state_dict(), "busy_s": self.busy_s, "cpu_s": self.cpu_s}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        self.learner.load_state_dict(state)
        self.busy_s = float(state.get("busy_s", 0.0))
        self.cpu_s = float(state.get("cpu_s", 0.0))
        return self.learner.version


def peak_memory_mib(device: str) -> float:
    """Peak memory of this process: allocated CUDA memory on a GPU, else the resident set."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _options(
    r: RayConfig, kind: str, max_restarts: int, runtime_env: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ray options of one kind of actor ("rollout", "reward", "learner") from `ray.*`, and its
    own Ray runtime_env when given (the reward actors': `reward.runtime_env`)."""
    return {
        "num_cpus": getattr(r, f"{kind}_num_cpus"),
        "num_gpus": getattr(r, f"{kind}_num_gpus"),
        "resources": dict(getattr(r, f"{kind}_resources")),
        "max_restarts": max_restarts,
        "max_task_retries": 0,  # the driver resubmits lost work itself, and counts it
        **({"runtime_env": runtime_env} if runtime_env else {}),
    }


@dataclass
class Actors:
    rollout: list[Any]
    reward: list[Any]
    learner: Any
    described: tuple[tuple[int, ...], Tensor] | None = None  # latent shape, prompt embeddings


def start_actors(cfg: FindRayConfig, prompts: list[str]) -> Actors:
    """Rollout and reward pools, then the learner (it needs the backend's latent shape). An
    actor whose constructor fails stops them all: ActorStartError, one line (`actor_start`)."""
    r, start_log = cfg.ray, Path(cfg.train.out_dir) / START_LOG
    rollout_cls = ray.remote(RolloutActor).options(**_options(r, "rollout", r.max_restarts))
    rollout = [
        rollout_cls.remote(
            cfg.model,
            prompts,
            cfg.train.rollout_batch_size,
            cfg.learner.loss.logp_reduction,
            cfg.train.seed,
            r.torch_threads,
        )
        for _ in range(r.num_rollout_actors)
    ]
    env = ray_runtime_env(cfg.reward)  # the reward actors' own packages, variables and files
    reward_cls = ray.remote(RewardActor).options(**_options(r, "reward", r.max_restarts, env))
    reward = [reward_cls.remote(cfg, prompts, r.torch_threads) for _ in range(r.num_reward_actors)]
    actors = Actors(rollout, reward, None)
    try:
        wait_until_started([*_named(actors, "rollout")[:1], *_named(actors, "reward")], start_log)
        actors.described = ray.get(rollout[0].describe.remote())
        actors.learner = _start_learner(cfg, prompts, actors.described)
        later = [*_named(actors, "rollout")[1:], ("learner actor", actors.learner)]
        wait_until_started(later, start_log)
    except BaseException:
        stop_actors([*rollout, *reward, *([actors.learner] if actors.learner else [])])
        raise
    return actors


def _start_learner(
    cfg: FindRayConfig, prompts: list[str], described: tuple[tuple[int, ...], Tensor]
) -> Any:
    latent_shape, embeddings = described
    r = cfg.ray
    cls = ray.remote(LearnerActor).options(**_options(r, "learner", 0))
    args = (cfg.learner, latent_shape, prompts, embeddings, cfg.train.seed, r.torch_threads)
    return cls.remote(*args, cfg.policy)


def restart_learner(cfg: FindRayConfig, prompts: list[str], actors: Actors) -> Any:
    """A new learner actor in place of one that died (its state is the caller's to restore)."""
    stop_actors([actors.learner])
    learner = _start_learner(cfg, prompts, actors.described)
    wait_until_started([("learner actor", learner)], Path(cfg.train.out_dir) / START_LOG)
    return learner


def stop_actors(handles: list[Any]) -> None:
    """Kills the actors for good (no restart); one already gone is no error."""
    for actor in handles:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - a dead actor's handle may refuse
            log.debug("could not kill an actor: %s", e)


def _named(actors: Actors, kind: str) -> list[tuple[str, Any]]:
    return [(f"{kind} actor {n}", a) for n, a in enumerate(getattr(actors, kind))]


def wait_until_started(
    named: list[tuple[str, Any]], start_log: Path, timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    """Blocks until every actor (name, handle) has run its constructor (loading a pipeline
    takes seconds), so training starts with the whole pool and its clock excludes start-up.
    The first that failed raises ActorStartError, its traceback written to `start_log`.
    Actors still starting after `timeout_s` (e.g. waiting for a GPU) are left to the driver,
    which handles them as any slow actor."""
    names = {actor.started.remote(): name for name, actor in named}
    waiting, deadline = list(names), time.monotonic() + timeout_s
    while waiting:
        left = max(0.0, deadline - time.monotonic())
        ready, waiting = ray.wait(waiting, num_returns=1, timeout=left)
        if not ready:
            break
        error = start_error(ready[0])
        if error is not None:
            raise start_failure(names[ready[0]], error, start_log)
    if waiting:
        log.warning("%d of %d actors not started after %.0f s", len(waiting), len(names), timeout_s)
