"""AlignedGenerator: a run's backend, reward and noise policy behind one `generate` call.

Plain Python (no Ray): the Serve deployment holds one, the overhead benchmark calls it
directly. Image i of a request is sampled from seed + i: eps = randn(seed + i), z_T = eps
under the base policy and the trained policy's latent for eps (`RunPolicy.noise`: mu_c +
sigma_c * eps, projected onto the Gaussian shell under `policy.shell: project`) under the
trained one, so base and trained images from the same seed are a paired comparison. With
best_of N, image i is the reward's pick of the seeds `Job.candidate_seeds` names.
"""

from __future__ import annotations

import itertools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from find_ray.algo.noise import candidate_seeds, normals_by_index
from find_ray.backends import Backend, denoiser_calls, make_backend
from find_ray.backends.loading import check_model
from find_ray.config import RewardConfig
from find_ray.errors import FindRayError
from find_ray.eval.evaluate import best_of_picks
from find_ray.eval.shell import shell_radius
from find_ray.prompts import train_prompts
from find_ray.rewards import RewardFn, check_prompts, evaluation_reward
from find_ray.runs.folder import RunPolicy, load_run_policy, read_run_config
from find_ray.serve.schema import MAX_CANDIDATES, RequestError

log = logging.getLogger(__name__)

# Rewards cheap enough to score every served image (no second model to run).
CHEAP_REWARDS = frozenset({"shapes", "brightness"})


@dataclass
class Job:
    """One request: n images of one prompt from seeds seed..seed+n-1."""

    prompt: str
    n: int
    seed: int
    steps: int
    guidance: float
    policy: str  # trained | base
    calls_per_image: int  # denoiser passes per image (CFG doubles each step; x best_of)
    best_of: int = 1  # candidates per image, the reward keeps the best

    def candidate_seeds(self) -> list[int]:
        """Seeds of every candidate (`algo.noise.candidate_seeds`)."""
        return candidate_seeds(self.seed, self.n, self.best_of)


@dataclass
class JobResult:
    images: torch.Tensor  # (n, 3, H, W) in [0, 1]
    policy_version: int
    seeds: list[int]  # each image's noise seed
    rewards: list[float] | None = None
    metrics: list[dict[str, float]] = field(default_factory=list)


@dataclass
class RunInfo:
    prompts: list[str]  # prompts with a trained policy (amortized: the training prompts)
    reward: RewardConfig
    steps: int  # the run's sampler defaults
    guidance: float
    version: int
    amortized: bool = False  # the policy generates for any prompt
    scored: bool = False  # images are scored by the run's reward (needed for best_of)
    family: str = ""  # the pipeline's family ("" simulated): how many denoiser calls a step is

    @property
    def policies(self) -> list[str]:
        return ["trained", "base"] if self.prompts else ["base"]

    def job(
        self,
        prompt: str,
        n: int,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        policy: str = "auto",
        best_of: int = 1,
    ) -> Job:
        """A job with the run's sampler defaults filled in and its policy kind chosen: trained
        when the run's policy covers the prompt (unless base is asked for), else base."""
        try:
            check_prompts(self.reward, [prompt])
        except FindRayError as e:
            raise RequestError(422, f"field 'prompt': {e}", "prompt") from None
        trained = self.amortized or prompt in self.prompts
        if policy == "trained" and not trained:
            why = f"field 'policy': prompt {prompt!r} has no trained policy in this run"
            raise RequestError(422, why, "policy")
        steps = self.steps if steps is None else steps
        guidance = self.guidance if guidance is None else guidance
        if n * best_of > MAX_CANDIDATES:
            why = f"field 'best_of': n x best_of = {n * best_of} > {MAX_CANDIDATES} samples"
            raise RequestError(422, why, "best_of")
        if best_of > 1 and not self.scored:
            why = "field 'best_of': needs the run's reward at serve time (find-ray serve --score)"
            raise RequestError(422, why, "best_of")
        kind = "trained" if trained and policy != "base" else "base"
        calls = best_of * denoiser_calls(steps, guidance, self.family)
        return Job(prompt, n, seed, steps, guidance, kind, calls, best_of)


class PipelineWedged(FindRayError):
    """A batch has been in the pipeline longer than `wedged_after_s`: the replica is unhealthy."""


class BatchClock:
    """When each batch in the pipeline started; `check` fails once one runs too long.

    A hung pipeline call (a deadlocked kernel, a stuck device) never returns, so its batch
    stays in `started`; the replica's `check_health` calls `check` and Serve replaces it.
    """

    def __init__(self, wedged_after_s: float = 300.0) -> None:
        self.wedged_after_s = wedged_after_s
        self.started: dict[int, float] = {}
        self._tokens = itertools.count()

    @contextmanager
    def batch(self):
        token = next(self._tokens)
        self.started[token] = time.monotonic()
        try:
            yield
        finally:
            del self.started[token]

    def check(self, now: float | None = None) -> None:
        if not self.started:
            return
        age = (time.monotonic() if now is None else now) - min(self.started.values())
        if age > self.wedged_after_s:
            raise PipelineWedged(
                f"pipeline wedged: a batch has run {age:.0f} s > wedged_after_s = "
                f"{self.wedged_after_s:g} s"
            )


class AlignedGenerator:
    """Generates with the newest noise policy of a run folder; `reload` picks up a newer one."""

    def __init__(self, run_dir: str, score: bool | None = None) -> None:
        self.run_dir = run_dir
        self.cfg = read_run_config(run_dir)
        self.run_prompts = train_prompts(self.cfg)
        self.run: RunPolicy = load_run_policy(run_dir, self.run_prompts)
        self.backend: Backend = make_backend(self.cfg.model)
        self.family = check_model(self.cfg.model)  # read once: describe() answers every probe
        if tuple(self.run.policy.shape) != tuple(self.backend.latent_shape):
            raise FindRayError(
                f"{self.run.path}: policy shape {self.run.policy.shape} does not fit the model's "
                f"latent {self.backend.latent_shape}"
            )
        self.score = self.cfg.reward.name in CHEAP_REWARDS if score is None else score
        self.reward: RewardFn | None = evaluation_reward(self.cfg) if self.score else None

    @property
    def version(self) -> int:
        return self.run.version

    @property
    def prompts(self) -> list[str]:
        return self.run.prompts

    def reload(self) -> bool:
        """Loads a newer policy if the run folder has one; keeps the current one on any error."""
        try:
            newer = load_run_policy(self.run_dir, self.run_prompts)
        except FindRayError as e:  # a checkpoint mid-swap, say: serve on, try at the next poll
            log.warning("policy reload skipped: %s", e)
            return False
        if newer.version <= self.run.version:
            return False
        self.run = newer  # one assignment: a batch in flight keeps the policy it started with
        log.info("loaded policy version %d from %s", newer.version, newer.path)
        return True

    def noise(self, job: Job, run: RunPolicy) -> torch.Tensor:
        """Every candidate's initial latent, image-major (`Job.candidate_seeds`)."""
        eps = normals_by_index(self.backend.latent_shape, job.candidate_seeds())
        if job.policy == "base":
            return eps
        return run.noise(job.prompt, eps, self.backend.encode_prompts)

    def generate(self, jobs: list[Job]) -> list[JobResult]:
        """All jobs, one pipeline call per group of equal sampler settings."""
        run = self.run
        results: list[JobResult | None] = [None] * len(jobs)
        groups: dict[tuple[int, float], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.steps, job.guidance), []).append(i)
        for (steps, guidance), members in groups.items():
            batch = [jobs[i] for i in members]
            z = torch.cat([self.noise(job, run) for job in batch])
            prompts = [job.prompt for job in batch for _ in range(job.n * job.best_of)]
            seeds = [s for job in batch for s in job.candidate_seeds()]
            images = self.backend.generate(z, prompts, steps=steps, guidance=guidance, seed=seeds)
            scored = self._score(images, prompts, shell_radius(z))
            start = 0
            for i, job in zip(members, batch, strict=True):
                part = range(start, start + job.n * job.best_of)
                start += len(part)
                results[i] = self._result(job, images, scored, list(part), seeds, run.version)
        return results  # type: ignore[return-value]

    @staticmethod
    def _result(
        job: Job, images: torch.Tensor, scored, part: list[int], seeds: list[int], version: int
    ) -> JobResult:
        """One job's images out of its batch: under best_of, the reward's pick of each group
        of candidates (the batch's rows `part`)."""
        if scored is None:
            return JobResult(images[part], version, [seeds[r] for r in part])
        rewards, metrics = scored
        if job.best_of > 1:
            picks = best_of_picks(np.array([rewards[r] for r in part]), job.best_of)
            part = [part[p] for p in picks]
        kept = [rewards[r] for r in part]
        return JobResult(
            images[part], version, [seeds[r] for r in part], kept, [metrics[r] for r in part]
        )

    def _score(
        self, images: torch.Tensor, prompts: list[str], shell: np.ndarray
    ) -> tuple[list[float], list[dict[str, float]]] | None:
        """Rewards and per-image metrics (the reward's, quality, ||z_T||^2 / d as `shell`)."""
        if self.reward is None:
            return None
        scores, info = self.reward(images, prompts)
        metrics = [{k: float(v[i]) for k, v in info.items()} for i in range(len(prompts))]
        for m, radius in zip(metrics, shell, strict=True):
            m["shell"] = float(radius)
        return [float(s) for s in scores], metrics

    def describe(self) -> RunInfo:
        """What the ingress needs to validate requests and answer GET /prompts."""
        model = self.cfg.model
        run = self.run
        return RunInfo(
            list(run.prompts),
            self.cfg.reward,
            model.steps,
            model.guidance,
            run.version,
            run.amortized,
            self.reward is not None,
            self.family,
        )
