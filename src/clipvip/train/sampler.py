"""A batch sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

Exact resume needs two things from the data side: the same batches in the same order after a restart, and
no decoding of the batches that were already consumed. A plain ``RandomSampler`` draws from the global RNG
(so the order depends on everything that ran before), and skipping batches of a ``DataLoader`` decodes
them. This sampler permutes with a private generator seeded from ``(seed, epoch)`` and skips by *index*.

Distributed layout: each *global* batch (``batch_size * world_size`` indices) is cut into contiguous rank
slices, so concatenating the ranks' batches in rank order (what ``gather_with_grad`` does) rebuilds the
very batch a single process would have drawn with the same global batch size. That is what makes a
``torchrun`` run and a one-process run of the same recipe comparable step for step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class ResumableBatchSampler:
    """Yields lists of dataset indices, one list per optimisation step of this rank.

    Args:
        num_items: dataset length.
        batch_size: per-process batch size.
        rank, world_size: this process and the number of processes.
        seed: run seed; the epoch permutation is ``randperm`` under ``seed * 1_000_003 + epoch``.
        shuffle: permute per epoch (training) or keep order (evaluation).
        drop_last: drop the last incomplete global batch (training: contrastive batches stay full).
    """

    def __init__(self, num_items: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        if drop_last and self.num_batches == 0:
            raise ValueError(
                f"the dataset has {self.num_items} items, fewer than one global batch "
                f"({self.batch_size} x {self.world_size}); lower run.global_batch_size"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def num_batches(self) -> int:
        """Batches per full epoch (independent of ``start_batch``)."""
        if self.drop_last:
            return self.num_items // self.global_batch
        return -(-self.num_items // self.global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_batch`` batches (resume)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def order(self) -> list[int]:
        """The epoch's full index order (all ranks)."""
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        gb = self.global_batch
        for b in range(self.start_batch, self.num_batches):
            chunk = order[b * gb:(b + 1) * gb]
            # Uneven tail (drop_last=False): split what is left as evenly as the ranks allow.
            per = -(-len(chunk) // self.world_size)
            mine = chunk[self.rank * per:(self.rank + 1) * per]
            yield mine

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


class GroupBatchSampler:
    """Like :class:`ResumableBatchSampler`, but rows of one *group* always share a (global) batch.

    Why: some hard negatives only teach something when they meet in a batch. The demo's twin clips (the same
    scene with its events in the opposite order) are the extreme case: a random batch of 32 out of 300
    clips almost never holds a clip's twin, so nothing in the contrastive loss rewards seeing order.

    Each epoch shuffles the *groups* (``randperm`` under ``seed * 1_000_003 + epoch``, as the plain sampler)
    and packs them, in that order, into global batches of at most ``batch_size * world_size`` rows; a group
    that would not fit starts the next batch, so a group never straddles two batches. Every row is used
    exactly once per epoch: the last batch of an epoch holds whatever is left (it is merged into the one
    before when it is smaller than ``min_last`` rows, so a contrastive batch never has one row).
    Batches may therefore be a little smaller than the nominal size when groups do not tile it (pairs tile
    any even batch size exactly). With several processes, each global batch is cut into contiguous rank
    slices (see the module docstring); a group may then span two ranks, which is fine since features are
    gathered before the loss, but it stays in one global batch.

    Args:
        groups: lists of dataset indices; together they must cover ``range(num_items)`` exactly once.
        batch_size: per-process batch size.
        rank, world_size, seed: as :class:`ResumableBatchSampler`.
        shuffle: shuffle groups per epoch (False: groups in the given order).
        min_last: smallest allowed last batch (global rows); default ``max(2, world_size)``.
    """

    def __init__(self, groups: list[list[int]], batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, min_last: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.groups = [[int(i) for i in g] for g in groups]
        if any(not g for g in self.groups):
            raise ValueError("a group is empty")
        flat = sorted(i for g in self.groups for i in g)
        if flat != list(range(len(flat))):
            dup = sorted({i for i in flat if flat.count(i) > 1})[:5]
            raise ValueError(f"groups must cover the indices 0..N-1 exactly once (N={len(flat)}); "
                             f"duplicated: {dup}" if dup else f"groups must cover 0..N-1 without gaps")
        self.num_items = len(flat)
        self.batch_size = int(batch_size)
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.min_last = max(2, world_size) if min_last is None else int(min_last)
        largest = max(len(g) for g in self.groups)
        if largest > self.global_batch:
            raise ValueError(f"a group of {largest} rows does not fit a global batch of {self.global_batch}; "
                             f"raise run.global_batch_size")
        if self.num_items < self.min_last:
            raise ValueError(f"the dataset has {self.num_items} items, fewer than the smallest batch "
                             f"({self.min_last})")
        self.epoch = 0
        self.start_batch = 0
        self._packed: tuple[int, list[list[int]]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _batches(self) -> list[list[int]]:
        """This epoch's global batches (cached per epoch)."""
        if self._packed is not None and self._packed[0] == self.epoch:
            return self._packed[1]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(self.groups), generator=g).tolist()
        else:
            order = list(range(len(self.groups)))
        batches: list[list[int]] = []
        current: list[int] = []
        for k in order:
            members = self.groups[k]
            if current and len(current) + len(members) > self.global_batch:
                batches.append(current)
                current = []
            current.extend(members)
        if current:
            if len(current) < self.min_last and batches:
                batches[-1].extend(current)
            else:
                batches.append(current)
        self._packed = (self.epoch, batches)
        return batches

    @property
    def num_batches(self) -> int:
        """Batches in the current epoch (independent of ``start_batch``)."""
        return len(self._batches())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's packing and skip its first ``start_batch`` batches (resume)."""
        self.epoch = int(epoch)
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.num_batches}]")
        self.start_batch = int(start_batch)

    def order(self) -> list[int]:
        """The epoch's full index order (all ranks), batch after batch."""
        return [i for b in self._batches() for i in b]

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (for tests and logging)."""
        return [list(b) for b in self._batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self._batches()[self.start_batch:]:
            per = -(-len(chunk) // self.world_size)
            yield chunk[self.rank * per:(self.rank + 1) * per]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


def groups_from_field(records: list[dict[str, Any]], field: str) -> list[list[int]]:
    """Rows grouped by a record field that names another record (e.g. ``"twin"``: the id of the clip's
    reverse-order twin), so linked rows form one group.

    Links are followed both ways and transitively (a field naming a record whose own field is empty still
    joins them). A value naming no record of the file is an error listing the first few: a dangling link
    would silently drop the hard negative the group exists for. Rows without the field are groups of one.
    """
    from clipvip.data.annotations import record_id

    ids = [str(record_id(r)) for r in records]
    row_of: dict[str, int] = {}
    for row, rid in enumerate(ids):
        if rid in row_of:
            raise ValueError(f"group field {field!r}: id {rid!r} appears twice (rows {row_of[rid]} and {row})")
        row_of[rid] = row
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dangling = []
    for row, rec in enumerate(records):
        value = rec.get(field)
        if value in (None, ""):
            continue
        other = row_of.get(str(value))
        if other is None:
            dangling.append(f"{ids[row]} -> {value}")
            continue
        parent[find(row)] = find(other)
    if dangling:
        raise ValueError(f"group field {field!r}: {len(dangling)} record(s) name an id that is not in the file "
                         f"(e.g. {', '.join(dangling[:3])}); twins must be in the same split")
    by_root: dict[int, list[int]] = {}
    for row in range(len(records)):
        by_root.setdefault(find(row), []).append(row)
    return sorted(by_root.values(), key=lambda g: g[0])
