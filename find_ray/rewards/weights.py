"""Where a learned reward's weights come from: a local path, or its usual hub name online.

When nothing local is named and the default cannot be fetched (not cached, and the hub is
offline or does not answer: `hub.unavailable`), the error is one line that says where it
looked and how to provide it, raised by `check_reward` before any actor starts.
"""

from __future__ import annotations

from pathlib import Path

from find_ray.config import ScorerConfig
from find_ray.errors import ModelPathError
from find_ray.rewards.hub import Remote, offline, unavailable

__all__ = ["offline", "require", "resolve_weights"]


def require(remote: Remote, subject: str, how: str) -> None:
    """One-line ModelPathError "`subject` and `remote` <why>; `how`" unless it can be had."""
    why = unavailable(remote)
    if why:
        raise ModelPathError(f"{subject}, and {remote.what} {why}; {how}")


def resolve_weights(cfg: ScorerConfig, default: str, how: str, remote: Remote) -> str:
    """`cfg.weights_path` when set (it must exist), else `default` (a hub id, file name or
    tag) when `remote`, the file `default` downloads, can be had.

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
    require(remote, f"{cfg.key} {cfg.name!r}: {cfg.key}.weights_path is empty", how)
    return default
