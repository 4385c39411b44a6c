"""Group batch sampler: every group inside one batch, every row once per epoch, resumable, rank slices."""

from __future__ import annotations

import pytest

from clipvip.train.sampler import GroupBatchSampler, ResumableBatchSampler, groups_from_field


def _pairs(n_pairs: int) -> list[list[int]]:
    return [[2 * k, 2 * k + 1] for k in range(n_pairs)]


@pytest.mark.parametrize("n_pairs,batch", [(20, 8), (21, 8), (5, 4), (7, 6)])
def test_pairs_share_a_batch_and_every_item_once_per_epoch(n_pairs, batch):
    groups = _pairs(n_pairs)
    s = GroupBatchSampler(groups, batch, seed=3)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(2 * n_pairs))  # every item exactly once
        for b in batches:
            assert len(b) <= batch + 1 and len(b) >= 2
            for a, c in groups:
                assert (a in b) == (c in b)  # a pair is never split
        assert len(batches) == s.num_batches == len(s)
        orders.append(flat)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_mixed_group_sizes_and_singletons():
    groups = [[0, 1, 2], [3], [4, 5], [6], [7, 8, 9], [10, 11]]
    s = GroupBatchSampler(groups, 4, seed=0)
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(12))
        for g in groups:
            assert sum(all(i in b for i in g) for b in batches) == 1


def test_resume_mid_epoch_and_same_order_for_same_seed():
    s = GroupBatchSampler(_pairs(30), 8, seed=5)
    s.set_epoch(2)
    full = list(s)
    s2 = GroupBatchSampler(_pairs(30), 8, seed=5)
    s2.set_epoch(2, start_batch=3)
    assert list(s2) == full[3:]
    assert len(s2) == len(full) - 3
    with pytest.raises(ValueError):
        s2.set_epoch(2, start_batch=len(full) + 1)


def test_ranks_rebuild_the_global_batch():
    one = GroupBatchSampler(_pairs(24), 8, seed=1)
    ranks = [GroupBatchSampler(_pairs(24), 4, rank=r, world_size=2, seed=1) for r in range(2)]
    one.set_epoch(0)
    for r in ranks:
        r.set_epoch(0)
    for whole, a, b in zip(one, *ranks):
        assert a + b == whole


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="exactly once"):
        GroupBatchSampler([[0, 1], [1, 2]], 4)
    with pytest.raises(ValueError, match="does not fit"):
        GroupBatchSampler([[0, 1, 2, 3, 4]], 4)
    with pytest.raises(ValueError):
        GroupBatchSampler([[0, 2]], 4)  # index 1 missing


def test_groups_from_twin_field():
    recs = [{"id": "a", "twin": "b", "video": "a.mp4"}, {"id": "b", "twin": "a", "video": "b.mp4"},
            {"id": "c", "video": "c.mp4"}, {"id": "d", "twin": "e", "video": "d.mp4"},
            {"id": "e", "video": "e.mp4"}]
    assert groups_from_field(recs, "twin") == [[0, 1], [2], [3, 4]]
    with pytest.raises(ValueError, match="not in the file"):
        groups_from_field(recs + [{"id": "f", "twin": "zz", "video": "f.mp4"}], "twin")
    with pytest.raises(ValueError, match="twice"):
        groups_from_field(recs + [{"id": "a", "video": "x.mp4"}], "twin")


def test_plain_sampler_unchanged():
    s = ResumableBatchSampler(10, 3, seed=0)
    s.set_epoch(0)
    assert sum(len(b) for b in s) == 9
