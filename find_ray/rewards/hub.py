"""Can a remote file be had right now? Asked before anything loads, so that a missing model or
reward fails in one line before any actor starts, not in a download's traceback inside one.

A file can be had when it is in its local cache, or when its host answers a TCP connection
within PROBE_TIMEOUT_S: the probe does not depend on HF_HUB_OFFLINE (an offline machine
without it set would otherwise retry downloads inside an actor). With HF_HUB_OFFLINE set,
only the cache counts. A proxy in the environment (HTTPS_PROXY, ...) is probed instead of the
host. The probe goes to the host once per process; tests stub `reachable`.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


@dataclass(frozen=True)
class Remote:
    """A file to fetch: what it is, where its cached copy would be, and the URL it comes from."""

    what: str  # for messages, e.g. "THUDM/ImageReward (ImageReward.pt)"
    url: str  # its host (or the file's URL) for the probe
    cache: str  # where a cached copy was looked for
    cached: bool  # a copy is there: no network needed


def hub_file(repo_id: str, *filenames: str) -> Remote:
    """A hub repo's file: cached when any of `filenames` is in the hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE  # read now: HF_HUB_CACHE may change at run time (tests)
    try:
        cached = any(
            isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache), str)
            for name in filenames
        )
    except ValueError:  # not a hub id at all (e.g. a path): nothing of it is cached
        cached = False
    return Remote(f"{repo_id} ({', '.join(filenames)})", constants.ENDPOINT, cache, cached)


def url_file(url: str, cached_copy: Path) -> Remote:
    """A file downloaded from `url` into `cached_copy` (e.g. torch.hub's checkpoints folder)."""
    return Remote(url, url, str(cached_copy.parent), cached_copy.is_file())


def probe_target(url: str) -> tuple[str, int]:
    """(host, port) a connection to `url` opens: its proxy's when one is set for it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = parts.hostname or ""
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def connects(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout_s`, name lookup included
    (a thread bounds the lookup, which socket timeouts do not)."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            opened.append(True)
        except OSError:
            opened.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(opened and opened[0])


@cache
def reachable(url: str) -> bool:
    """Whether `url`'s host (or its proxy) answers within PROBE_TIMEOUT_S; asked once."""
    return connects(*probe_target(url))


def unavailable(remote: Remote) -> str:
    """Why `remote` cannot be fetched now, as the end of a sentence ("" when it can)."""
    if remote.cached:
        return ""
    missing = f"is not in {remote.cache}"
    if offline():
        return f"{missing} and HF_HUB_OFFLINE is set"
    if not reachable(remote.url):
        host, port = probe_target(remote.url)
        return f"{missing} and {host}:{port} does not answer in {PROBE_TIMEOUT_S:g} s (offline?)"
    return ""
