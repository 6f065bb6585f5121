"""RolloutLedger: every id ends exactly once; totals add up; resume interrupts in-flight work."""

import pytest

from find_ray.system.ledger import RolloutLedger


def test_ids_end_exactly_once_and_totals_add_up():
    ledger = RolloutLedger()
    ids = ledger.issue([0, 0, 1, 1, 2])
    assert ids == [0, 1, 2, 3, 4]
    ledger.store([0, 2])
    assert ledger.drop([1], "stale") == [0]
    assert ledger.drop([3], "actor_died") == [1]  # the prompt to resubmit
    assert ledger.totals() == {
        "issued": 5,
        "stored": 2,
        "dropped": 2,
        "in_flight": 1,
        "dropped/actor_died": 1,
        "dropped/stale": 1,
    }
    assert ledger.done == 3  # actor_died work is done again, so it is not "done"
    with pytest.raises(ValueError, match="stored"):
        ledger.store([0])  # stored twice
    with pytest.raises(ValueError, match="stale"):
        ledger.store([1])  # stored after it was dropped
    with pytest.raises(ValueError, match="unknown"):
        ledger.drop([99], "stale")


def test_state_dict_round_trip_and_interrupt():
    ledger = RolloutLedger()
    ledger.issue([0, 1, 2])
    ledger.store([0])
    restored = RolloutLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored.totals() == ledger.totals()
    assert restored.interrupt() == [1, 2]  # prompts of the work lost with the driver
    assert restored.totals()["dropped/interrupted"] == 2 and restored.totals()["in_flight"] == 0
    assert restored.issue([5]) == [3]  # ids keep counting after a resume
