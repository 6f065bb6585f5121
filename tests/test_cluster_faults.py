"""Faults of a Ray cluster of several nodes (`tests/cluster_scenarios.py`, each in its own
process): the run finishes, every rollout is accounted for, and only the work in flight on the
lost node is dropped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def run_scenario(name: str, tmp_path, timeout_s: float = 600) -> dict:
    """The scenario's JSON line. Its cluster (GCS, raylets, workers) lives in the scenario's
    own session: on a timeout the whole session is killed, so no Ray outlives the test."""
    argv = [sys.executable, "-m", "tests.cluster_scenarios", name, str(tmp_path / "run")]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"scenario {name} ran past {timeout_s:.0f} s: {err[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what the scenario left behind
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_lost_node_costs_only_its_work_in_flight(tmp_path):
    seen = run_scenario("node_loss", tmp_path)
    totals = seen["totals"]
    assert seen["moved"]  # the node was removed mid-run and the run finished
    assert totals["in_flight"] == 0
    assert totals["issued"] == totals["stored"] + totals["dropped"]
    dropped_after = totals["dropped"] - seen["dropped_before"]
    assert totals["dropped/actor_died"] >= 1  # the lost node's work was lost, and counted
    # no batch is sent into an actor that is still restarting: what is lost is what was in
    # flight when the node went, plus at most one batch per actor
    assert dropped_after <= seen["in_flight"] + seen["actors"] * seen["per_task"]
    # every lost rollout was issued again: each of the 16 updates had its 16
    assert totals["stored"] + totals["dropped"] - totals["dropped/actor_died"] == 16 * 16
