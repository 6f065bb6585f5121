"""The bench's configuration: the methods, budgets, seeds, eval settings, each method's knobs,
the tuning grid, and the presets (`find-ray bench --preset quick`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from find_ray.baselines.ddpo import DDPOConfig
from find_ray.baselines.drtune import DRTuneConfig
from find_ray.baselines.flow_grpo import FlowGRPOConfig
from find_ray.config import ModelConfig, QualityConfig, RewardConfig, load_structured
from find_ray.errors import ConfigError

METHODS = ("base", "best_of_n", "find", "ddpo", "drtune", "dno", "flow_grpo", "reno")
# what runs unless bench.methods says: Flow-GRPO trains a flow-matching model's SDE only
DEFAULT_METHODS = ("base", "best_of_n", "find", "ddpo", "drtune", "dno")
TUNABLE = ("find", "ddpo", "drtune", "dno", "flow_grpo", "reno")  # base, best-of-N: no knobs
LINES = (*METHODS, "find_best_of_n")  # what the plot draws (FIND's points give the last)


@dataclass
class DNOSettings:
    iterations: list[int] = field(default_factory=lambda: [2, 5, 10])  # eval points
    lr: float = 0.01
    gamma: float = 0.1  # probability-regulariser weight
    subsample: int = 1
    eta: float = 1.0


@dataclass
class ReNOSettings:
    """ReNO's knobs (baselines.reno.ReNOConfig's defaults) and its snapshot iterations."""

    iterations: list[int] = field(default_factory=lambda: [5, 10, 20])  # eval points
    lr: float = 5.0
    reg_weight: float = 0.01
    grad_clip: float = 0.1


@dataclass
class SurrogateSettings:
    images_per_prompt: int = 64  # base images generated to train it (seeds apart from eval)
    epochs: int = 20
    lr: float = 3e-3
    seed: int = 0


@dataclass
class TuningSettings:
    """Each method's most sensitive knobs, compared on prompts apart from the eval prompts at
    one budget and one seed; the best grid point (exact match, then score) is what the main
    cells run with. `grid`: method -> {key -> values}, a key of `bench.<method>` (for find: a
    FindRayConfig key, appended to `bench.find`)."""

    enabled: bool = True
    suite: str = "heldout"  # where the tuning prompts come from (never the eval prompts)
    prompts: list[str] = field(default_factory=list)  # explicit tuning prompts
    max_prompts: int = 4
    budget: int = 4000  # training NFE the grid points are compared at
    eval_samples: int = 16
    seed: int = 100
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass
class BenchSettings:
    prompts: list[str] = field(default_factory=list)  # explicit prompts (else the suite's)
    suite: str = "train"
    max_prompts: int = 4  # the first this many of them (0: all)
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    budgets: list[int] = field(default_factory=lambda: [4000, 16000])  # training NFE
    eval_samples: int = 16  # k images per prompt, the same eval noise for every method
    eval_seed: int = 1234
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds per method
    # a trained method still rising at its largest budget gets 4x more, until the mean exact
    # match gains < `plateau` over the last 4x or the budget would pass `extend_to` (0: never)
    extend_to: int = 0
    plateau: float = 0.02
    best_of: list[int] = field(default_factory=lambda: [2, 4, 8])
    find: list[str] = field(default_factory=list)  # FindRayConfig overrides (learner, train)
    ddpo: DDPOConfig = field(default_factory=DDPOConfig)
    drtune: DRTuneConfig = field(default_factory=DRTuneConfig)
    dno: DNOSettings = field(default_factory=DNOSettings)
    flow_grpo: FlowGRPOConfig = field(default_factory=FlowGRPOConfig)
    reno: ReNOSettings = field(default_factory=ReNOSettings)
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    tuning: TuningSettings = field(default_factory=TuningSettings)
    out_dir: str = "benchmarks/results/bench"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"config key 'bench.methods': unknown {unknown}; known {METHODS}")
        if not self.budgets or min(self.budgets) < 1:
            raise ConfigError("config key 'bench.budgets': one or more positive NFE budgets")
        if self.eval_samples < 2:
            raise ConfigError("config key 'bench.eval_samples': must be >= 2")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("config key 'bench.seeds': one or more distinct seeds")
        untunable = sorted(set(self.tuning.grid) - set(TUNABLE))
        if untunable:
            raise ConfigError(f"config key 'bench.tuning.grid': no knobs to tune for {untunable}")
        if set(self.tuning.prompts) & set(self.prompts):
            raise ConfigError("config key 'bench.tuning.prompts': must not share eval prompts")


@dataclass
class BenchQualityConfig(QualityConfig):
    """The quality scorer beside every row (`quality.*` in a bench config)."""

    key = "quality"


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    quality: BenchQualityConfig = field(default_factory=BenchQualityConfig)
    bench: BenchSettings = field(default_factory=BenchSettings)


# `find-ray bench --preset NAME`: overrides applied before the command line's.
PRESETS: dict[str, list[str]] = {
    # a first look in <= 20 minutes on a 2-core CPU: 4 prompts, one seed, one budget, no tuning
    "quick": [
        "bench.max_prompts=4",
        "bench.eval_samples=16",
        "bench.seeds=[0]",
        "bench.budgets=[4000]",
        "bench.best_of=[2,4,8]",
        "bench.dno.iterations=[2,5]",
        "bench.tuning.enabled=false",
        "bench.extend_to=0",
    ],
}


def load_bench_config(
    path: str | Path | None, overrides: list[str] | None = None, preset: str | None = None
) -> BenchConfig:
    """The validated bench config from a YAML file, a preset and `key=value` overrides."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: one of {sorted(PRESETS)}")
    overrides = list(overrides or [])
    cfg = load_structured(BenchConfig, path, [*PRESETS.get(preset or "", []), *overrides])
    if preset and not any(o.startswith("bench.out_dir=") for o in overrides):
        # a preset's cells never mix with the full bench's (its folder refuses other settings)
        cfg.bench.out_dir = f"{cfg.bench.out_dir.rstrip('/')}-{preset}"
    return cfg
