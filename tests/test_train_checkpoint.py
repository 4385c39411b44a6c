"""Checkpoint folders and the resumable sampler: the pieces exact resume is made of."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clipvip.train import checkpoint as ckpt
from clipvip.train.sampler import ResumableBatchSampler


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = ckpt.capture_rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.normal()), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    ckpt.restore_rng_state(loaded)
    got = (random.random(), float(np.random.normal()), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class _Saveable(torch.nn.Module):
    """Stands in for CLIPViP: writes the files a saved model folder has."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3))

    def save_pretrained(self, directory: Path, tokenizer: object = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text("{}")
        torch.save({"w": self.w.detach()}, directory / "weights.pt")
        return directory


def test_save_replaces_last_atomically_and_copies_best(tmp_path: Path) -> None:
    model = _Saveable()
    first = ckpt.save_checkpoint(tmp_path, "last", model, None, {"run": {"step": 1}}, {"step": 1})
    assert ckpt.load_trainer_state(first)["run"]["step"] == 1
    ckpt.save_checkpoint(tmp_path, "last", model, None, {"run": {"step": 2}}, {"step": 2})
    assert ckpt.load_trainer_state(tmp_path / "last")["run"]["step"] == 2
    best = ckpt.copy_checkpoint(tmp_path / "last", tmp_path, "best", {"selected_on": "val"})
    assert ckpt.is_complete(best) and ckpt.load_trainer_state(best)["run"]["step"] == 2
    # nothing temporary is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    model = _Saveable()
    ckpt.save_checkpoint(tmp_path, "last", model, None, {"run": {"step": 7}}, {"step": 7})
    # A crash between "move the old folder aside" and "move the new one in": only the aside copy exists,
    # plus a half-written temporary folder without its completeness marker.
    os.replace(tmp_path / "last", tmp_path / ".last.old-1-2")
    (tmp_path / ".last.tmp-x").mkdir()
    (tmp_path / ".last.tmp-x" / "config.json").write_text("{}")
    found = ckpt.find_checkpoint(tmp_path, "last")
    assert found == tmp_path / "last"
    assert ckpt.load_trainer_state(found)["run"]["step"] == 7
    assert ckpt.find_checkpoint(tmp_path / "nothing", "last") is None


def test_trainer_state_refuses_pickled_objects(tmp_path: Path) -> None:
    (tmp_path / "last").mkdir()
    torch.save({"obj": _Saveable()}, tmp_path / "last" / ckpt.STATE_FILE)
    with pytest.raises(RuntimeError, match="trainer_state.pt"):
        ckpt.load_trainer_state(tmp_path / "last")


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a = ResumableBatchSampler(20, 4, seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    a.set_epoch(2)
    first = list(a)
    b = ResumableBatchSampler(20, 4, seed=1)
    torch.manual_seed(999)
    b.set_epoch(2)
    assert list(b) == first and len(first) == 5
    b.set_epoch(3)
    assert list(b) != first
    assert sorted(i for batch in first for i in batch) == list(range(20))


def test_sampler_skips_consumed_batches() -> None:
    s = ResumableBatchSampler(22, 4, seed=0)
    s.set_epoch(1)
    full = list(s)
    assert len(full) == 5  # 22 // 4, incomplete batch dropped
    s.set_epoch(1, start_batch=3)
    assert list(s) == full[3:] and len(s) == 2


def test_rank_slices_rebuild_the_single_process_global_batch() -> None:
    single = ResumableBatchSampler(24, 8, seed=5)
    single.set_epoch(0)
    ranks = [ResumableBatchSampler(24, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    for r in ranks:
        r.set_epoch(0)
    per_rank = [list(r) for r in ranks]
    for step, global_batch in enumerate(single):
        assert per_rank[0][step] + per_rank[1][step] == global_batch


def test_sampler_refuses_a_dataset_smaller_than_one_global_batch() -> None:
    with pytest.raises(ValueError, match="global_batch_size"):
        ResumableBatchSampler(5, 4, world_size=2)
