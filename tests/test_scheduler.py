"""The driver's prompt scheduling (pure Python): the plan's prompts per slot, the policy-lag
bound on issuing, lost work first, when an update is due, and its checkpoint state."""

from find_ray.system.scheduler import PromptScheduler


def plan(iteration: int) -> list[int]:
    """Two prompts, two samples each; iteration i's prompts are 10 i + (0, 1)."""
    return [10 * iteration, 10 * iteration, 10 * iteration + 1, 10 * iteration + 1]


def test_slots_follow_the_plan_and_stop_at_the_lag_bound():
    s = PromptScheduler(plan, iterations=3, iterations_ahead=2)
    assert s.per_update == 4 and s.total == 12
    # weights of version 0 may roll out iterations 0 and 1, no further
    assert s.take(3, version=0) == [0, 0, 1]
    assert s.take(10, version=0) == [1, 10, 10, 11, 11]
    assert s.take(10, version=0) == []
    assert s.take(10, version=1) == [20, 20, 21, 21]
    assert s.take(10, version=5) == []  # every slot of the run is issued


def test_sync_mode_issues_one_iteration_at_a_time():
    s = PromptScheduler(plan, iterations=2, iterations_ahead=1)
    assert s.take(8, version=0) == [0, 0, 1, 1]
    assert s.take(8, version=0) == []
    assert s.take(8, version=1) == [10, 10, 11, 11]


def test_lost_work_goes_first_even_past_the_lag_bound():
    s = PromptScheduler(plan, iterations=2, iterations_ahead=1)
    s.take(4, version=0)
    s.requeue([1, 0])
    assert s.take(3, version=0) == [1, 0]  # requeued prompts, and no new slot yet
    assert s.take(3, version=1) == [10, 10, 11]


def test_an_update_is_due_when_its_slots_have_finished():
    s = PromptScheduler(plan, iterations=3, iterations_ahead=2)
    s.take(8, version=0)
    s.finish(3)
    assert not s.update_due(0)
    s.finish(1)
    assert s.update_due(0) and not s.update_due(1)
    s.finish(4)
    assert s.update_due(1)


def test_state_round_trips_through_a_checkpoint():
    s = PromptScheduler(plan, iterations=3, iterations_ahead=2)
    s.take(6, version=0)
    s.finish(2)
    s.requeue([11])
    restored = PromptScheduler(plan, iterations=3, iterations_ahead=2)
    restored.load_state_dict(s.state_dict())
    assert (
        restored.state_dict()
        == s.state_dict()
        == {
            "next_slot": 6,
            "finished": 2,
            "requeued": [11],
        }
    )
    assert restored.take(2, version=0) == s.take(2, version=0) == [11, 11]
