"""Training checkpoints: policy (safetensors), learner state (torch), metadata (JSON).

A checkpoint is written to `<dir>.tmp` and swapped in by renames, so a driver killed while
saving leaves the previous checkpoint readable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ray
import torch

from find_ray.algo.policy_files import policy_from_state
from find_ray.errors import FindRayError
from find_ray.system.ledger import RolloutLedger
from find_ray.system.scheduler import PromptScheduler


def save_checkpoint(path: Path, learner_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Writes policy.safetensors, learner.pt and meta.json under `path`, atomically."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy_from_state(learner_state["policy"]).save(
        tmp / "policy.safetensors", meta.get("version"), meta.get("prompts")
    )
    torch.save(learner_state, tmp / "learner.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(learner state, metadata) of the newest complete checkpoint at `path`."""
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / "meta.json").is_file() and (candidate / "learner.pt").is_file():
            meta = json.loads((candidate / "meta.json").read_text())
            return torch.load(candidate / "learner.pt", weights_only=False), meta
    raise FindRayError(f"no checkpoint to resume from in {path}")


def restore(
    path: Path, learner: Any, ledger: RolloutLedger, scheduler: PromptScheduler
) -> tuple[int, dict[str, Any]]:
    """Learner, ledger and scheduler as the checkpoint at `path` left them (a resumed run, or a
    new learner after the old one died). What was in flight then is dropped as "interrupted"
    and its prompts queued again. Returns (learner version, metadata)."""
    state, meta = load_checkpoint(path)
    version = ray.get(learner.load_state_dict.remote(state))
    ledger.load_state_dict(meta["ledger"])
    scheduler.load_state_dict(meta)
    scheduler.requeue(ledger.interrupt())
    return version, meta
