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
