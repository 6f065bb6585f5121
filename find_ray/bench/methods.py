"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets.

Every method starts from the same pipeline and is scored by the same exact reward on the same
eval noise (`algo.noise.seeded_normal`): k samples per prompt, paired with the base model's.

- base:      the pipeline as it is (the reference of every gain).
- best_of_n: N base samples, the reward picks one (inference-time selection; N x the NFE).
- find:      per-prompt noise policies (the in-process FIND loop), evaluated whenever its
             training NFE passes a budget.
- ddpo:      PPO over the DDIM eta = 1 chain on LoRA, the exact reward (no gradient needed).
- drtune:    LoRA tuned through the chain on the surrogate reward's gradient.
- dno:       the eval noises themselves optimised, per image, on the surrogate's gradient:
             an inference-time method, so its cost is inference NFE per image.

Training NFE counts every denoiser call of training (sampling, training passes and
recomputations, classifier-free guidance twice); inference NFE per image what one eval image
costs. DNO and DRTune need a differentiable reward: on the shapes world a small CNN trained on
base images to predict the detector (`baselines.surrogate`, its accuracy in the report); every
method is evaluated with the exact reward only. Each method's points are saved when it ends;
a rerun reads them instead of training again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from find_ray.algo.gaussian import standard_normal_kl
from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.ddpo import DDPOTrainer
from find_ray.baselines.dno import optimise_noise
from find_ray.baselines.drtune import DRTuneTrainer
from find_ray.baselines.nfe import NFECounter
from find_ray.bench.bench import Bench, Point
from find_ray.config import FindRayConfig, load_config
from find_ray.errors import ConfigError
from find_ray.eval.evaluate import PromptResult, policy_transform
from find_ray.eval.stats import expected_best_of


def _crossed(budgets: list[int], before: int, after: int) -> list[int]:
    return [b for b in sorted(budgets) if before < b <= after]


def run_base(bench: Bench) -> list[Point]:
    return [bench.point("base", "N(0, I)", bench.base, 0, bench.calls, 0.0, kl=0.0)]


def run_best_of_n(bench: Bench) -> list[Point]:
    """The base's best-of-N (`best_of_points` of its eval samples)."""
    return best_of_points(bench, "best_of_n", bench.base, 0, 0.0)


def best_of_points(
    bench: Bench, method: str, results: list[PromptResult], train_nfe: int, wall_s: float
) -> list[Point]:
    """Expected best-of-N exact match and score from a result's k samples per prompt (the
    exact order statistic of drawing N of k; the shapes reward is 1 exactly when the match is
    exact, so picking by reward picks an exact sample whenever there is one), for each N of
    bench.best_of, against the base's one sample. Not paired per sample: its CI resamples
    each prompt's pool."""
    rng = np.random.default_rng(bench.settings.seed)
    exact, scores = np.stack([r.exact for r in results]), np.stack([r.scores for r in results])
    base_exact = float(np.mean([r.exact.mean() for r in bench.base]))
    base_score = float(np.mean([r.scores.mean() for r in bench.base]))
    k, points = exact.shape[1], []
    for n in bench.settings.best_of:
        if n > k:
            raise ConfigError(f"config key 'bench.best_of': N={n} > eval_samples={k}")

        def best(x: np.ndarray, n: int = n) -> float:
            return float(np.mean([expected_best_of(row, n) for row in x]))

        boot = [
            best(np.take_along_axis(exact, rng.integers(0, k, exact.shape), 1)) for _ in range(200)
        ]
        low, high = np.quantile(boot, [0.025, 0.975]) - base_exact
        e, s = best(exact), best(scores)
        points.append(
            Point(
                *(method, f"N={n}", train_nfe, float(n * bench.calls), wall_s, e),
                *((e - base_exact, float(low), float(high)), s),
                *((s - base_score, math.nan, math.nan), math.nan),
            )
        )
    return points


def run_find(bench: Bench) -> list[Point]:
    """The in-process FIND loop on the bench prompts until the largest budget; evaluated at
    each budget it passes."""
    from find_ray.algo.loop import FindLoop

    s, backend = bench.settings, bench.backend()
    cfg: FindRayConfig = load_config(None, [*s.find, f"train.seed={s.seed}"])
    per_iteration = len(bench.prompts) * cfg.train.samples_per_prompt * bench.calls
    iterations = cfg.train.iterations = math.ceil(max(s.budgets) / per_iteration)
    cfg.model, cfg.reward = bench.cfg.model, bench.cfg.reward
    counter = NFECounter(backend.pipe.unet, phase="train")
    loop = FindLoop(cfg, backend, bench.reward, bench.prompts)
    points, wall, done = [], 0.0, 0
    start = time.perf_counter()
    for _ in _bar(loop, "find", iterations, bench.progress):
        wall += time.perf_counter() - start
        for budget in _crossed(s.budgets, done, counter["train"]):
            policy = loop.learner.policy
            with counter.phase("eval"):
                results = bench.evaluate(backend, policy_transform(policy))
            with torch.no_grad():
                mu, sigma = policy.mean_std(torch.arange(len(bench.prompts)))
                kl = float(standard_normal_kl(mu, sigma).mean())
            points.append(
                bench.point(
                    "find", f"{budget} NFE", results, counter["train"], bench.calls, wall, kl
                )
            )
        done = counter["train"]
        start = time.perf_counter()
    if not points:
        raise RuntimeError(f"FIND crossed no budget of {s.budgets} in {iterations} iterations")
    # the policy at the largest budget as the proposal of best-of-N
    return points + best_of_points(bench, "find_best_of_n", results, points[-1].train_nfe, wall)


def _train_lora(bench: Bench, method: str, make_trainer, step: str) -> list[Point]:
    """Steps a LoRA trainer (DDPO, DRTune) on a fresh pipeline until the largest budget,
    evaluating the tuned pipeline at each budget it passes."""
    s, backend = bench.settings, bench.backend()
    trainer = make_trainer(backend.pipe)
    points, wall, done = [], 0.0, 0
    total = max(s.budgets)
    bar = _bar(None, method, total, bench.progress)
    while done < total:
        start = time.perf_counter()
        getattr(trainer, step)()
        wall += time.perf_counter() - start
        bar.update(trainer.train_nfe - done)
        for budget in _crossed(s.budgets, done, trainer.train_nfe):
            results = bench.evaluate(backend)
            points.append(
                bench.point(method, f"{budget} NFE", results, trainer.train_nfe, bench.calls, wall)
            )
        done = trainer.train_nfe
    bar.close()
    return points


def run_ddpo(bench: Bench) -> list[Point]:
    m, cfg = bench.cfg.model, bench.settings.ddpo

    def make(pipe):
        chain = DenoisingChain(pipe, m.steps, m.guidance, cfg.eta)
        return DDPOTrainer(chain, bench.scores, bench.prompts, cfg, bench.settings.seed)

    return _train_lora(bench, "ddpo", make, "epoch")


def run_drtune(bench: Bench) -> list[Point]:
    m, cfg = bench.cfg.model, bench.settings.drtune
    reward = bench.differentiable_reward()

    def make(pipe):
        chain = DenoisingChain(pipe, m.steps, m.guidance, cfg.eta)
        return DRTuneTrainer(chain, reward, bench.prompts, cfg, bench.settings.seed)

    return _train_lora(bench, "drtune", make, "step")


def run_dno(bench: Bench) -> list[Point]:
    """DNO on every eval image, from its eval noise, snapshots after each count of
    `dno.iterations`. An iteration costs a forward chain and its checkpointed recomputation
    (2 T NFE, x2 under guidance) and a snapshot one more chain: what one image of that point
    cost, checked against the NFE counter."""
    s, m = bench.settings, bench.cfg.model
    backend = bench.backend()
    chain = DenoisingChain(backend.pipe, m.steps, m.guidance, s.dno.eta)
    reward = bench.differentiable_reward()
    z = bench.eval_z(backend.latent_shape)
    prompts = [p for p in bench.prompts for _ in range(s.eval_samples)]
    counter = NFECounter(chain.unet)
    generator = torch.Generator().manual_seed(s.seed)
    targets = sorted(set(s.dno.iterations))
    snapshots: dict[int, list[torch.Tensor]] = {t: [] for t in targets}
    start = time.perf_counter()
    for lo in _bar(range(0, len(z), 32), "dno", math.ceil(len(z) / 32), bench.progress):
        result = optimise_noise(
            chain,
            prompts[lo : lo + 32],
            reward,
            z_T=z[lo : lo + 32],
            iterations=targets[-1],
            lr=s.dno.lr,
            gamma=s.dno.gamma,
            subsample=s.dno.subsample,
            generator=generator,
            snapshots=targets,
        )
        for t in targets:
            snapshots[t].append(result.snapshots[t])
    wall = time.perf_counter() - start
    per_iteration, render = 2 * bench.calls, bench.calls
    expected = len(prompts) * (targets[-1] * per_iteration + len(targets) * render)
    if counter["inference"] != expected:
        raise RuntimeError(f"DNO NFE {counter['inference']} != the accounted {expected}")
    return [
        bench.point(
            "dno",
            f"{t} it",
            bench.results_of(torch.cat(snapshots[t])),
            0,
            t * per_iteration + render,
            wall * t / targets[-1],
        )
        for t in targets
    ]


RUNNERS: dict[str, Callable[[Bench], list[Point]]] = {
    "base": run_base,
    "best_of_n": run_best_of_n,
    "find": run_find,
    "ddpo": run_ddpo,
    "drtune": run_drtune,
    "dno": run_dno,
}


def _bar(iterable, desc: str, total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress)
