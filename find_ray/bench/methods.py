"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets.

Every method starts from the same pipeline and is scored by the same exact reward on the same
eval noise (`algo.noise.seeded_normal`): k samples per prompt, paired with the base model's.

- base:      the pipeline as it is (the reference of every gain).
- best_of_n: N base samples, the reward picks one (inference-time selection; N x the NFE;
             computed from the base's eval samples, `bench.aggregate`).
- find:      per-prompt noise policies (the in-process FIND loop), evaluated at each budget.
- ddpo:      PPO over the DDIM eta = 1 chain on LoRA, the exact reward (no gradient needed).
- drtune:    LoRA tuned through the chain on the surrogate reward's gradient.
- dno:       the eval noises themselves optimised, per image, on the surrogate's gradient:
             an inference-time method, so its cost is inference NFE per image.

Training NFE counts every denoiser call of training (sampling, training passes and
recomputations, classifier-free guidance twice); inference NFE per image what one eval image
costs. DNO and DRTune need a differentiable reward: on the shapes world a small CNN trained on
base images to predict the detector (`baselines.surrogate`, its accuracy in the report); every
method is evaluated with the exact reward only. A trained method runs budget by budget in its
cell (`bench.cells`): each budget's evaluation is saved with the training state there, and a
rerun goes on from the last one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.ddpo import DDPOTrainer
from find_ray.baselines.dno import optimise_noise
from find_ray.baselines.drtune import DRTuneTrainer
from find_ray.baselines.flow_grpo import FlowGRPOTrainer
from find_ray.baselines.nfe import NFECounter
from find_ray.baselines.reno import ReNOConfig, optimise_initial_noise
from find_ray.bench.bench import Bench
from find_ray.bench.cells import Cell, Evaluation
from find_ray.config import FindRayConfig, load_config
from find_ray.eval.evaluate import policy_transform
from find_ray.eval.stats import finite_mean

# A runner advances a cell to a training-NFE budget and adds its evaluation there (trained
# methods), or runs the whole cell at once (inference-time methods: budget 0).
Runner = Callable[[Bench, Cell, int], None]


def run_base(bench: Bench, cell: Cell, budget: int) -> None:
    costs = {"budget": 0, "train_nfe": 0, "inference_nfe": bench.calls, "wall_s": 0.0}
    cell.add(Evaluation.of("N(0, I)", bench.base, **costs, kl=0.0), results=bench.base)


def run_find(bench: Bench, cell: Cell, budget: int) -> None:
    """The in-process FIND loop from the cell's last state until its training NFE reaches
    `budget`; the policy there evaluated on the eval noise (the same iterations as one
    unbroken run: rollout noise is keyed by rollout id, the learner's state is saved whole)."""
    from find_ray.algo.loop import FindLoop

    backend = bench.backend()
    cfg: FindRayConfig = load_config(None, [*bench.settings.find, f"train.seed={cell.key.seed}"])
    cfg.model, cfg.reward = bench.cfg.model, bench.cfg.reward
    cfg.train.iterations = 2**31 - 1  # the budget ends it
    counter = NFECounter(backend.pipe.unet, phase="train")
    loop = FindLoop(cfg, backend, bench.reward, bench.prompts)
    wall = _resume(cell, counter, loop)
    per_iteration = len(bench.prompts) * cfg.train.samples_per_prompt * bench.calls
    left = math.ceil(max(0, budget - counter["train"]) / per_iteration)
    start, rewards = time.perf_counter(), []
    for metrics in _bar(loop if left else (), cell.key.name, left, bench.progress):
        rewards.append(metrics.get("reward_mean"))  # none when every rollout was dropped
        if counter["train"] >= budget:
            break
    wall += time.perf_counter() - start
    policy = loop.learner.policy
    with counter.phase("eval"):
        results = bench.evaluate(backend, policy_transform(policy))
    with torch.no_grad():
        kl = float(policy.kl_to_standard_normal(torch.arange(len(bench.prompts)), "sum").mean())
    costs = {"train_nfe": counter["train"], "inference_nfe": bench.calls, "wall_s": wall}
    costs["train_reward"] = finite_mean(rewards)
    evaluation = Evaluation.of(f"{budget} NFE", results, budget=budget, **costs, kl=kl)
    cell.add(evaluation, _state(counter, wall, loop), results)


def _resume(cell: Cell, counter: NFECounter, trainer: Any) -> float:
    """Loads the cell's saved state into `trainer` and its NFE count into `counter`; returns
    the wall time trained so far (0 for a new cell)."""
    state = cell.state()
    if state is None:
        return 0.0
    trainer.load_state_dict(state["trainer"])
    counter.counts["train"] = int(state["train_nfe"])
    return float(state["wall_s"])


def _state(counter: NFECounter, wall_s: float, trainer: Any) -> dict[str, Any]:
    return {"trainer": trainer.state_dict(), "train_nfe": counter["train"], "wall_s": wall_s}


def _train_lora(
    bench: Bench, cell: Cell, budget: int, backend: Any, trainer: Any, step: Callable[[], float]
) -> None:
    """Steps a LoRA trainer (DDPO, DRTune, Flow-GRPO) on `backend`'s UNet from the cell's last
    state until its training NFE reaches `budget`, then evaluates the tuned pipeline. `step`
    runs one training step and returns its training samples' mean reward."""
    wall, rewards = _resume(cell, trainer.counter, trainer), []
    bar = _bar(None, cell.key.name, budget, bench.progress)
    bar.update(trainer.train_nfe)
    while trainer.train_nfe < budget:
        start, before = time.perf_counter(), trainer.train_nfe
        rewards.append(step())
        wall += time.perf_counter() - start
        bar.update(trainer.train_nfe - before)
    bar.close()
    with trainer.counter.phase("eval"):
        results = bench.evaluate(backend)
    costs = {"train_nfe": trainer.train_nfe, "inference_nfe": bench.calls, "wall_s": wall}
    costs["train_reward"] = finite_mean(rewards)
    cell.add(
        Evaluation.of(f"{budget} NFE", results, budget=budget, **costs),
        _state(trainer.counter, wall, trainer),
        results,
    )


def run_ddpo(bench: Bench, cell: Cell, budget: int) -> None:
    m, cfg, backend = bench.cfg.model, bench.settings.ddpo, bench.backend()
    chain = DenoisingChain(backend.pipe, m.steps, m.guidance, cfg.eta)
    trainer = DDPOTrainer(chain, bench.scores, bench.prompts, cfg, cell.key.seed)
    _train_lora(bench, cell, budget, backend, trainer, lambda: trainer.epoch()["reward_mean"])


def run_drtune(bench: Bench, cell: Cell, budget: int) -> None:
    m, cfg, backend = bench.cfg.model, bench.settings.drtune, bench.backend()
    chain = DenoisingChain(backend.pipe, m.steps, m.guidance, cfg.eta)
    reward = bench.differentiable_reward()
    trainer = DRTuneTrainer(chain, reward, bench.prompts, cfg, cell.key.seed)
    _train_lora(bench, cell, budget, backend, trainer, lambda: trainer.step().reward)


def run_flow_grpo(bench: Bench, cell: Cell, budget: int) -> None:
    cfg, backend = bench.settings.flow_grpo, bench.backend()
    chain = bench.chain(backend.pipe, cfg.noise_level)
    trainer = FlowGRPOTrainer(chain, bench.scores, bench.prompts, config=cfg, seed=cell.key.seed)
    _train_lora(bench, cell, budget, backend, trainer, lambda: trainer.epoch()["reward_mean"])


def _optimise_eval_noise(
    bench: Bench,
    cell: Cell,
    eta: float,
    targets: list[int],
    optimise: Callable[[Any, list[str], torch.Tensor], dict[int, torch.Tensor]],
    nfe: Callable[[int], int],
    counted: int,
) -> None:
    """An inference-time method on every eval image, from its eval noise, in batches of 32,
    through the model's chain at `eta`: optimise(chain, prompts, z) returns {t: images after t
    iterations} for each t of `targets`. Point t costs nfe(t) denoiser calls per image; the
    whole run `counted` per image (checked against the NFE counter)."""
    backend = bench.backend()
    chain = bench.chain(backend.pipe, eta)
    z = bench.eval_z(backend.latent_shape)
    prompts = [p for p in bench.prompts for _ in range(bench.settings.eval_samples)]
    counter = NFECounter(chain.unet)
    snapshots: dict[int, list[torch.Tensor]] = {t: [] for t in targets}
    start = time.perf_counter()
    for lo in _bar(range(0, len(z), 32), cell.key.name, math.ceil(len(z) / 32), bench.progress):
        for t, images in optimise(chain, prompts[lo : lo + 32], z[lo : lo + 32]).items():
            snapshots[t].append(images)
    wall = time.perf_counter() - start
    if counter["inference"] != len(prompts) * counted:
        raise RuntimeError(f"NFE {counter['inference']} != the accounted {len(prompts) * counted}")
    for t in targets:
        costs = {"budget": 0, "train_nfe": 0, "wall_s": wall * t / targets[-1]}
        results = bench.results_of(torch.cat(snapshots[t]))
        cell.add(Evaluation.of(f"{t} it", results, **costs, inference_nfe=nfe(t)), results=results)


def run_dno(bench: Bench, cell: Cell, budget: int) -> None:
    """DNO (z_T and every step noise, on the surrogate's gradient) per eval image. An
    iteration costs a forward chain and its checkpointed recomputation (2 T NFE, x2 under
    guidance); the image after t iterations one more chain. The bench renders a snapshot at
    each of `dno.iterations` from one run (counted, not charged to the points)."""
    s = bench.settings.dno
    reward, targets = bench.differentiable_reward(), sorted(set(s.iterations))
    generator = torch.Generator().manual_seed(cell.key.seed)

    def optimise(chain: Any, prompts: list[str], z: torch.Tensor) -> dict[int, torch.Tensor]:
        return optimise_noise(
            chain,
            prompts,
            reward,
            z_T=z,
            iterations=targets[-1],
            lr=s.lr,
            gamma=s.gamma,
            subsample=s.subsample,
            generator=generator,
            snapshots=targets,
        ).snapshots

    per_iteration, render = 2 * bench.calls, bench.calls
    counted = targets[-1] * per_iteration + len(targets) * render

    def nfe(t: int) -> int:
        return t * per_iteration + render

    _optimise_eval_noise(bench, cell, s.eta, targets, optimise, nfe, counted)


def run_reno(bench: Bench, cell: Cell, budget: int) -> None:
    """ReNO (z_T alone, its norm regulariser, the surrogate's gradient) per eval image through
    the deterministic sampler: t iterations render t times (backward passes call no denoiser);
    its snapshots are best-so-far images and cost nothing more."""
    s = bench.settings.reno
    reward, targets = bench.differentiable_reward(), sorted(set(s.iterations))
    config = ReNOConfig(targets[-1], s.lr, grad_clip=s.grad_clip, reg_weight=s.reg_weight)

    def optimise(chain: Any, prompts: list[str], z: torch.Tensor) -> dict[int, torch.Tensor]:
        return optimise_initial_noise(
            chain, prompts, reward, z, config, snapshots=targets
        ).snapshots

    def nfe(t: int) -> int:
        return t * bench.calls

    _optimise_eval_noise(bench, cell, 0.0, targets, optimise, nfe, nfe(targets[-1]))


RUNNERS: dict[str, Runner] = {
    "base": run_base,
    "find": run_find,
    "ddpo": run_ddpo,
    "drtune": run_drtune,
    "dno": run_dno,
    "flow_grpo": run_flow_grpo,
    "reno": run_reno,
}


def _bar(iterable, desc: str, total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress)
