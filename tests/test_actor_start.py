"""An actor that fails to start reaches the user as one line plus the log of its traceback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from find_ray.errors import ActorStartError
from find_ray.system.actor_start import (
    START_LOG,
    StartChecked,
    keeps_start_error,
    last_exception_line,
    start_failure,
)


class Grid(StartChecked):
    @keeps_start_error
    def __init__(self, grid: int) -> None:
        if 8 % grid:
            raise ValueError(f"policy.grid {grid} does not divide the latent size 8\nmore")
        self.grid = grid


def test_a_failing_constructor_is_kept_not_raised():
    assert Grid(4).started() is None and Grid(4).grid == 4
    broken = Grid(3)
    line, text = broken.started()
    assert line == "ValueError: policy.grid 3 does not divide the latent size 8"
    assert text.startswith("Traceback") and "raise ValueError" in text
    with pytest.raises(AttributeError, match=r"it did not start \(ValueError: policy.grid 3"):
        broken.grid  # noqa: B018  (what a later call on the actor would hit)
    assert not hasattr(broken, "__ray_shutdown__")  # probes of dunders stay AttributeErrors


RAY_TEXT = """The actor died because of an error raised in its creation task, \x1b[36mray::\
RewardActor.__init__()\x1b[39m (pid=6081, ip=192.0.2.2, actor_id=62, repr=<RewardActor>)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/x/find_ray/rewards/imagereward.py", line 142, in __init__
    checkpoint, med = _download()
                      ^^^^^^^^^^^
  File "/x/huggingface_hub/file_download.py", line 1010, in hf_hub_download
    raise LocalEntryNotFoundError(
huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate
the file on the Hub and we cannot find the requested files in the local cache.
"""


def test_the_exception_line_of_a_ray_traceback():
    assert last_exception_line(RAY_TEXT) == (
        "huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate"
    )
    assert last_exception_line("The actor died unexpectedly.\n\tpid: 3") == (
        "The actor died unexpectedly."
    )


def test_the_failure_is_one_line_and_the_log_holds_the_traceback(tmp_path):
    error = start_failure("reward actor 0", ("ValueError: bad", RAY_TEXT), tmp_path / START_LOG)
    assert isinstance(error, ActorStartError)
    assert str(error) == (
        f"reward actor 0 failed to start: ValueError: bad (traceback: {tmp_path / START_LOG})"
    )
    log = (tmp_path / START_LOG).read_text()
    assert log.startswith("reward actor 0 failed to start: ValueError: bad\n")
    assert "_download()" in log and "LocalEntryNotFoundError" in log

    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the run folder cannot be made: the log goes to a temp file
    error = start_failure("learner actor", ("X: y", "Traceback ..."), blocked / START_LOG)
    path = str(error).rpartition("(traceback: ")[2].rstrip(")")
    assert path != str(blocked / START_LOG) and "Traceback ..." in Path(path).read_text()


@pytest.mark.ray
def test_an_actor_that_fails_to_start_is_one_line_and_its_actors_are_stopped(
    ray_local, tmp_path, capsys
):
    """The amortized policy's grid must divide the latent, whose size only the rollout actor's
    backend knows: the learner actor's constructor raises. One line, the traceback in the
    run folder's log, every actor stopped, training never started."""
    import ray

    from find_ray import cli

    run = tmp_path / "run"
    free = ray.available_resources().get("CPU", 0.0)
    argv = [
        "train",
        "model.backend=simulated",
        "reward.name=brightness",
        "train.prompts=[p one,p two]",
        "ray.num_rollout_actors=1",
        "policy.kind=amortized",
        "policy.grid=3",
        f"train.out_dir={run}",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "find-ray: error: learner actor failed to start: ValueError: policy.grid 3 does not "
        f"divide the latent size 8 (traceback: {run / START_LOG})"
    )
    log = (run / START_LOG).read_text()
    assert "Traceback" in log and "low_resolution" in log and "amortized.py" in log
    assert not (run / "config.yaml").exists()  # the run itself never started
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0.0) < free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0.0) >= free  # the started actors were killed
