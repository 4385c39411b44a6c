"""Process-group helpers for ``torchrun`` + DistributedDataParallel, and a feature gather with gradient.

A single process (no ``torchrun`` environment) is a first-class case: every helper degrades to the
identity / a no-op, so the training loop has one code path.

Gradient semantics of :func:`gather_with_grad` (the part that is easy to get wrong):

Each rank computes the **same global loss** ``L`` on the gathered features ``G = [f_0; ...; f_{W-1}]``.
Locally, only the own slice ``f_r`` is connected to the local parameters. The backward of the gather
all-reduces (sums) ``dL/dG`` over the ranks and returns the own slice, so rank ``r`` gets
``W * dL/df_r`` (all ranks hold the same ``dL/dG``). DDP then **averages** parameter gradients over the
ranks: ``(1/W) * sum_r W * dL/df_r * df_r/dtheta = dL/dtheta``, the gradient of one process on the global
batch. Parameters used directly by the loss (``logit_scale``) get ``dL/dscale`` on every rank and DDP's
average keeps it. Hence: **do not rescale the loss** by the world size; use plain DDP (average) and the
loss of the gathered batch. More generally, with different per-rank losses ``L_r`` the result is the
gradient of ``mean_r L_r``.

The naive alternative (backward returns only the own slice, without the sum) would give ``dL/dtheta / W``
for the encoders but the full gradient for ``logit_scale``, so no single loss scaling fixes it.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "gather",
    "gather_with_grad",
    "is_distributed",
    "is_main",
    "local_rank",
    "rank",
    "setup",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group is initialised (by :func:`setup` or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this machine, from ``LOCAL_RANK`` (set by torchrun); 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that logs, writes checkpoints and prints tables (rank 0)."""
    return rank() == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def setup(backend: str | None = None, timeout_s: float = 1800.0) -> tuple[int, int, int, torch.device]:
    """Join the process group described by torchrun's environment; returns ``(rank, world, local_rank, device)``.

    * ``RANK`` and ``WORLD_SIZE`` in the environment (torchrun, or a spawned test): initialise with the
      ``env://`` method (``MASTER_ADDR``/``MASTER_PORT`` must be set), backend ``nccl`` when CUDA is
      available and ``gloo`` otherwise, unless ``backend`` says which.
    * Otherwise: a single process; nothing is initialised and ``(0, 1, 0, device)`` is returned.

    The device is ``cuda:LOCAL_RANK`` (made current) when CUDA is available, else CPU. Calling it when a
    group already exists just reports it.
    """
    use_cuda = torch.cuda.is_available()
    lrank = local_rank()
    if use_cuda:
        device = torch.device("cuda", lrank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if is_distributed():
        return rank(), world_size(), lrank, device
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0, device
    global_rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"RANK/WORLD_SIZE are set but {name} is not; launch with torchrun")
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=global_rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return global_rank, world, lrank, device


def cleanup() -> None:
    """Leave the process group (no-op in a single process)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_reduce_mean(x: Tensor | float) -> Tensor:
    """Mean of ``x`` over ranks, for logging (no gradient). Python numbers become a float64 tensor."""
    t = x.detach().clone() if isinstance(x, Tensor) else torch.tensor(float(x), dtype=torch.float64)
    if not is_distributed():
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world_size()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    """Leading sizes of every rank's tensor (one small all_gather), to support unequal batches."""
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, padding to the largest size for the collective."""
    biggest = max(sizes)
    if x.shape[0] < biggest:
        pad = x.new_zeros((biggest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    chunks = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(chunks, x.contiguous())
    return torch.cat([c[:n] for c, n in zip(chunks, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: all-reduce (sum) of the gradient, own slice returned."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.sizes = sizes
        ctx.rank = rank()
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order, differentiable (see the module docstring).

    Batches may differ in size across ranks. Every rank must call it (it is a collective), in the same
    order. In a single process it returns ``x`` itself.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0, without gradient (evaluation features, ids, masks).

    Works for any dtype, including bool (sent as uint8 because some backends lack bool collectives), and
    for CPU tensors under NCCL (sent through the current CUDA device, returned on the CPU).
    """
    if not is_distributed() or world_size() == 1:
        return x
    home = x.device
    is_bool = x.dtype == torch.bool
    t = x.to(torch.uint8) if is_bool else x
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        t = t.cuda()
    out = _all_gather_padded(t, _gather_sizes(t.shape[0], t.device))
    out = out.to(home)
    return out.to(torch.bool) if is_bool else out
