"""Video-tower speed and memory of the four attention modes against the per-frame CLIP floor (issues 2, 12).

Times the CLIP-ViP video tower (forward under ``no_grad``, and forward + backward) at full B/32 and B/16
width (768 wide, 12 heads, MLP 3072; a reduced layer count) for several frame counts, and prints ms/video,
the ratio to ``"masked"``, the ratio to the floor, and peak memory. Modes are timed round-robin in one
process, best of ``--repeats``, so that load from other processes hits all modes alike: read the ratios, not
the absolute numbers, on a shared machine.

The floor (row ``hf-frame``) is transformers' ``CLIPVisionModel`` applied to every frame as an image, with the
same weights: the cost of CLIP itself on the same pixels (``"proxy"`` does that work plus M proxy tokens
per frame and the proxies' attention over all frames, so it cannot be much cheaper; "vs floor" near 1 means
the proxy machinery costs nothing extra). ``"masked"`` is our dense reference (N×N scores); the official
implementation's ``forward2`` is block-sparse with ``"proxy"``'s FLOPs, so it is not what ``"masked"`` shows.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the resident-set high-water
mark (``VmHWM``) in a fresh subprocess per configuration (forward first, then forward + backward, so the
high-water mark is meaningful for both).

    python benchmarks/attention.py                          # CPU, fp32, 2 layers, T in 4 12 16 32 64
    python benchmarks/attention.py --device cuda --dtype bf16 --layers 12 --batch 8
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("masked", "proxy", "full", "frame", "hf-frame")


@dataclass
class Setting:
    width: str
    frames: int
    layers: int
    batch: int
    device: str
    dtype: str


def build(s: Setting, mode: str) -> tuple[CLIPViP, torch.Tensor]:
    name = {"b32": "clipvip-b32", "b16": "clipvip-b16"}[s.width]
    config = CLIPViPConfig.from_name(name, vision={"num_hidden_layers": s.layers},
                                     text={"num_hidden_layers": 1, "vocab_size": 1000, "bos_token_id": 998,
                                           "eos_token_id": 999, "pad_token_id": 999})  # text unused
    model = CLIPViP(config).to(device=s.device, dtype=DTYPES[s.dtype])
    set_mode(model, mode)
    x = torch.randn(s.batch, s.frames, 3, 224, 224, device=s.device, dtype=DTYPES[s.dtype])
    return model, x


def set_mode(model: CLIPViP, mode: str) -> None:
    if mode != "hf-frame":  # the floor is a separate model (floor_model)
        model.set_attention(mode)


def floor_model(model: CLIPViP) -> torch.nn.Module:
    """transformers' ``CLIPVisionModel`` with ``model``'s video-tower weights (all but the proxies and the
    temporal table, which CLIP does not have)."""
    from transformers import CLIPVisionModel

    hf = CLIPVisionModel(model.config.to_hf().vision_config)
    prefix = "vision_model."
    ours = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    target = getattr(hf, "vision_model", hf)  # transformers 4.x nests the tower, 5.x does not
    missing, unexpected = target.load_state_dict(ours, strict=False)
    extra = {"embeddings.added_cls", "embeddings.temporal_embedding"}
    if [k for k in missing if not k.endswith("position_ids")] or set(unexpected) - extra:
        raise RuntimeError(f"weight names differ from CLIPVisionModel: missing {missing}, unexpected {unexpected}")
    first = next(model.parameters())
    hf = hf.to(device=first.device, dtype=first.dtype).eval()
    # Same weights, checked: our "frame" mode is the mean over frames of exactly this model's pooled output.
    x = torch.randn(1, 2, 3, 224, 224, device=first.device, dtype=first.dtype)
    mode = model.attention
    with torch.no_grad():
        ref = hf(pixel_values=x.flatten(0, 1)).pooler_output.mean(0, keepdim=True)
        ours = model.set_attention("frame").vision_model(x)
    model.set_attention(mode)
    if not torch.allclose(ref.float(), ours.float(), atol=1e-3 if first.dtype == torch.float32 else 5e-2):
        raise RuntimeError("CLIPVisionModel with our weights does not reproduce our 'frame' mode")
    return hf


def dense_bytes(s: Setting, mode: str) -> float:
    """Rough size of the N×N score/probability tensors the dense modes keep for backward."""
    if mode not in ("masked", "full"):
        return 0.0
    patches = 196 if s.width == "b16" else 49
    n = 4 + s.frames * patches
    return s.batch * 12 * n * n * torch.finfo(DTYPES[s.dtype]).bits / 8 * (s.layers + 2)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    """One forward (no_grad) or forward + backward of the pooled video features ``[B, D]``."""
    def run() -> torch.Tensor:
        if isinstance(model, CLIPViP):
            return model.vision_model(x)
        return model(pixel_values=x.flatten(0, 1)).pooler_output  # the floor: every frame as an image

    if backward:
        model.zero_grad(set_to_none=True)
        run().float().sum().backward()
    else:
        with torch.no_grad():
            run()


def time_modes(s: Setting, modes: list[str], repeats: int, clock: str = "wall") -> dict[str, dict[str, float]]:
    """Best-of-``repeats`` ms/video per mode, forward and forward+backward, modes interleaved.

    ``clock="cpu"`` measures the process's CPU time instead of wall time: with one thread it is the work
    done, unaffected by other processes taking the cores (the way to compare modes on a shared machine)."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    model, x = build(s, next((m for m in modes if m != "hf-frame"), "proxy"))
    floor = floor_model(model) if "hf-frame" in modes else None
    best: dict[str, dict[str, float]] = {m: {"fwd": float("inf"), "train": float("inf")} for m in modes}
    for rep in range(repeats + 1):  # the first round warms up
        for mode in modes:
            set_mode(model, mode)
            for key, backward in (("fwd", False), ("train", True)):
                sync(s.device)
                t0 = timer()
                step(floor if mode == "hf-frame" else model, x, backward)
                sync(s.device)
                ms = (timer() - t0) * 1000 / s.batch
                if rep:
                    best[mode][key] = min(best[mode][key], ms)
    return best


def peak_memory_cuda(s: Setting, mode: str) -> dict[str, float]:
    model, x = build(s, mode)
    if mode == "hf-frame":
        model = floor_model(model)
    out = {}
    for key, backward in (("fwd", False), ("train", True)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, x, backward)
        torch.cuda.synchronize()
        out[key] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB. ``VmHWM`` belongs to this process image, whereas
    ``ru_maxrss`` keeps the parent's RSS across fork + exec and would swamp the measurement."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (peak memory on CPU needs Linux)")


def peak_memory_cpu_child(s: Setting, mode: str) -> dict[str, float]:
    """Runs in a fresh process: RSS high-water growth over the model and input, in MiB."""
    torch.set_num_threads(torch.get_num_threads())
    model, x = build(s, mode)
    if mode == "hf-frame":
        model = floor_model(model)
    step(model, x[:, :1], True)  # library start-up (thread pools, oneDNN scratch) out of the measurement
    base = _status_mib("VmRSS")  # current RSS after start-up
    out = {}
    for key, backward in (("fwd", False), ("train", True)):
        step(model, x, backward)
        out[key] = _status_mib("VmHWM") - base
    return out


def peak_memory_cpu(s: Setting, mode: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--_child", json.dumps([s.__dict__, mode])]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        print(f"  memory probe failed for {s} {mode}: {res.stderr.strip()[-300:]}", file=sys.stderr)
        return {"fwd": float("nan"), "train": float("nan")}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="b32,b16", help="comma list of b32, b16 (patch 32 or 16, width 768)")
    p.add_argument("--frames", default="4,12,16,32,64", help="comma list of frame counts T")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma list of modes; hf-frame is the floor: transformers' CLIPVisionModel per frame")
    p.add_argument("--layers", type=int, default=2, help="encoder layers (12 in the real model)")
    p.add_argument("--batch", type=int, default=1, help="videos per batch")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds after one warm-up round, best kept; 0 skips timing (memory only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="parameter and input dtype")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="skip dense modes whose N×N tensors would exceed this (default 8 on CPU, 60 on CUDA)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        fields, mode = json.loads(args._child)
        print(json.dumps(peak_memory_cpu_child(Setting(**fields), mode)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    limit = (args.mem_limit_gb or (60.0 if args.device.startswith("cuda") else 8.0)) * 2**30
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; known: {MODES}")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# device {args.device} ({device_name}), {torch.get_num_threads()} threads, dtype {args.dtype}, "
          f"{args.layers} layers, batch {args.batch}, {args.clock} clock, torch {torch.__version__}")
    header = ("| width | T | mode | fwd ms/video | fwd vs masked | fwd vs floor | fwd+bwd ms/video "
              "| fwd+bwd vs masked | fwd+bwd vs floor | peak MiB fwd | peak MiB fwd+bwd |")
    print(header)
    print("|" + "---|" * 11)
    results = []
    for width in args.widths.split(","):
        for frames in (int(t) for t in args.frames.split(",")):
            s = Setting(width, frames, args.layers, args.batch, args.device, args.dtype)
            run = [m for m in modes if dense_bytes(s, m) <= limit]
            for m in sorted(set(modes) - set(run)):
                print(f"| {width} | {frames} | {m} | skipped: ~{dense_bytes(s, m) / 2**30:.0f} GiB of N×N "
                      f"tensors > --mem-limit-gb | | | | | | | |")
            if not run:
                continue
            if args.repeats > 0:
                times = time_modes(s, run, args.repeats, args.clock)
            else:
                times = {m: {"fwd": float("nan"), "train": float("nan")} for m in run}
            for mode in run:
                mem = {"fwd": float("nan"), "train": float("nan")}
                if not args.no_memory:
                    mem = peak_memory_cuda(s, mode) if args.device.startswith("cuda") else peak_memory_cpu(s, mode)
                ref, low = times.get("masked"), times.get("hf-frame")
                # No masked / floor row (skipped or not asked for): no ratio to print.
                ratio = {k: (f"{ref[k] / times[mode][k]:.2f}x" if ref else "–") for k in ("fwd", "train")}
                vs_floor = {k: (f"{times[mode][k] / low[k]:.2f}" if low else "–") for k in ("fwd", "train")}
                print(f"| {width} | {frames} | {mode} | {times[mode]['fwd']:.1f} | {ratio['fwd']} | "
                      f"{vs_floor['fwd']} | {times[mode]['train']:.1f} | {ratio['train']} | {vs_floor['train']} | "
                      f"{mem['fwd']:.0f} | {mem['train']:.0f} |", flush=True)
                results.append({**s.__dict__, "mode": mode, "fwd_ms": times[mode]["fwd"],
                                "train_ms": times[mode]["train"], "peak_mib_fwd": mem["fwd"],
                                "peak_mib_train": mem["train"]})
    print("(vs masked = masked time / mode time: above 1 is faster than masked; "
          "vs floor = mode time / hf-frame time: 1.00 is the cost of per-frame CLIP)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
