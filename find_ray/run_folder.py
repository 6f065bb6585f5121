"""A run folder that `find-ray train` wrote: its config and its newest noise policy.

A finished run holds `policy.safetensors`; a run still training holds its latest policy in
`checkpoint/policy.safetensors` (swapped in by renames, so `checkpoint.old/` may hold it for a
moment). The newest of these by learner version is the run's policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from find_ray.config import FindRayConfig, load_config
from find_ray.errors import FindRayError, ModelPathError
from find_ray.policy import GaussianNoisePolicy, read_policy_metadata

POLICY_FILES = ("policy.safetensors", "checkpoint/policy.safetensors")


@dataclass
class RunPolicy:
    policy: GaussianNoisePolicy
    prompts: list[str]  # policy row i belongs to prompts[i]
    version: int  # learner updates behind it
    path: Path


def read_run_config(run_dir: str | Path) -> FindRayConfig:
    """The run's config.yaml; a missing folder or file is one error naming it."""
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise ModelPathError(f"run folder not found: {folder}")
    config = folder / "config.yaml"
    if not config.is_file():
        raise ModelPathError(f"not a run folder: no {config} (written by `find-ray train`)")
    try:
        return load_config(config)
    except FindRayError as e:
        raise ModelPathError(f"{config}: {e}") from None


def policy_version(path: Path) -> int:
    """The learner version a policy file was saved at (its metadata, else its checkpoint's)."""
    meta = read_policy_metadata(path)
    if "version" in meta:
        return int(meta["version"])
    sidecar = path.with_name("meta.json")
    if sidecar.is_file():
        return int(json.loads(sidecar.read_text())["version"])
    return 0


def _candidates(folder: Path) -> list[Path]:
    paths = [folder / name for name in POLICY_FILES]
    paths.append(folder / "checkpoint.old" / "policy.safetensors")
    return [p for p in paths if p.is_file()]


def newest_policy_version(run_dir: str | Path) -> int:
    """The newest policy version on disk (-1 if none is readable); cheap: metadata only."""
    versions = []
    for path in _candidates(Path(run_dir)):
        try:
            versions.append(policy_version(path))
        except (OSError, ValueError, KeyError):
            continue  # being swapped or written: the next poll sees it
    return max(versions, default=-1)


def load_run_policy(run_dir: str | Path, prompts: list[str] | None = None) -> RunPolicy:
    """The newest noise policy of a run; a missing or unreadable file is one error naming it.

    `prompts` (the run's, from its config) is used for files saved without their prompts.
    """
    folder = Path(run_dir).expanduser()
    found = _candidates(folder)
    if not found:
        raise ModelPathError(
            f"no noise policy in {folder} (looked for {' and '.join(POLICY_FILES)})"
        )
    runs = []
    for path in found:
        try:
            meta = read_policy_metadata(path)
            policy = GaussianNoisePolicy.load(path)
            names = json.loads(meta["prompts"]) if "prompts" in meta else prompts
            version = policy_version(path)
        except Exception as e:  # safetensors raises its own types for a damaged file
            raise ModelPathError(f"cannot read noise policy {path}: {e}") from None
        if names is None or len(names) != policy.num_prompts:
            raise ModelPathError(
                f"{path} holds {policy.num_prompts} policies but the run names "
                f"{'no' if names is None else len(names)} prompts"
            )
        runs.append(RunPolicy(policy, list(names), version, path))
    return max(runs, key=lambda r: r.version)
