"""What keeps the endpoint answering under faults and closed to strangers.

- `GeneratorCaller`: the ingress's calls to the Generator deployment. A call whose replica died
  (SIGKILL, OOM, a node lost, Serve replacing an unhealthy replica) is retried once on a live
  replica: a generate request is idempotent given its seed, which the ingress fixes before the
  first try. With no live replica (no answer to a `ping` within `probe_s`), or when the retry
  fails too, `Unavailable` (HTTP 503 with `Retry-After`); past the request's deadline,
  `TimedOut` (HTTP 504).
- The API key: requests carry `Authorization: Bearer <key>`; the ingress holds only the key's
  SHA-256 and compares digests with `hmac.compare_digest`.
- `check_bind`: serving on an address other than loopback needs a key (or `--insecure`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import time

from fastapi.responses import JSONResponse
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from find_ray.errors import ConfigError

log = logging.getLogger("ray.serve")  # into the replica's Serve log

# The errors that mean "the replica (or its node) is gone", not "the request failed":
# RayActorError covers ActorDiedError and ActorUnavailableError.
REPLICA_GONE = (
    RayActorError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
    WorkerCrashedError,
    NodeDiedError,
)


def error(
    status: int, detail: str, field: str | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    """Every refused request gets this body: one line naming the field (or the cause)."""
    return JSONResponse({"detail": detail, "field": field, **extra}, status, headers=headers)


class Unavailable(Exception):
    """No live Generator replica answered: HTTP 503 with Retry-After."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class TimedOut(Exception):
    """The request ran past `request_timeout_s`: HTTP 504."""


class GeneratorCaller:
    """Calls a method of the Generator deployment within a deadline, retrying a lost replica.

    A call still waiting after `probe_s` checks (with one `ping` shared by every waiting call)
    that some replica answers: Serve's router holds a request while no replica is up (it also
    re-sends one whose replica died before taking it), so a wait is how a dead replica shows.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.timeout_s = 120.0
        self.retry_after_s = 5
        self.probe_s = 2.0
        self.down = False  # the last probe found no live replica
        self._probe: asyncio.Future | None = None

    def configure(self, timeout_s: float, retry_after_s: int, probe_s: float = 2.0) -> None:
        self.timeout_s, self.retry_after_s = float(timeout_s), int(retry_after_s)
        self.probe_s = float(probe_s)

    async def call(self, method: str, *args, began: float | None = None):
        """`handle.<method>.remote(*args)`'s result. `began` (time.monotonic()) starts the
        request's deadline, by default now."""
        deadline = (time.monotonic() if began is None else began) + self.timeout_s
        if self.down and not await self.alive():
            raise Unavailable("no live generator replica")
        try:
            return await self._once(method, args, deadline)
        except REPLICA_GONE as e:
            cause = type(e).__name__
        log.warning("generator replica lost during %s (%s): retrying once", method, cause)
        if not await self.alive():
            raise Unavailable(f"{cause}, and no live replica")
        try:
            return await self._once(method, args, deadline)
        except REPLICA_GONE as e:
            self.down = True
            raise Unavailable(f"{cause}, then {type(e).__name__} on the retry") from None

    async def _once(self, method: str, args: tuple, deadline: float):
        response = getattr(self.handle, method).remote(*args)
        task = asyncio.ensure_future(_awaited(response))
        try:
            while (left := deadline - time.monotonic()) > 0:
                done, _ = await asyncio.wait({task}, timeout=min(left, self.probe_s))
                if done:
                    return task.result()
                if time.monotonic() < deadline and not await self.alive():
                    raise Unavailable("no live generator replica")
            raise TimedOut
        except BackPressureError as e:  # Serve's queue is full: no retry, a 503 at once
            raise Unavailable(str(e)) from None
        finally:
            if not task.done():  # timed out, no replica, or the client went away
                task.cancel()
                response.cancel()

    async def alive(self) -> bool:
        """Whether a replica answers `ping` within probe_s; concurrent callers share a probe."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._ping(time.monotonic() + self.probe_s))
        self.down = not await asyncio.shield(self._probe)
        if self.down:
            log.warning("no generator replica answered within %.1f s", self.probe_s)
        return not self.down

    async def _ping(self, until: float) -> bool:
        while (left := until - time.monotonic()) > 0:
            response = self.handle.ping.remote()
            try:
                await asyncio.wait_for(response, left)
                return True
            except TimeoutError:
                response.cancel()
            except REPLICA_GONE:  # a replica the router has not yet dropped: ask again
                await asyncio.sleep(0.05)
        return False


async def _awaited(response):
    return await response


def key_digest(api_key_env: str | None) -> str | None:
    """The SHA-256 of the key in environment variable `api_key_env` (None: no key)."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise ConfigError(f"--api-key-env {api_key_env}: the variable is unset or empty")
    return hashlib.sha256(key.encode()).hexdigest()


def authorised(header: str | None, digest: str | None) -> bool:
    """Whether an `Authorization` header carries the key (always, when there is none)."""
    if digest is None:
        return True
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    offered = hashlib.sha256(token.strip().encode()).hexdigest()
    return hmac.compare_digest(offered, digest)


def unauthorised() -> JSONResponse:
    why = "missing or wrong API key: send 'Authorization: Bearer <key>'"
    return error(401, why, "authorization", headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, keyed: bool, insecure: bool = False) -> None:
    """Refuses, in one line, to serve without a key on an address others can reach."""
    if keyed or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host} is not a loopback address: give an API key (--api-key-env VAR) "
        "or pass --insecure to serve without one"
    )
