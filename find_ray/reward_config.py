"""The scorer configs (`reward.*`, `eval.quality.*`), re-exported by find_ray.config, and the
shape check of `reward.runtime_env`: a Ray runtime environment for the reward actors only.

The runtime environment keeps Ray's own dict shape (docs.ray.io, "Runtime environments"), a
subset of its fields: pip / uv / conda (one of them), env_vars, working_dir, py_modules,
excludes and config. Its local paths are checked before any actor starts
(`find_ray.rewards.runtime_env`); here only the shapes, at config load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from find_ray.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16")
MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:factory
# runtime_env field -> what it holds (Ray's shapes); pip, uv and conda exclude each other
PACKAGES = ("pip", "uv", "conda")
RUNTIME_ENV_FIELDS = {
    "pip": "a list of requirements, a requirements.txt path or {packages: [...], ...}",
    "uv": "a list of requirements, a requirements.txt path or {packages: [...], ...}",
    "conda": "an environment name, an environment.yml path or its content as a dict",
    "env_vars": "a mapping of variable names to strings",
    "working_dir": "a local folder or a remote .zip URI",
    "py_modules": "a list of local folders, .py or .whl files, or remote URIs",
    "excludes": "a list of gitignore-style patterns left out of working_dir and py_modules",
    "config": "{setup_timeout_seconds: int, eager_install: bool}",
}


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {why}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _well_shaped(name: str, value: Any) -> bool:
    """Whether `value` has a shape Ray takes for runtime_env field `name`."""
    if name in ("pip", "uv"):
        if isinstance(value, dict):
            return _strings(value.get("packages")) or isinstance(value.get("packages"), str)
        return isinstance(value, str) or _strings(value)
    if name == "conda":
        return isinstance(value, str | dict)
    if name == "working_dir":
        return isinstance(value, str) and bool(value)
    if name == "config":
        return isinstance(value, dict) and set(value) <= {"setup_timeout_seconds", "eager_install"}
    return _strings(value)  # py_modules, excludes


def validated_runtime_env(env: dict[str, Any], key: str) -> dict[str, Any]:
    """`env` validated as a Ray runtime_env for config key `key`, its env_vars' numbers and
    booleans as strings (what a YAML `SCALE: 2` means); raises ConfigError naming the key."""
    env = dict(env)
    for name, value in list(env.items()):
        _require(
            name in RUNTIME_ENV_FIELDS,
            f"{key}.{name}",
            f"not a runtime_env field this project passes to Ray; use one of "
            f"{', '.join(RUNTIME_ENV_FIELDS)}",
        )
        why = f"must be {RUNTIME_ENV_FIELDS[name]}"
        if name != "env_vars":
            _require(_well_shaped(name, value), f"{key}.{name}", why)
            continue
        _require(isinstance(value, dict), f"{key}.env_vars", why)
        for var, text in value.items():
            scalar = isinstance(text, str | int | float | bool)
            _require(scalar, f"{key}.env_vars.{var}", "must be a string")
        env[name] = {str(var): str(text) for var, text in value.items()}
    managers = [name for name in PACKAGES if name in env]
    _require(
        len(managers) <= 1,
        f"{key}.{managers[-1] if managers else ''}",
        f"set one of {', '.join(PACKAGES)}, not {' and '.join(managers)} (Ray takes one)",
    )
    return env


@dataclass
class ScorerConfig:
    """A scorer of images: a name in find_ray.rewards.REWARDS and where its weights live."""

    key = "reward"  # the config section, for error messages
    name: str = "shapes"  # a registered scorer, `module` (your own) or `http` (a service)
    weights_path: str = ""  # learned scorers: local file/folder ("": the usual hub name, online)
    model: str = ""  # learned scorers: architecture override, e.g. open_clip "ViT-B-32"
    device: str = "cpu"  # where a learned scorer runs (the reward actors' device)
    dtype: str = "float32"
    batch_size: int = 16  # images per forward pass of a learned scorer (http: per request)
    # name=module: "package.module:factory"; factory(cfg) returns fn(images, prompts), imported
    # in the reward actors only (install it there with reward.runtime_env)
    module: str = ""
    url: str = ""  # name=http: the scoring service's endpoint, e.g. http://127.0.0.1:8001/score
    timeout_s: float = 30.0  # name=http: seconds one request may take
    retries: int = 2  # name=http: tries after a timeout, a refused connection, a 429 or a 5xx

    def __post_init__(self) -> None:
        k = self.key
        _require(self.batch_size >= 1, f"{k}.batch_size", "must be >= 1")
        _require(self.dtype in DTYPES, f"{k}.dtype", f"one of {DTYPES}, got {self.dtype!r}")
        _require(self.timeout_s > 0, f"{k}.timeout_s", f"must be > 0, got {self.timeout_s}")
        _require(self.retries >= 0, f"{k}.retries", f"must be >= 0, got {self.retries}")
        if self.name == "module":
            _require(
                bool(MODULE_SPEC.match(self.module)),
                f"{k}.module",
                f"must be 'package.module:factory' with {k}.name=module, got {self.module!r}",
            )
        if self.name == "http":
            _require(
                re.match(r"^https?://[^/\s]+", self.url) is not None,
                f"{k}.url",
                f"must be an http:// or https:// URL with {k}.name=http, got {self.url!r}",
            )


@dataclass
class RewardConfig(ScorerConfig):
    """The reward FIND maximises."""

    fault: str = ""  # chaos testing: "" | nan | raise (see rewards.inject_faults)
    fault_rate: float = 0.0
    fault_seed: int = 0
    noise_std: float = 0.0  # a noisy reward: + N(0, noise_std^2) per score (the sweep's factor)
    quality_weight: float = 0.0  # train on reward + weight * the eval.quality scorer's score
    # a Ray runtime_env for the reward actors only (pip, env_vars, working_dir, py_modules, ...:
    # RUNTIME_ENV_FIELDS), e.g. {pip: [my-scorer==1.2], env_vars: {HF_HOME: /data/hf}}
    runtime_env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.noise_std >= 0, "reward.noise_std", "must be >= 0")
        _require(self.fault in ("", "nan", "raise"), "reward.fault", "one of '', nan, raise")
        _require(0 <= self.fault_rate <= 1, "reward.fault_rate", "must be in [0, 1]")
        _require(self.quality_weight >= 0, "reward.quality_weight", "must be >= 0")
        self.runtime_env = validated_runtime_env(self.runtime_env, "reward.runtime_env")


@dataclass
class QualityConfig(ScorerConfig):
    """The image-quality scorer reported beside every gain: a scorer name, "" for none, or
    "auto": the shapes world's artifact figure (shapes_quality) with the shapes reward, none
    with another (the SD configs name the LAION aesthetic predictor)."""

    key = "eval.quality"
    name: str = "auto"
