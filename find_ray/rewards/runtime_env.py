"""`reward.runtime_env` as the reward actors get it (`ray_runtime_env`), and its local files
checked before any actor starts (`check_runtime_env`; its shape was checked when the config
loaded, find_ray/reward_config.py).

Ray uploads local folders only for a whole job (`ray.init`, `ray job submit --working-dir`);
an actor's own runtime_env names URIs. A local `working_dir` therefore becomes Ray's
`local://` URI of its absolute path: the reward actors run in that folder in place, which
holds on one machine or on a filesystem every node shares. On a cluster, give a remote .zip
URI, or keep the scorer's module in the job's working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from find_ray.config import FindRayConfig, RewardConfig
from find_ray.errors import ConfigError

KEY = "reward.runtime_env"


def is_uri(path: str) -> bool:
    return "://" in path


def ray_runtime_env(cfg: RewardConfig) -> dict[str, Any]:
    """The runtime_env for the reward actors' `.options()`; {} for none."""
    env = dict(cfg.runtime_env)
    working_dir = env.get("working_dir")
    if working_dir and not is_uri(working_dir):
        env["working_dir"] = f"local://{Path(working_dir).expanduser().resolve()}"
    return env


def _local_files(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key, path) of each requirements or environment file `env` names."""
    files = []
    for manager in ("pip", "uv"):
        spec = env.get(manager)
        spec = spec.get("packages") if isinstance(spec, dict) else spec
        if isinstance(spec, str):
            files.append((f"{KEY}.{manager}", spec))
    conda = env.get("conda")
    if isinstance(conda, str) and conda.endswith((".yml", ".yaml")):
        files.append((f"{KEY}.conda", conda))
    return files


def _require_path(key: str, path: str, folder: bool = False) -> None:
    found = Path(path).expanduser()
    if not (found.is_dir() if folder else found.exists()):
        where = "" if found.is_absolute() else f" (relative to {Path.cwd()})"
        what = "is not a folder" if found.exists() else "does not exist"
        raise ConfigError(f"config key '{key}': {path} {what}{where}")


def check_runtime_env(cfg: FindRayConfig) -> None:
    """Raises ConfigError for a local path of `reward.runtime_env` that is not there or cannot
    reach the reward actors alone, and for a relative weights path of a scorer that would run
    inside its working_dir (the path would point elsewhere there)."""
    env = cfg.reward.runtime_env
    for key, path in _local_files(env):
        _require_path(key, path)
    local = [p for p in env.get("py_modules", []) if not is_uri(p)]
    if local:
        raise ConfigError(
            f"config key '{KEY}.py_modules': {local[0]} is a local path, which Ray uploads only "
            f"for a whole job; use {KEY}.working_dir for a local folder, or a URI "
            f"(local:///abs/folder on a filesystem every node shares, https://.../pkg.zip)"
        )
    working_dir = env.get("working_dir")
    if not working_dir:
        return
    if not is_uri(working_dir):
        _require_path(f"{KEY}.working_dir", working_dir, folder=True)
    for scorer in (cfg.reward, cfg.eval.quality):
        if scorer.weights_path and not Path(scorer.weights_path).expanduser().is_absolute():
            raise ConfigError(
                f"config key '{scorer.key}.weights_path': {scorer.weights_path} is relative, "
                f"but the reward actors run in {KEY}.working_dir; give an absolute path"
            )
