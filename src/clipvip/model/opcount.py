"""Count the ATen operators a piece of model code dispatches (a device-independent proxy for GPU launches).

On a GPU every ATen op that touches data is at least one kernel launch (5–10 µs of CPU each), so the op count
of a training step bounds how fast small or many-frame batches can go, whatever the FLOPs. Counting needs no
GPU: a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every op below autograd, forward and
backward alike. Used by tests/test_attention.py (the count must not grow with batch or frames) and by
benchmarks/ops.py.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Ops that only describe a tensor (no kernel on any device): not counted as launches.
METADATA_OPS = frozenset({
    "aten.view", "aten._unsafe_view", "aten.expand", "aten.transpose", "aten.t", "aten.permute",
    "aten.unsqueeze", "aten.squeeze", "aten.slice", "aten.select", "aten.alias", "aten.detach",
    "aten.as_strided", "aten.unflatten", "aten._reshape_alias", "aten.split", "aten.unbind",
    "aten.lift_fresh", "aten.empty", "aten.empty_strided", "aten.new_empty_strided", "aten.sym_size",
    "aten.sym_stride", "aten.sym_numel", "aten.sym_storage_offset", "aten.is_same_size",
})


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...`` then ``c.total`` (every op), ``c.launches`` (ops that run a kernel:
    not views or allocations) and ``c.by_name`` (a :class:`collections.Counter` of overload packets)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        name = str(func.overloadpacket)
        if not name.startswith("prim."):  # prim.device etc.: queries fake tensors answer, not ATen ops
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    @property
    def launches(self) -> int:
        return sum(n for name, n in self.by_name.items() if name not in METADATA_OPS)


def count_forward_backward(module: torch.nn.Module, inputs: torch.Tensor) -> tuple[OpCounter, OpCounter]:
    """Op counts of ``module(inputs)`` (with autograd recording) and of the backward of its float sum.

    Gradients are reset to ``None`` first, so every call counts the same first-accumulation path."""
    module.zero_grad(set_to_none=True)
    with OpCounter() as fwd:
        out = module(inputs)
    loss = out.float().sum()
    with OpCounter() as bwd:
        loss.backward()
    return fwd, bwd
