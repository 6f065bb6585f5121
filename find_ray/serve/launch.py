"""`find-ray serve RUN_DIR`: start the application on a Ray cluster and keep it up.

With `--follow` the command polls the run folder and, when training has written a newer policy,
redeploys with a bumped `policy_version` in the user_config under the same code version
(`CODE_VERSION`): Serve then calls the live replicas' `reconfigure`, which loads the policy in
place (a lightweight update: same replicas, no restart, no request dropped).
"""

from __future__ import annotations

import os
import secrets
import time

from ray import serve

from find_ray.config import RayConfig
from find_ray.runs.folder import newest_policy_version
from find_ray.serve.app import build_app
from find_ray.serve.guard import check_bind
from find_ray.serve.schema import ServeArgs

APP_NAME = "find-ray"
# One code version per serving process: its redeploys (--follow) are lightweight updates, and a
# new `find-ray serve` (which may run changed code) replaces every replica.
CODE_VERSION = secrets.token_hex(8)
# Serve's controller kills an HTTP proxy that is not ready within 3 checks of 5 s; on a busy
# 2-core machine starting it takes longer. Applies to a Ray this process starts.
PATIENT_SERVE_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


def patient_serve_env() -> None:
    """Sets PATIENT_SERVE_ENV (unless already set) for a local Ray started after this call."""
    for key, value in PATIENT_SERVE_ENV.items():
        os.environ.setdefault(key, value)


def deploy(
    args: ServeArgs,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str = "",
    insecure: bool = False,
) -> tuple[str, ServeArgs]:
    """Deploys the app for `args.run_dir` (starting Serve's HTTP proxy on host:port).

    Returns its URL and the arguments deployed, `policy_version` set to the version on disk.
    A host other than loopback needs an API key, or `insecure`.
    """
    check_bind(host, bool(args.api_key_env), insecure)
    args = args.model_copy(update={"policy_version": newest_policy_version(args.run_dir)})
    app = build_app(args, CODE_VERSION)  # checks the run folder before touching Ray
    patient_serve_env()
    from find_ray.system.driver import connect

    connect(RayConfig(address=address))
    # Serve's default HTTP host has differed between its docs and its code: always pass it.
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}/", args


def follow(args: ServeArgs, poll_s: float, until: float = float("inf")) -> ServeArgs:
    """Redeploys whenever the run folder holds a newer policy than `args.policy_version`."""
    served = args.policy_version
    while time.monotonic() < until:
        time.sleep(poll_s)
        newest = newest_policy_version(args.run_dir)
        if newest > served:
            args = args.model_copy(update={"policy_version": newest})
            serve.run(build_app(args, CODE_VERSION), name=APP_NAME, route_prefix="/")
            print(f"serving policy version {newest}", flush=True)
            served = newest
    return args


def serve_forever(
    args: ServeArgs,
    host: str,
    port: int,
    address: str = "",
    poll_s: float | None = None,
    insecure: bool = False,
) -> None:
    """`find-ray serve`: deploy, print the URL, then wait (and follow the run) until Ctrl-C."""
    url, args = deploy(args, host, port, address, insecure)
    keyed = f"; API key from ${args.api_key_env}" if args.api_key_env else ""
    print(f"find_ray serving {args.run_dir} at {url}  (API docs: {url}docs{keyed}; Ctrl-C stops)")
    try:
        if poll_s:
            follow(args, poll_s)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
