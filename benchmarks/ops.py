"""ATen ops per encoder layer of the video tower vs batch size, forward and backward (issue 12, item 5).

On a GPU each ATen op that computes is at least one kernel launch (5–10 µs of host time), so a layer whose op
count grows with the batch becomes launch-bound long before it is compute-bound. No GPU is needed to count:
:class:`clipvip.model.opcount.OpCounter` (a ``TorchDispatchMode``) sees every op below autograd. The model
and inputs are built under ``FakeTensorMode``, so the CPU code path is dispatched op by op (same kernels
chosen) without computing anything: batch 128 at full B/32 width costs nothing. ``--check`` first verifies
that fake and real execution dispatch the same ops at a small batch.

"Per layer" is the difference between towers of ``--layers + 1`` and ``--layers`` layers: a middle layer
(in the last layer only proxy 0 reaches the output, so its patch branch gets no backward). "ops" counts
every op; "launches" leaves out view/metadata ops that run no kernel.

``--baseline REV`` also counts the ``proxy`` attention of an older commit (default: the last one with the
per-video Python loop), swapped into the same model, for a side-by-side table.

    python benchmarks/ops.py                         # B/32, T=12, batch 1 8 32 128, current vs loop version
    python benchmarks/ops.py --width b16 --frames 32 --batches 1,64 --baseline none
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP
from clipvip.model.attention import CLIPAttention
from clipvip.model.opcount import OpCounter, count_forward_backward

#: The last commit whose ``forward_proxy`` looped over the batch in Python.
LOOP_VERSION = "a81699c"
ROOT = Path(__file__).resolve().parents[1]


def old_attention_class(rev: str) -> type:
    """``CLIPAttention`` as it was at git revision ``rev`` (loaded from ``git show``, not copied here)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/clipvip/model/attention.py"],
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"attention_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"attention_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.CLIPAttention


def build(width: str, layers: int, attention_cls: type | None) -> CLIPViP:
    name = {"b32": "clipvip-b32", "b16": "clipvip-b16"}[width]
    config = CLIPViPConfig.from_name(name, vision={"num_hidden_layers": layers},
                                     text={"num_hidden_layers": 1, "vocab_size": 1000, "bos_token_id": 998,
                                           "eos_token_id": 999, "pad_token_id": 999})  # text unused
    model = CLIPViP(config).train()
    if attention_cls is not None:
        for module in model.vision_model.modules():
            if isinstance(module, CLIPAttention):
                module.__class__ = attention_cls  # same parameters and attributes, older forward_proxy
    return model


def count(width: str, layers: int, batch: int, frames: int, attention_cls: type | None, fake: bool = True
          ) -> tuple[OpCounter, OpCounter]:
    """Forward and backward op counts of the video tower (fake tensors unless ``fake=False``)."""
    mode = FakeTensorMode() if fake else None
    if mode is not None:
        mode.__enter__()
    try:
        model = build(width, layers, attention_cls)
        size = model.config.vision.image_size
        x = torch.randn(batch, frames, 3, size, size)
        return count_forward_backward(model.vision_model, x)
    finally:
        if mode is not None:
            mode.__exit__(None, None, None)


def per_layer(width: str, layers: int, batch: int, frames: int, attention_cls: type | None, fake: bool = True
              ) -> dict[str, int]:
    f1, b1 = count(width, layers + 1, batch, frames, attention_cls, fake)
    f0, b0 = count(width, layers, batch, frames, attention_cls, fake)
    return {"fwd_ops": f1.total - f0.total, "bwd_ops": b1.total - b0.total,
            "fwd_launches": f1.launches - f0.launches, "bwd_launches": b1.launches - b0.launches}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", default="b32", choices=["b32", "b16"])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--batches", default="1,8,32,128", help="comma list of batch sizes")
    p.add_argument("--layers", type=int, default=2, help="layers of the smaller tower (per layer = +1 minus this)")
    p.add_argument("--tower-layers", type=int, default=12, help="also count a whole tower of this many layers")
    p.add_argument("--baseline", default=LOOP_VERSION, help="git revision whose proxy attention to compare, or none")
    p.add_argument("--check", action="store_true",
                   help="first check that fake and real execution dispatch the same ops (batch 2, T=2)")
    args = p.parse_args(argv)
    versions: dict[str, type | None] = {"current": None}
    if args.baseline.lower() != "none":
        try:
            versions[f"loop ({args.baseline})"] = old_attention_class(args.baseline)
        except (OSError, subprocess.CalledProcessError) as exc:  # no git, or a checkout without that history
            print(f"# baseline {args.baseline} unavailable ({type(exc).__name__}); counting the current code only")
    if args.check:
        for name, cls in versions.items():
            real = per_layer(args.width, 1, 2, 2, cls, fake=False)
            fake = per_layer(args.width, 1, 2, 2, cls, fake=True)
            print(f"# fake vs real dispatch, {name}: {'same' if real == fake else f'DIFFER {real} {fake}'}")
    print(f"# video tower, {args.width} widths (768 wide, 12 heads), T={args.frames}, training mode, "
          f"torch {torch.__version__}; per layer = {args.layers + 1}-layer minus {args.layers}-layer tower; "
          f"whole tower = {args.tower_layers} layers + embeddings and pooling")
    print("| batch | proxy attention | fwd ops/layer | bwd ops/layer | fwd launches/layer | bwd launches/layer "
          f"| {args.tower_layers}-layer tower fwd+bwd ops |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",")):
        for name, cls in versions.items():
            c = per_layer(args.width, args.layers, batch, args.frames, cls)
            f, b = count(args.width, args.tower_layers, batch, args.frames, cls)
            print(f"| {batch} | {name} | {c['fwd_ops']} | {c['bwd_ops']} | {c['fwd_launches']} | "
                  f"{c['bwd_launches']} | {f.total + b.total} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
