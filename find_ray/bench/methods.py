"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets.

Every method starts from the same pipeline and is scored by the same exact reward on the same
eval noise (`evaluate.eval_noise`): k samples per prompt, paired with the base model's.

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

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from find_ray.algo.policy import standard_normal_kl
from find_ray.backends import denoiser_calls, make_backend
from find_ray.baselines.chain import DenoisingChain
from find_ray.baselines.ddpo import DDPOConfig, DDPOTrainer
from find_ray.baselines.dno import optimise_noise
from find_ray.baselines.drtune import DRTuneConfig, DRTuneTrainer
from find_ray.baselines.nfe import NFECounter
from find_ray.config import (
    FindRayConfig,
    ModelConfig,
    RewardConfig,
    load_config,
    load_structured,
)
from find_ray.errors import ConfigError
from find_ray.eval.evaluate import (
    PromptResult,
    eval_noise,
    evaluate,
    policy_transform,
    score_plan,
)
from find_ray.eval.stats import expected_best_of, paired_bootstrap_ci
from find_ray.prompts import load_suite
from find_ray.rewards import make_differentiable_reward, make_reward

METHODS = ("base", "best_of_n", "find", "ddpo", "drtune", "dno")


@dataclass
class DNOSettings:
    iterations: list[int] = field(default_factory=lambda: [2, 5, 10])  # eval points
    lr: float = 0.01
    gamma: float = 0.1  # probability-regulariser weight
    subsample: int = 1
    eta: float = 1.0


@dataclass
class SurrogateSettings:
    images_per_prompt: int = 64  # base images generated to train it (seeds apart from eval)
    epochs: int = 20
    lr: float = 3e-3


@dataclass
class BenchSettings:
    prompts: list[str] = field(default_factory=list)  # explicit prompts (else the suite's)
    suite: str = "train"
    max_prompts: int = 4
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budgets: list[int] = field(default_factory=lambda: [4000, 16000])  # training NFE
    eval_samples: int = 16  # k images per prompt, the same eval noise for every method
    eval_seed: int = 1234
    seed: int = 0
    best_of: list[int] = field(default_factory=lambda: [2, 4, 8])
    find: list[str] = field(default_factory=list)  # FindRayConfig overrides (learner, train)
    ddpo: DDPOConfig = field(default_factory=DDPOConfig)
    drtune: DRTuneConfig = field(default_factory=DRTuneConfig)
    dno: DNOSettings = field(default_factory=DNOSettings)
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    out_dir: str = "benchmarks/results/bench"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"config key 'bench.methods': unknown {unknown}; known {METHODS}")
        if not self.budgets or min(self.budgets) < 1:
            raise ConfigError("config key 'bench.budgets': one or more positive NFE budgets")
        if self.eval_samples < 2:
            raise ConfigError("config key 'bench.eval_samples': must be >= 2")


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    bench: BenchSettings = field(default_factory=BenchSettings)


def load_bench_config(path: str | Path | None, overrides: list[str] | None = None) -> BenchConfig:
    """The validated bench config from a YAML file and `key=value` overrides."""
    return load_structured(BenchConfig, path, overrides)


@dataclass
class Point:
    """One evaluated result of a method: a row of the table, a point of the plot."""

    method: str
    label: str  # e.g. "N=4", "16000 NFE", "10 it"
    train_nfe: int
    inference_nfe: float  # per eval image
    wall_s: float  # training (or optimisation) time up to this point
    exact: float
    exact_gain: tuple[float, float, float]  # vs base: (gain, low, high), paired 95 % CI
    score: float
    score_gain: tuple[float, float, float]
    diversity_ratio: float  # mean over prompts of this point's diversity / the base's
    kl: float = math.nan  # KL of the result's noise distribution from N(0, I), where defined


class Bench:
    """What every method shares: config, prompts, the exact reward, the base's eval."""

    def __init__(self, cfg: BenchConfig, progress: bool = True):
        self.cfg, self.s, self.progress = cfg, cfg.bench, progress
        prompts = list(self.s.prompts) or load_suite(self.s.suite)
        self.prompts = prompts[: self.s.max_prompts] if self.s.max_prompts else prompts
        self.reward = make_reward(cfg.reward)
        self.out = Path(self.s.out_dir)
        self.calls = denoiser_calls(cfg.model.steps, cfg.model.guidance)
        self._base: list[PromptResult] | None = None
        self._surrogate: Callable | None = None

    def backend(self):
        """A freshly loaded pipeline backend (methods that tune the UNet get their own)."""
        return make_backend(self.cfg.model)

    def scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The exact reward's scores (B,), for methods that train on it."""
        return self.reward(images, prompts)[0]

    def evaluate(self, backend, transform=None) -> list[PromptResult]:
        """The eval suite through `backend` (its pipeline as trained), paired eval noise."""
        s = self.s
        return evaluate(
            backend, self.reward, self.prompts, s.eval_samples, s.eval_seed, transform=transform
        )

    def eval_z(self, shape: tuple[int, ...]) -> torch.Tensor:
        """All eval noise, prompt-major (P * k, *shape): what `evaluate` draws."""
        k = self.s.eval_samples
        return torch.cat(
            [eval_noise(shape, i, k, self.s.eval_seed) for i in range(len(self.prompts))]
        )

    def results_of(self, images: torch.Tensor) -> list[PromptResult]:
        """Scores prompt-major images (P * k, ...) like `evaluate` does."""

        def images_of(n: int, batch: list) -> torch.Tensor:
            return images[n * 64 : n * 64 + len(batch)]

        return score_plan(self.reward, self.prompts, self.s.eval_samples, images_of, 64)

    @property
    def base(self) -> list[PromptResult]:
        if self._base is None:
            self._base = self.evaluate(self.backend())
        return self._base

    def point(
        self,
        method: str,
        label: str,
        results: list[PromptResult],
        train_nfe: int,
        inference_nfe: float,
        wall_s: float,
        kl: float = math.nan,
    ) -> Point:
        """A table row: `results` against the base on the same eval noise."""
        base = self.base
        exact = np.stack([r.exact for r in results])
        scores = np.stack([r.scores for r in results])
        ratio = np.nanmean([r.diversity / b.diversity for r, b in zip(results, base, strict=True)])
        return Point(
            method,
            label,
            int(train_nfe),
            float(inference_nfe),
            float(wall_s),
            float(exact.mean()),
            paired_bootstrap_ci(np.stack([b.exact for b in base]), exact),
            float(scores.mean()),
            paired_bootstrap_ci(np.stack([b.scores for b in base]), scores),
            float(ratio),
            kl,
        )

    def differentiable_reward(self) -> Callable:
        """The reward DNO and DRTune follow: the reward's own differentiable form, or on the
        shapes world (whose detector has none) the surrogate, trained once and cached in
        out/surrogate."""
        if self.cfg.reward.name != "shapes":
            return make_differentiable_reward(self.cfg.reward)
        if self._surrogate is None:
            from find_ray.baselines.surrogate import (
                SurrogateReward,
                load_surrogate,
                save_surrogate,
                train_surrogate,
            )

            folder = self.out / "surrogate"
            if not (folder / "surrogate.json").is_file():
                images = self._surrogate_images()
                net, report = train_surrogate(
                    images,
                    self.prompts,
                    epochs=self.s.surrogate.epochs,
                    lr=self.s.surrogate.lr,
                    seed=self.s.seed,
                    progress=self.progress,
                )
                save_surrogate(net, folder, report)
            self._surrogate = SurrogateReward(load_surrogate(folder))
        return self._surrogate

    def surrogate_report(self) -> dict:
        """The surrogate's held-out accuracy as saved beside it ({} when it was not trained)."""
        saved = self.out / "surrogate" / "surrogate.json"
        return json.loads(saved.read_text()).get("report") or {} if saved.is_file() else {}

    def _surrogate_images(self) -> torch.Tensor:
        """Base images of the bench prompts from noise seeds apart from the eval's."""
        backend, n = self.backend(), self.s.surrogate.images_per_prompt
        generator = torch.Generator().manual_seed(self.s.seed + 7_777)
        images = []
        for prompt in self.prompts:
            for start in range(0, n, 32):
                m = min(32, n - start)
                z = torch.randn((m, *backend.latent_shape), generator=generator)
                images.append(backend.generate(z, [prompt] * m, seed=start))
        return torch.cat(images)


def _crossed(budgets: list[int], before: int, after: int) -> list[int]:
    return [b for b in sorted(budgets) if before < b <= after]


def run_base(bench: Bench) -> list[Point]:
    return [bench.point("base", "N(0, I)", bench.base, 0, bench.calls, 0.0, kl=0.0)]


def run_best_of_n(bench: Bench) -> list[Point]:
    """Expected best-of-N exact match from the base's k samples per prompt (the exact order
    statistic of drawing N of k; the shapes reward is 1 exactly when the match is exact, so
    picking by reward picks an exact sample whenever there is one). Not paired per sample:
    its CI resamples each prompt's pool."""
    points = []
    rng = np.random.default_rng(bench.s.seed)
    base_exact = np.stack([r.exact for r in bench.base])
    base_scores = np.stack([r.scores for r in bench.base])
    k = base_exact.shape[1]
    for n in bench.s.best_of:
        if n > k:
            raise ConfigError(f"config key 'bench.best_of': N={n} > eval_samples={k}")

        def best(x: np.ndarray, n: int = n) -> float:
            return float(np.mean([expected_best_of(row, n) for row in x]))

        boot = [
            best(np.take_along_axis(base_exact, rng.integers(0, k, base_exact.shape), 1))
            for _ in range(200)
        ]
        exact = best(base_exact)
        score = best(base_scores)
        base_mean = float(base_exact.mean())
        low, high = np.quantile(boot, [0.025, 0.975]) - base_mean
        points.append(
            Point(
                "best_of_n",
                f"N={n}",
                0,
                float(n * bench.calls),
                0.0,
                exact,
                (exact - base_mean, float(low), float(high)),
                score,
                (score - float(base_scores.mean()), math.nan, math.nan),
                math.nan,
            )
        )
    return points


def run_find(bench: Bench) -> list[Point]:
    """The in-process FIND loop on the bench prompts until the largest budget; evaluated at
    each budget it passes."""
    from find_ray.runs.in_process import FindLoop

    s, backend = bench.s, bench.backend()
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
    return points


def _train_lora(bench: Bench, method: str, make_trainer, step: str) -> list[Point]:
    """Steps a LoRA trainer (DDPO, DRTune) on a fresh pipeline until the largest budget,
    evaluating the tuned pipeline at each budget it passes."""
    s, backend = bench.s, bench.backend()
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
    m, cfg = bench.cfg.model, bench.s.ddpo

    def make(pipe):
        chain = DenoisingChain(pipe, m.steps, m.guidance, cfg.eta)
        return DDPOTrainer(chain, bench.scores, bench.prompts, cfg, bench.s.seed)

    return _train_lora(bench, "ddpo", make, "epoch")


def run_drtune(bench: Bench) -> list[Point]:
    m, cfg = bench.cfg.model, bench.s.drtune
    reward = bench.differentiable_reward()

    def make(pipe):
        chain = DenoisingChain(pipe, m.steps, m.guidance, cfg.eta)
        return DRTuneTrainer(chain, reward, bench.prompts, cfg, bench.s.seed)

    return _train_lora(bench, "drtune", make, "step")


def run_dno(bench: Bench) -> list[Point]:
    """DNO on every eval image, from its eval noise, snapshots after each count of
    `dno.iterations`. An iteration costs a forward chain and its checkpointed recomputation
    (2 T NFE, x2 under guidance) and a snapshot one more chain: what one image of that point
    cost, checked against the NFE counter."""
    s, m = bench.s, bench.cfg.model
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


def run_bench(cfg: BenchConfig, methods: list[str] | None = None, progress: bool = True) -> Path:
    """Runs the configured methods (those without saved points), then writes bench.json,
    bench.md and bench.png to bench.out_dir; returns the markdown file."""
    bench = Bench(cfg, progress)
    points_dir = bench.out / "points"
    points_dir.mkdir(parents=True, exist_ok=True)
    (bench.out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    for method in methods or cfg.bench.methods:
        saved = points_dir / f"{method}.json"
        if saved.is_file():
            print(f"{method}: reusing {saved}")
            continue
        points = RUNNERS[method](bench)
        saved.write_text(json.dumps([asdict(p) for p in points], indent=1))
    points = [
        Point(**{**p, "exact_gain": tuple(p["exact_gain"]), "score_gain": tuple(p["score_gain"])})
        for method in cfg.bench.methods
        if (points_dir / f"{method}.json").is_file()
        for p in json.loads((points_dir / f"{method}.json").read_text())
    ]
    (bench.out / "bench.json").write_text(
        json.dumps(
            {
                "prompts": bench.prompts,
                "surrogate": bench.surrogate_report(),
                "points": [asdict(p) for p in points],
            },
            indent=1,
        )
    )
    plot(points, bench.out / "bench.png")
    table = bench.out / "bench.md"
    table.write_text(markdown(points, bench.prompts, bench.surrogate_report()))
    return table


def _ci(gain: tuple[float, float, float]) -> str:
    g, low, high = gain
    if math.isnan(g):
        return "n/a"
    if math.isnan(low):
        return f"{g:+.3f}"
    return f"{g:+.3f} [{low:+.3f}, {high:+.3f}]"


def _num(x: float, spec: str) -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def markdown(points: list[Point], prompts: list[str], surrogate: dict) -> str:
    lines = [
        f"Prompts ({len(prompts)}): " + "; ".join(prompts),
        "",
        "| method | point | exact | exact gain vs base [95 % CI] | score | score gain [95 % CI] | "
        "train NFE | inference NFE / image | wall s | KL to N(0, I) | diversity ratio |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.method} | {p.label} | {_num(p.exact, '.3f')} | {_ci(p.exact_gain)} | "
            f"{p.score:.3f} | {_ci(p.score_gain)} | {p.train_nfe} | {p.inference_nfe:.0f} | "
            f"{p.wall_s:.0f} | "
            f"{_num(p.kl, '.3g')} | {_num(p.diversity_ratio, '.2f')} |"
        )
    held = surrogate.get("heldout")
    if held:
        lines += [
            "",
            f"Surrogate reward (DNO, DRTune) on held-out base images: MAE {held['mae']:.3f} "
            f"(constant predictor {surrogate['mae_constant']:.3f}), Pearson "
            f"{held['pearson']:.3f}, exact recall {held['exact_recall']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def headline(points: list[Point]) -> str:
    """The metric the plot shows: exact match where the reward gives it, else the score."""
    return "exact" if all(math.isfinite(p.exact) for p in points) else "score"


def plot(points: list[Point], path: Path) -> None:
    """The headline metric against training NFE (trained methods) and against inference NFE
    per image (base, best-of-N, DNO, and the trained methods at their final budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric = headline(points)

    def y(ps: list[Point]) -> list[float]:
        return [getattr(p, metric) for p in ps]

    def yerr(ps: list[Point]) -> list[list[float]]:  # the paired CI of the gain
        gains = [getattr(p, f"{metric}_gain") for p in ps]
        return [[g - low for g, low, _ in gains], [high - g for g, _, high in gains]]

    colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, (train_ax, infer_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = [p for p in points if p.method == "base"]
    for method in ("find", "ddpo", "drtune"):
        mine = [p for p in points if p.method == method]
        if mine:
            train_ax.errorbar(
                [p.train_nfe for p in mine],
                y(mine),
                yerr=yerr(mine),
                marker="o",
                capsize=3,
                label=method,
                color=colours[method],
            )
            infer_ax.scatter(
                [mine[-1].inference_nfe],
                y(mine[-1:]),
                marker="s",
                label=method,
                color=colours[method],
            )
    for method in ("best_of_n", "dno"):
        mine = sorted((p for p in points if p.method == method), key=lambda p: p.inference_nfe)
        if mine:
            infer_ax.plot(
                [p.inference_nfe for p in mine],
                y(mine),
                marker="o",
                label=method,
                color=colours[method],
            )
    label = "eval exact match" if metric == "exact" else "eval reward score"
    for ax in (train_ax, infer_ax):
        if base:
            ax.axhline(y(base)[0], color="gray", linestyle="--", label="base")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    train_ax.set(xlabel="training NFE", title="Training budget")
    infer_ax.set(xlabel="inference NFE per image", title="Inference budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
