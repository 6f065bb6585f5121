"""Structured configuration: dataclass schemas, YAML files in configs/, dotlist overrides.

An unknown key, a wrong type or an invalid value raises ConfigError naming the key, before
anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from find_ray.errors import ConfigError
from find_ray.reward_config import QualityConfig, RewardConfig, ScorerConfig  # noqa: F401
from find_ray.shapes.settings import PretrainConfig

Reduction = Literal["mean", "sum"]  # how a log-density is reduced over the latent
SurrogateForm = Literal["ppo", "clamp"]
RatioReference = Literal["behaviour", "initial"]
Optimizer = Literal["natural", "sgd", "adamw"]

SHAPES_MODEL = "shapes"  # alias of the model folder shipped inside the package
SHAPES_FLOW_MODEL = "shapes-flow"  # ... and of its flow-matching twin


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {why}")


MODEL_FAMILIES = ("auto", "sd", "sdxl", "turbo", "t2v", "animatediff", "sd3", "flux", "wan", "flow")
MODEL_SCHEDULERS = {  # model.scheduler -> diffusers class ("": the folder's own scheduler)
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
}


@dataclass
class ModelConfig:
    backend: str = "pipeline"  # pipeline | simulated (a fixed latency, for system tests)
    path: str = SHAPES_MODEL  # shapes | shapes-flow | a local diffusers pipeline folder | a hub id
    # auto (model_index.json's class) | sd | sdxl | turbo | t2v (legacy) | animatediff, or
    # flow-matching: sd3 | flux | wan | flow (a pipeline called like SD3's)
    family: str = "auto"
    scheduler: str = ""  # "": the folder's own | ddim | euler | euler_ancestral | dpm | pndm
    steps: int = 20  # sampler steps
    guidance: float = 1.5  # classifier-free guidance scale (<= 1: off, one denoiser pass a step)
    eta: float = 0.0  # DDIM eta; > 0 injects per-step noise; flow-matching families: 0 only
    height: int = 0  # pixels, a multiple of 8 (0: the model's default)
    width: int = 0
    num_frames: int = 16  # video families: frames per video (wan: 4k+1, e.g. 81)
    device: str = "cpu"
    dtype: str = "float32"
    cpu_offload: bool = False  # diffusers enable_model_cpu_offload (needs a GPU)
    attention_slicing: bool = False  # diffusers enable_attention_slicing
    vae_tiling: bool = False  # decode in tiles (large images / videos in less memory)
    vae_slicing: bool = False  # decode a batch one image / video at a time
    compile: bool = False  # torch.compile the denoiser (the unet, or a DiT's transformer)
    latency_s: float = 0.0  # simulated backend: seconds per generate() call

    def __post_init__(self) -> None:
        backends = ("pipeline", "simulated")
        _require(self.backend in backends, "model.backend", f"one of {backends}")
        _require(
            self.family in MODEL_FAMILIES,
            "model.family",
            f"one of {MODEL_FAMILIES}, got {self.family!r}",
        )
        schedulers = ("", *MODEL_SCHEDULERS)
        _require(
            self.scheduler in schedulers,
            "model.scheduler",
            f"one of {schedulers}, got {self.scheduler!r}",
        )
        _require(self.steps >= 1, "model.steps", f"must be >= 1, got {self.steps}")
        _require(self.guidance >= 0, "model.guidance", f"must be >= 0, got {self.guidance}")
        _require(0 <= self.eta <= 1, "model.eta", f"must be in [0, 1], got {self.eta}")
        for key in ("height", "width"):
            value = getattr(self, key)
            _require(
                value >= 0 and value % 8 == 0,
                f"model.{key}",
                f"must be 0 (the model's default) or a positive multiple of 8, got {value}",
            )
        _require(self.num_frames >= 1, "model.num_frames", f"must be >= 1, got {self.num_frames}")
        dtypes = ("float32", "float16", "bfloat16")
        _require(self.dtype in dtypes, "model.dtype", f"one of {dtypes}, got {self.dtype!r}")


@dataclass
class EvalConfig:
    suite: str = "train"  # train | heldout | path to a text file with one prompt per line
    samples_per_prompt: int = 16
    seed: int = 1234  # eval noise is a pure function of (seed, prompt index, sample index)
    batch_size: int = 64
    grid_samples: int = 8  # images per prompt in the PNG grid
    best_of: int = 1  # each eval sample is the reward's pick of this many (N x the denoiser calls)
    out_dir: str = "runs/eval"
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        _require(self.samples_per_prompt >= 1, "eval.samples_per_prompt", "must be >= 1")
        _require(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _require(self.best_of >= 1, "eval.best_of", "must be >= 1")


@dataclass
class TrainConfig:
    suite: str = "train"  # prompts to learn: a suite name or a file (see eval.suite)
    prompts: list[str] = field(default_factory=list)  # explicit prompts; override the suite
    max_prompts: int = 0  # first N prompts of the suite (0: all)
    iterations: int = 40  # policy versions to produce
    samples_per_prompt: int = 16  # fresh rollouts per prompt per iteration
    prompts_per_iteration: int = 0  # prompts drawn per iteration (0: all of them)
    rollout_batch_size: int = 64
    seed: int = 0
    out_dir: str = "runs/find"

    def __post_init__(self) -> None:
        for key in ("iterations", "samples_per_prompt", "rollout_batch_size"):
            _require(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        _require(self.prompts_per_iteration >= 0, "train.prompts_per_iteration", "must be >= 0")


@dataclass
class RayConfig:
    """The Ray actor-learner system (`find-ray train` without --no-ray)."""

    address: str = ""  # "": RAY_ADDRESS, else a running `ray start` on this machine, else new
    local_num_cpus: int = 0  # CPUs of a newly started local Ray (0: all)
    num_rollout_actors: int = 2
    rollout_num_cpus: float = 0.5  # logical CPUs per rollout actor (fractional allowed)
    rollout_num_gpus: float = 0.0  # e.g. 0.5 packs two rollout actors on one GPU
    torch_threads: int = 1  # intra-op threads per actor (CPU runs)
    num_reward_actors: int = 1
    reward_num_cpus: float = 0.25
    reward_num_gpus: float = 0.0
    learner_num_cpus: float = 0.25
    learner_num_gpus: float = 0.0
    # custom Ray resources per actor, to place them: e.g. learner_resources: {learner: 1} with
    # `ray start --resources='{"learner": 1}'` on the head node (cluster/README.md)
    rollout_resources: dict[str, float] = field(default_factory=dict)
    reward_resources: dict[str, float] = field(default_factory=dict)
    learner_resources: dict[str, float] = field(default_factory=dict)
    rollouts_per_task: int = 16  # rollouts in one rollout-actor call
    max_in_flight_per_actor: int = 2  # back-pressure: rollout calls queued per actor
    broadcast_interval: int = 1  # publish weights every K learner updates
    sync: bool = False  # one iteration at a time, adds in id order (= the in-process loop)
    max_restarts: int = 3  # per actor; its lost work is resubmitted
    checkpoint_every: int = 5  # learner updates between checkpoints (0: only at the end)
    grid_every: int = 5  # updates between TensorBoard thumbnails of each prompt's rollouts (0: off)

    def __post_init__(self) -> None:
        for key in (
            "num_rollout_actors",
            "num_reward_actors",
            "torch_threads",
            "rollouts_per_task",
            "max_in_flight_per_actor",
            "broadcast_interval",
        ):
            _require(
                getattr(self, key) >= 1, f"ray.{key}", f"must be >= 1, got {getattr(self, key)}"
            )
        for key in ("local_num_cpus", "max_restarts", "checkpoint_every", "grid_every"):
            _require(getattr(self, key) >= 0, f"ray.{key}", "must be >= 0")
        for key in ("rollout", "reward", "learner"):
            for kind in ("cpus", "gpus"):
                value = getattr(self, f"{key}_num_{kind}")
                _require(value >= 0, f"ray.{key}_num_{kind}", f"must be >= 0, got {value}")


@dataclass
class FindLossConfig:
    """Hyper-parameters of the FIND update (defaults: the FIND paper and its reference code)."""

    eps: float = 0.2  # ratio clip range
    reg_weight: float = 0.01  # lambda of mean(mu^2 + (sigma - 1)^2)
    kl_weight: float = 0.0  # + kl_weight * KL(pi || N(0, I)) per latent element: a pull to pi_0
    surrogate: SurrogateForm = "ppo"  # "ppo": min(rho*A, clip*A); "clamp": FIND's clip(rho)*A
    ratio_reference: RatioReference = "behaviour"  # behaviour policy or pi_0 = N(0, I)
    logp_reduction: Reduction = "mean"  # per-element mean of the log-density (FIND code)
    policy_lr: float = 1e-3
    drcm_lr: float = 1e-4
    drcm_hidden: int = 256
    normalise_advantages: bool = False  # standardise A per minibatch


@dataclass
class PolicyConfig:
    """Which noise policy the learner trains (`policy.*` in a config)."""

    kind: Literal["per_prompt", "amortized"] = "per_prompt"  # amortized: mu, sigma from e_c
    hidden: int = 256  # amortized: MLP width
    grid: int = 8  # amortized: the low-resolution map's size before the learned upsampling
    # where samples sit relative to the Gaussian shell ||z||^2 = d that the denoiser knows:
    # none: z = mu + sigma * eps (a mean moves ||z||^2 / d to 1 + ||mu||^2 / d);
    # project: the action y = mu + sigma * eps is Gaussian (its exact log-prob makes the
    #   ratio), the denoiser gets z = sqrt(d) y / ||y|| (the projection is the environment's);
    # tied: sigma = sqrt(1 - ||mu||^2 / d) per prompt (floored at learner.sigma_min), so
    #   E ||z||^2 = d while ||mu||^2 / d <= 1 - sigma_min^2; log-prob exact in z
    shell: Literal["none", "project", "tied"] = "project"

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.grid < 1:
            raise ConfigError("config keys 'policy.hidden', 'policy.grid': must be >= 1")


@dataclass
class LearnerConfig:
    # natural: SGD on the Fisher-preconditioned gradient (step size loss.policy_lr). For the
    # amortized policy the natural step is taken on a per-prompt copy of its outputs and then
    # projected onto its network (projection_steps AdamW steps at projection_lr on the KL)
    optimizer: Optimizer = "natural"
    projection_steps: int = 100
    projection_lr: float = 1e-3
    epochs: int = 4  # passes over the stored rollouts per update
    minibatch_size: int = 64
    # drcm: A = r - g(mu, sigma, e_c); prompt_mean: A = r - the prompt's mean stored reward
    # (a running mean over the store's window); none: A = r (the no-baseline ablation)
    baseline: Literal["drcm", "prompt_mean", "none"] = "drcm"
    drcm_steps: int = 20  # DRCM MSE steps on the stored rollouts before each policy update
    drcm_pool: int = 0  # average-pool mu/sigma to pool x pool before the DRCM (0: no pooling)
    learn_sigma: bool = True
    sigma_min: float = 0.5  # sigma is squashed into [sigma_min, sigma_max] (max .inf: unbounded)
    sigma_max: float = 2.0
    target_kl: float = 0.0  # per-update trust region on KL(pi_old || pi_new) per prompt (0: off)
    store_capacity: int = 1024
    max_policy_lag: int = 2  # older rollouts are dropped ("stale"); the ratio corrects the rest
    loss: FindLossConfig = field(default_factory=FindLossConfig)

    def __post_init__(self) -> None:
        for key in ("epochs", "minibatch_size", "store_capacity", "projection_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'learner.{key}': must be >= 1")
        if self.max_policy_lag < 0:
            raise ConfigError("config key 'learner.max_policy_lag': must be >= 0")
        if not 0 < self.sigma_min < 1 < self.sigma_max:
            raise ConfigError(
                "config keys 'learner.sigma_min', 'learner.sigma_max': need 0 < min < 1 < max"
            )
        if self.target_kl < 0:
            raise ConfigError("config key 'learner.target_kl': must be >= 0 (0 turns it off)")


@dataclass
class FindRayConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


def load_structured(schema: type, path: str | Path | None, overrides: list[str] | None):
    """An instance of the dataclass `schema` from a YAML file (optional) and `key=value`
    overrides, validated: unknown keys, wrong types and invalid values raise ConfigError."""
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides or [])))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        message = str(e).splitlines()[0]
        raise ConfigError(f"config key '{key}': {message}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None):
    """The validated FindRayConfig from a YAML file (optional) and `key=value` overrides."""
    return load_structured(FindRayConfig, path, overrides)


# Defaults that changed: a run's saved config without the key ran with the old value.
EARLIER_DEFAULTS = {"policy.shell": "none"}


def load_saved_config(path: str | Path, overrides: list[str] | None = None) -> FindRayConfig:
    """A config.yaml that a run wrote, with `overrides`; a key whose default has changed since
    (EARLIER_DEFAULTS) and that the file lacks is read with the value the run had."""
    saved = OmegaConf.load(path) if Path(path).is_file() else OmegaConf.create()
    earlier = [
        f"{k}={v}" for k, v in EARLIER_DEFAULTS.items() if OmegaConf.select(saved, k) is None
    ]
    return load_config(path, [*earlier, *(overrides or [])])


def to_yaml(cfg: FindRayConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
