"""ActorHealth: cooldown after a failure, retirement after `limit` failures in a row."""

import pytest

from find_ray.errors import FindRayError
from find_ray.system.health import ActorHealth


def test_cooldown_retirement_and_the_last_actor():
    now = [0.0]
    health = ActorHealth("rollout", 2, limit=2, cooldown_s=1.0, clock=lambda: now[0])
    assert health.available() == [0, 1] and not health.resting()
    health.failed(0, RuntimeError("restarting"), counts=False)
    assert health.available() == [1] and health.resting()
    now[0] = 1.5
    assert health.available() == [0, 1]  # back after the cooldown, nothing counted
    health.failed(0, RuntimeError("died"))
    health.ok(0)  # a success in between resets the count
    now[0] = 3.0
    health.failed(0, RuntimeError("died"))
    health.failed(0, RuntimeError("died"))  # the same death (while resting): counted once
    assert 0 not in health.retired
    now[0] = 5.0
    health.failed(0, RuntimeError("died"))
    assert health.retired == {0}
    now[0] = 10.0
    assert health.available() == [1]  # retired actors never come back
    health.failed(1, RuntimeError("died"))
    now[0] = 12.0
    with pytest.raises(
        FindRayError, match="every rollout actor failed 2 calls in a row; last error: gone"
    ):
        health.failed(1, RuntimeError("gone\ntraceback ..."))
