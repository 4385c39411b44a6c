"""Training-step throughput and memory per attention mode, with and without activation checkpointing.

One step = encode a batch of videos and captions, symmetric InfoNCE (reference §3), backward, gradient clip,
AdamW step, logit-scale clamp: what ``clipvip train`` does per step minus data loading. Every configuration
is measured side by side in one process on the same random batch, so the ratios are the result.

Reported per configuration:
* ``pairs/s``: video-text pairs per second over the timed steps (after warm-up steps);
* ``act MB``: bytes of tensors saved for backward during one forward (exact, device independent; this is
  what activation checkpointing trades for recompute);
* ``peak MB``: on CUDA, ``torch.cuda.max_memory_allocated`` during the steps; on CPU, the growth of the
  process's resident set during the steps (coarse, sampled every millisecond).

``--clock cpu`` times process CPU time (all threads) instead of wall time: on a shared machine that counts
the work, not the waiting; with ``--threads 1`` it is what one idle core would take.

CPU (default, a 2-layer B/32 with batch 4, so it runs in a few minutes on 2 cores)::

    python benchmarks/train_step.py
    python benchmarks/train_step.py --clock cpu --threads 1 --steps 2   # steadier on a shared machine
GPU (the lent H100/H200 run: full B/32 and B/16 in bf16, largest batch that fits)::

    python benchmarks/train_step.py --device cuda --dtype bf16 --arch clipvip-b32 --layers 0 --find-max-batch
    python benchmarks/train_step.py --device cuda --dtype bf16 --arch clipvip-b16 --layers 0 --find-max-batch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
from typing import Any

import torch

MODES = ("proxy", "masked", "full", "frame")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="clipvip-b32", help="registered architecture (clipvip-b32, clipvip-b16, ...)")
    p.add_argument("--layers", type=int, default=2,
                   help="encoder layers per tower (0 = the architecture's own; the CPU default is 2 to stay quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast dtype of the step")
    p.add_argument("--batch-size", type=int, default=4, help="videos (= captions) per step")
    p.add_argument("--num-frames", type=int, default=12, help="frames per video")
    p.add_argument("--text-length", type=int, default=50, help="tokens per caption")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated attention modes to measure")
    p.add_argument("--checkpointing", default="off,on", help="activation checkpointing settings: off, on or both")
    p.add_argument("--find-max-batch", action="store_true",
                   help="CUDA: double the batch from --batch-size until out of memory; measure at the largest that fits")
    p.add_argument("--max-batch-cap", type=int, default=4096, help="stop doubling at this batch size")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or process CPU time (CPU only; steadier when other jobs share the cores)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (the compile itself is in the warm-up steps, not timed)")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace) -> Any:
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP

    overrides: dict[str, Any] = {}
    if args.layers > 0:
        overrides = {"vision": {"num_hidden_layers": args.layers}, "text": {"num_hidden_layers": args.layers}}
    cfg = CLIPViPConfig.from_name(args.arch, **overrides)
    torch.manual_seed(0)
    return CLIPViP(cfg)


class RssSampler:
    """Peak resident-set growth of this process while active (CPU memory proxy)."""

    def __init__(self) -> None:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast for bf16/fp16; nothing for fp32 (CUDA autocast does not accept fp32 as a target)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def make_batch(model: Any, args: argparse.Namespace, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    cfg = model.config
    s = cfg.vision.image_size
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(batch, args.num_frames, 3, s, s, generator=g)
    length = min(args.text_length, cfg.text.max_position_embeddings)
    ids = torch.randint(1, min(cfg.text.vocab_size, 49406), (batch, length), generator=g)
    ids[:, 0] = cfg.text.bos_token_id
    ids[:, -1] = cfg.text.eos_token_id
    mask = torch.ones_like(ids)
    return {"pixel_values": pixels.to(device), "input_ids": ids.to(device), "attention_mask": mask.to(device)}


def train_step(model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               device: torch.device, dtype: torch.dtype | None) -> float:
    from clipvip.losses import clamp_logit_scale_, info_nce

    with autocast(device, dtype):
        v = model.encode_video(batch["pixel_values"])
        t = model.encode_text(batch["input_ids"], batch["attention_mask"])
    loss = info_nce(v.float(), t.float(), model.logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    clamp_logit_scale_(model.logit_scale)
    return float(loss.detach())


def saved_activation_mb(model: Any, batch: dict[str, torch.Tensor], device: torch.device,
                        dtype: torch.dtype | None) -> float:
    """Bytes saved for backward by one forward (unique storages), in MB."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except RuntimeError:
            pass
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(device, dtype):
            v = model.encode_video(batch["pixel_values"])
            t = model.encode_text(batch["input_ids"], batch["attention_mask"])
        loss = (v.float() @ t.float().T).sum()
    total = sum(n for ptr, n in seen.items() if ptr not in params)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total / 2**20


def measure(model: Any, args: argparse.Namespace, mode: str, ckpt: bool, batch_size: int,
            device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    model.set_attention(mode)
    model.set_gradient_checkpointing(ckpt)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    batch = make_batch(model, args, batch_size, device)
    # under torch.compile the saved tensors are the compiled graph's, not eager autograd's: measured eager only
    act = float("nan") if args.compile else saved_activation_mb(model, batch, device, dtype)
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with RssSampler() as rss:
        t0 = clock()
        for _ in range(args.steps):
            loss = train_step(model, optimizer, batch, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = clock() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss.growth_mb
    del optimizer
    return {"mode": mode, "checkpointing": ckpt, "batch": batch_size, "pairs_per_s": batch_size * args.steps / dt,
            "step_s": dt / args.steps, "act_mb": act, "peak_mb": peak, "loss": loss}


def fits(model: Any, args: argparse.Namespace, mode: str, ckpt: bool, batch_size: int, device: torch.device,
         dtype: torch.dtype | None) -> bool:
    """One forward+backward+step at ``batch_size`` without running out of GPU memory."""
    model.set_attention(mode)
    model.set_gradient_checkpointing(ckpt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    try:
        train_step(model, optimizer, make_batch(model, args, batch_size, device), device, dtype)
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del optimizer
        torch.cuda.empty_cache()


def max_batch(model: Any, args: argparse.Namespace, mode: str, ckpt: bool, device: torch.device,
              dtype: torch.dtype | None) -> int:
    """Largest batch of the doubling sequence ``--batch-size * 2^k`` that fits (0 if none does)."""
    best, b = 0, args.batch_size
    while b <= args.max_batch_cap and fits(model, args, mode, ckpt, b, device, dtype):
        best, b = b, b * 2
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if args.clock == "cpu" and device.type == "cuda":
        print("--clock cpu measures host CPU time and would miss GPU work: use the wall clock on CUDA",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.find_max_batch and device.type != "cuda":
        print("--find-max-batch needs --device cuda (CPU has no out-of-memory signal to search on)", file=sys.stderr)
        return 2
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(args).to(device)
    if args.compile:
        # the encoders are methods, not forward(): compile them in place (recompiles per attention mode)
        model.encode_video = torch.compile(model.encode_video)
        model.encode_text = torch.compile(model.encode_text)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    ckpts = [{"off": False, "on": True}[c.strip()] for c in args.checkpointing.split(",") if c.strip()]
    cfg = model.config
    print(f"# train_step: {args.arch} (layers {cfg.vision.num_hidden_layers}/{cfg.text.num_hidden_layers}), "
          f"{args.num_frames} frames, {cfg.vision.image_size}px, text {args.text_length}, device {device}, "
          f"dtype {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} clock"
          f"{', torch.compile' if args.compile else ''}")
    if device.type == "cuda":
        print(f"# GPU: {torch.cuda.get_device_name(device)}")
    rows = []
    unit = "CPU-s" if args.clock == "cpu" else "s"
    print(f"| attention | act. ckpt | batch | pairs/{unit} | {unit}/step | saved act. MB | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        for ckpt in ckpts:
            bs = args.batch_size
            if args.find_max_batch:
                bs = max_batch(model, args, mode, ckpt, device, dtype)
                if bs == 0:
                    print(f"| {mode} | {'on' if ckpt else 'off'} | does not fit at {args.batch_size} | | | | |")
                    continue
            try:
                row = measure(model, args, mode, ckpt, bs, device, dtype)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"| {mode} | {'on' if ckpt else 'off'} | {bs} | OOM | | | |")
                continue
            if not math.isfinite(row["loss"]):
                row["note"] = "non-finite loss"
            rows.append(row)
            print(f"| {mode} | {'on' if ckpt else 'off'} | {bs} | {row['pairs_per_s']:.2f} | {row['step_s']:.3f} | "
                  f"{'–' if math.isnan(row['act_mb']) else format(row['act_mb'], '.0f')} | {row['peak_mb']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
            json.dump({"args": vars(args), "rows": clean}, fh, indent=2)  # strict JSON: no NaN
    return 0


if __name__ == "__main__":
    sys.exit(main())
