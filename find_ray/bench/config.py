"""The bench's configuration: the methods, budgets, eval settings and each method's knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from find_ray.baselines.ddpo import DDPOConfig
from find_ray.baselines.drtune import DRTuneConfig
from find_ray.config import ModelConfig, QualityConfig, RewardConfig, load_structured
from find_ray.errors import ConfigError

METHODS = ("base", "best_of_n", "find", "ddpo", "drtune", "dno")
LINES = (*METHODS, "find_best_of_n")  # what the plot draws (FIND's runner adds the last)


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
class BenchQualityConfig(QualityConfig):
    """The quality scorer beside every row (`quality.*` in a bench config)."""

    key = "quality"


@dataclass
class BenchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    quality: BenchQualityConfig = field(default_factory=BenchQualityConfig)
    bench: BenchSettings = field(default_factory=BenchSettings)


def load_bench_config(path: str | Path | None, overrides: list[str] | None = None) -> BenchConfig:
    """The validated bench config from a YAML file and `key=value` overrides."""
    return load_structured(BenchConfig, path, overrides)
