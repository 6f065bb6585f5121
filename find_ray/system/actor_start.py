"""An actor that fails to start reaches the user as one line, plus the log of its traceback.

Ray prints a constructor's traceback into the driver's terminal (from the actor's own stderr)
and raises it again as a RayActorError: hundreds of lines for a model that did not load. So
the actors' first start keeps its error instead of raising (`keeps_start_error`); the driver
asks each actor for it (`StartChecked.started`), writes the traceback to
`train.out_dir/actor-start.log` and raises ActorStartError, one line:

    learner actor failed to start: ValueError: policy.grid 3 does not divide the latent size 8
    (traceback: runs/find/actor-start.log)

A constructor that fails after a restart (the actor died mid-run) raises as usual, so Ray and
the pools see a dead actor. An actor that died starting (its process crashed) is reported the
same way from Ray's error.
"""

from __future__ import annotations

import functools
import re
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RuntimeEnvSetupError

from find_ray.errors import ActorStartError

START_LOG = "actor-start.log"
StartError = tuple[str, str]  # (the exception's type and first line, the whole traceback)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summary(error: BaseException) -> str:
    """ "Type: first line of the message" (the type alone for an empty message)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def restarted() -> bool:
    """Whether this actor runs after a restart (asked only when its constructor failed)."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False  # not in an actor: a plain object (a test, a benchmark)
    try:
        with warnings.catch_warnings():  # Ray's own property reads a deprecated one
            warnings.simplefilter("ignore", DeprecationWarning)
            return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # the GCS did not answer: take it for a first start
        return False


def keeps_start_error(init):
    """Decorates an actor's __init__: on the first start an exception is kept, not raised."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs) -> None:
        self.start_error = None
        try:
            init(self, *args, **kwargs)
        except Exception as e:
            if restarted():
                raise
            self.start_error = (summary(e), traceback.format_exc())

    return wrapper


class StartChecked:
    """Base of the actors: `started()` hands the driver the kept start error (None: started);
    any later call on an actor that did not start says so in one line."""

    start_error: StartError | None = None

    def started(self) -> StartError | None:
        return self.start_error

    def __getattr__(self, name: str) -> Any:  # only for attributes the constructor never set
        error = self.__dict__.get("start_error")
        why = f": it did not start ({error[0]})" if error and not name.startswith("__") else ""
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}{why}")


def last_exception_line(text: str) -> str:
    """The "Type: message" line of a Python traceback's text (its first line if it has none)."""
    lines = [line for line in ANSI.sub("", text).splitlines() if line.strip()]
    frames = [n for n, line in enumerate(lines) if line.startswith("  File ")]
    if frames:
        for line in lines[frames[-1] + 1 :]:
            if not line.startswith(" "):
                return line.strip()
    return lines[0].strip() if lines else "(no message)"


def start_error(ref: ray.ObjectRef) -> StartError | None:
    """An actor's `started()` answer; a RayActorError (it died starting) or a failed runtime
    environment (e.g. `reward.runtime_env`'s pip install: its last ERROR line) as the pair."""
    try:
        return ray.get(ref)
    except RayActorError as e:
        text = ANSI.sub("", str(e))
        return last_exception_line(text), text
    except RuntimeEnvSetupError as e:
        text = ANSI.sub("", str(e))
        errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR:")]
        return f"its runtime_env failed: {(errors or [last_exception_line(text)])[-1]}", text


def write_log(log: Path, header: str, text: str) -> Path:
    """`header` and the traceback into `log` (a temporary file if `log` cannot be written)."""
    body = f"{header}\n\n{text.rstrip()}\n"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(body)
        return log
    except OSError:
        fd, path = tempfile.mkstemp(prefix="find-ray-", suffix=f"-{START_LOG}")
        with open(fd, "w") as f:
            f.write(body)
        return Path(path)


def start_failure(actor: str, error: StartError, log: Path) -> ActorStartError:
    """The one-line error for `actor` (e.g. "reward actor 0"), its traceback written to `log`."""
    line, text = error
    written = write_log(log, f"{actor} failed to start: {line}", text)
    return ActorStartError(f"{actor} failed to start: {line} (traceback: {written})")
