"""ActorHealth: a failed actor is down until a readiness probe answers (back-off between failed
probes); retirement after `limit` failures in a row."""

import pytest

from find_ray.errors import FindRayError
from find_ray.system.health import ActorHealth


def test_a_down_actor_gets_no_work_until_its_probe_answers():
    now = [0.0]
    health = ActorHealth("rollout", 2, limit=3, backoff_s=1.0, clock=lambda: now[0])
    assert health.available() == [0, 1] and not health.resting()
    health.failed(0, RuntimeError("died"))
    health.failed(0, RuntimeError("died"))  # its other calls in flight: the same death
    assert health.available() == [1] and health.resting() and health.in_a_row[0] == 1
    assert health.probes_due() == [0]
    assert health.probes_due() == []  # one probe at a time
    now[0] = 100.0
    assert health.available() == [1]  # time alone brings nothing back
    health.probe_failed(0, RuntimeError("restarting"), counts=False)
    assert health.probes_due() == []  # back-off: 1 s after the first failed probe
    now[0] = 101.0
    assert health.probes_due() == [0]
    health.probe_failed(0, RuntimeError("restarting"), counts=False)
    now[0] = 102.5
    assert health.probes_due() == []  # then 2 s
    now[0] = 103.0
    assert health.probes_due() == [0]
    health.probe_ok(0)
    assert health.available() == [0, 1] and not health.resting()
    assert health.in_a_row[0] == 1  # restarts do not count; only a success resets it
    health.ok(0)
    assert health.in_a_row[0] == 0


def test_back_off_is_capped():
    now = [0.0]
    health = ActorHealth(
        "reward", 1, limit=99, backoff_s=1.0, max_backoff_s=4.0, clock=lambda: now[0]
    )
    health.failed(0, RuntimeError("died"))
    waits = []
    for _ in range(6):
        assert health.probes_due() == [0]
        health.probe_failed(0, RuntimeError("restarting"), counts=False)
        waits.append(health.down[0].probe_at - now[0])
        now[0] = health.down[0].probe_at
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_dead_for_good_is_retired_and_the_last_actor_raises():
    now = [0.0]
    health = ActorHealth("rollout", 2, limit=3, backoff_s=0.0, clock=lambda: now[0])
    health.failed(1, RuntimeError("died"))
    for _ in range(2):  # the probes of an actor that is dead for good fail and count
        assert health.probes_due() == [1]
        health.probe_failed(1, RuntimeError("dead"), counts=True)
    assert health.retired == {1} and health.in_a_row[1] == 3
    assert health.probes_due() == [] and health.available() == [0]
    health.failed(0, RuntimeError("died"))
    health.probes_due()
    health.probe_failed(0, RuntimeError("dead"), counts=True)
    health.probes_due()
    with pytest.raises(
        FindRayError, match="every rollout actor failed 3 calls in a row; last error: gone"
    ):
        health.probe_failed(0, RuntimeError("gone\ntraceback ..."), counts=True)
