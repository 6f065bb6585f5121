"""Tests of find_ray.algo.store: capacity and lag drops, unique ids, minibatches, state_dict."""

from collections import Counter

import pytest
import torch

from find_ray.algo.store import Rollout, RolloutStore, prompt_table, stack_rollouts

PROMPTS = [f"prompt {i}" for i in range(4)]
ROWS = prompt_table(PROMPTS)


def _rollout(rid: int, version: int = 0, prompt: str = "prompt 0") -> Rollout:
    z = torch.full((2, 2), float(rid))
    return Rollout(rid, prompt, z, -1.0 - rid, version, 0.1 * rid)


def _ids(store: RolloutStore) -> list[int]:
    return [r.rollout_id for r in store.rollouts()]


def test_capacity_evicts_oldest_and_counts():
    store = RolloutStore(capacity=3, max_policy_lag=10)
    for rid in range(5):
        assert store.add(_rollout(rid), current_version=0)
    assert len(store) == 3 and _ids(store) == [2, 3, 4]
    assert store.drops == Counter(evicted=2)


def test_lag_drops_at_add_and_by_evict_stale():
    store = RolloutStore(capacity=10, max_policy_lag=2)
    assert store.add(_rollout(0, version=3), current_version=5)  # lag 2: kept
    assert not store.add(_rollout(1, version=2), current_version=5)  # lag 3: dropped
    assert store.drops["stale"] == 1 and len(store) == 1
    store.add(_rollout(2, version=5), current_version=5)
    store.add(_rollout(3, version=4), current_version=5)
    assert store.evict_stale(current_version=6) == 1  # version 3 now has lag 3
    assert _ids(store) == [2, 3] and store.drops["stale"] == 2
    assert store.evict_stale(current_version=6) == 0


def test_duplicate_id_raises_even_after_eviction_or_drop():
    store = RolloutStore(capacity=1, max_policy_lag=0)
    store.add(_rollout(0), 0)
    with pytest.raises(ValueError, match="duplicate"):
        store.add(_rollout(0), 0)  # held
    store.add(_rollout(1), 0)  # evicts 0
    assert _ids(store) == [1]
    with pytest.raises(ValueError):
        store.add(_rollout(0), 0)  # evicted, still seen
    assert not store.add(_rollout(2, version=0), current_version=1)  # stale
    with pytest.raises(ValueError):
        store.add(_rollout(2, version=1), 1)  # dropped ids stay seen too


def test_minibatches_cover_each_record_once_per_epoch():
    store = RolloutStore(capacity=100, max_policy_lag=5)
    for rid in range(10):
        store.add(_rollout(rid, version=rid % 3, prompt=PROMPTS[rid % 4]), current_version=2)
    rows = prompt_table(PROMPTS[::-1])  # a learner's own table: prompt i is in row 3 - i
    batches = list(store.minibatches(4, rows, epochs=3, generator=torch.Generator()))
    assert [len(b.rollout_id) for b in batches] == [4, 4, 2] * 3
    epochs = [torch.cat([b.rollout_id for b in batches[i : i + 3]]) for i in (0, 3, 6)]
    for ids in epochs:
        assert sorted(ids.tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1]) or not torch.equal(epochs[1], epochs[2])
    b = batches[0]
    assert b.z.shape == (4, 2, 2) and b.z.dtype == torch.float32
    for i, rid in enumerate(b.rollout_id.tolist()):  # columns stay aligned
        assert torch.equal(b.z[i], torch.full((2, 2), float(rid)))
        assert b.prompt_row[i].item() == 3 - rid % 4 and b.policy_version[i].item() == rid % 3
        assert b.behaviour_logp[i].item() == pytest.approx(-1.0 - rid)
        assert b.reward[i].item() == pytest.approx(0.1 * rid)


def test_minibatches_reproducible_with_seeded_generator():
    store = RolloutStore(capacity=100, max_policy_lag=5)
    for rid in range(8):
        store.add(_rollout(rid), 0)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b.rollout_id for b in store.minibatches(3, ROWS, 2, gen)]).tolist()

    assert order(0) == order(0)


def test_state_dict_roundtrip():
    store = RolloutStore(capacity=3, max_policy_lag=1)
    for rid in range(5):
        store.add(_rollout(rid, version=1, prompt=PROMPTS[rid % 2]), current_version=1)
    store.add(_rollout(9, version=0), current_version=2)  # stale
    restored = RolloutStore(capacity=1, max_policy_lag=0)
    restored.load_state_dict(store.state_dict())
    assert (restored.capacity, restored.max_policy_lag) == (3, 1)
    assert restored.drops == store.drops == Counter(evicted=2, stale=1)
    assert _ids(restored) == _ids(store) == [2, 3, 4]
    for a, b in zip(restored.rollouts(), store.rollouts(), strict=True):
        assert (a.rollout_id, a.prompt) == (b.rollout_id, b.prompt) and torch.equal(a.z, b.z)
        assert (a.behaviour_logp, a.policy_version, a.reward) == (
            b.behaviour_logp,
            b.policy_version,
            b.reward,
        )
    for rid in (0, 9):  # evicted and dropped ids are still known after restore
        with pytest.raises(ValueError):
            restored.add(_rollout(rid, version=2), current_version=2)


def test_state_dict_does_not_carry_shared_storage(tmp_path):
    big = torch.randn(100, 64)  # rollouts made from rows of one batch tensor share its storage
    store = RolloutStore(capacity=2, max_policy_lag=0)
    for i in range(2):
        store.add(Rollout(i, "a prompt", big[i], 0.0, 0, 0.0), current_version=0)
    torch.save(store.state_dict(), tmp_path / "store.pt")
    assert (tmp_path / "store.pt").stat().st_size < big.numel() * 4 / 4


def test_packed_rollouts_round_trip_through_pickle():
    """The wire form between actors keeps every field (z exactly) and survives an empty batch."""
    import pickle

    from find_ray.algo.store import pack_rollouts, unpack_rollouts

    rollouts = [
        Rollout(7 + n, PROMPTS[n % 3], torch.randn(2, 4, 4), -1.5 * n, 3, 0.25 * n)
        for n in range(5)
    ]
    back = unpack_rollouts(pickle.loads(pickle.dumps(pack_rollouts(rollouts, (2, 4, 4)))))
    assert [
        (r.rollout_id, r.prompt, r.behaviour_logp, r.policy_version, r.reward) for r in back
    ] == [(r.rollout_id, r.prompt, r.behaviour_logp, r.policy_version, r.reward) for r in rollouts]
    assert all(
        torch.equal(a.z, b.z) and a.z.dtype == b.z.dtype
        for a, b in zip(back, rollouts, strict=True)
    )
    empty = pack_rollouts([], (2, 4, 4))
    assert empty.z.shape == (0, 2, 4, 4) and unpack_rollouts(empty) == []


def test_rollouts_are_keyed_by_prompt_text():
    """A rollout's row comes from the learner's table at stacking time; a prompt the table
    lacks, or a table with a prompt twice, is an error rather than a silent mix-up."""
    rollouts = [_rollout(0, prompt="prompt 2"), _rollout(1, prompt="prompt 0")]
    assert stack_rollouts(rollouts, ROWS).prompt_row.tolist() == [2, 0]
    assert stack_rollouts(rollouts, {"prompt 0": 1, "prompt 2": 0}).prompt_row.tolist() == [0, 1]
    with pytest.raises(KeyError, match="prompt 2"):
        stack_rollouts(rollouts, prompt_table(["prompt 0"]))
    with pytest.raises(ValueError, match="distinct"):
        prompt_table(["a red circle", "a blue square", "a red circle"])
