"""Faults of a Ray cluster of several nodes (`tests/cluster_scenarios.py`, each in its own
process): the run finishes, every rollout is accounted for, and only the work in flight on the
lost node is dropped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def run_scenario(name: str, tmp_path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster_scenarios", name, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
