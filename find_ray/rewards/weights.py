"""Where a learned reward's weights come from: a local path, or its usual hub name online.

Offline (HF_HUB_OFFLINE=1, or no network) a missing model is one line that says where it
looked and how to provide it, raised by `check_reward` before any actor starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from find_ray.config import ScorerConfig
from find_ray.errors import ModelPathError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def resolve_weights(cfg: ScorerConfig, default: str, how: str) -> str:
    """`cfg.weights_path` when set (it must exist), else `default` (a hub id or file name).

    `how` tells the user how to get the weights, e.g. "huggingface-cli download yuvalkirstain/
    PickScore_v1 --local-dir DIR, then reward.weights_path=DIR".
    """
    if cfg.weights_path:
        path = Path(cfg.weights_path).expanduser()
        if not path.exists():
            raise ModelPathError(
                f"{cfg.key} {cfg.name!r}: no weights at {path} ({cfg.key}.weights_path); {how}"
            )
        return str(path)
    if offline():
        raise ModelPathError(
            f"{cfg.key} {cfg.name!r}: {cfg.key}.weights_path is empty and the hub is offline "
            f"(HF_HUB_OFFLINE) so {default} cannot be fetched; {how}"
        )
    return default
