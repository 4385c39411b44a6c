"""Encoding real video files: videos/s, CPU-s per video and how busy the model thread keeps the model.

Two measurements, fp32 and bf16 side by side (round-robin passes, so load from other jobs hits both alike):

1. ``tower``: the video tower alone (``model.encode_video`` on a ready batch of random CLIP-normalised
   pixels ``[B, T, 3, 224, 224]``), in process CPU time: fp32, bf16 autocast (what ``clipvip.load(...,
   dtype="bf16")`` does) and bf16 weights (the alternative we did not pick), with the cosine of each to fp32.
2. ``files`` / ``index``: the whole path from file to embedding on the real clips in
   ``../shared/assets/videos`` (every ``*.mp4`` below it): ``files`` calls
   ``VideoTextPipeline.encode_video_files``, ``index`` calls ``clipvip.search.index.build_index`` into a
   fresh temporary folder (decode workers, thumbnails, index writing included). Reported per dtype:
   videos/s (wall), process CPU-s per video (all threads, user + system, and the system part alone), and
   the **model share**: the wall time the calling thread spends inside ``model.encode_video`` divided by
   the wall time of the whole call. The rest of that thread's time is decoding, resizing, stacking or
   waiting for decode workers; issue 12 asks for >= 90 %.

The model defaults to ``clipvip-b32`` (the real B/32 architecture, 12 frames, 224 px, random weights with a
fixed seed: speed does not depend on the weights' values). Run it before and after a change to the
indexer with the same arguments::

    python benchmarks/encode_files.py                              # tower + files + index, fp32 and bf16
    python benchmarks/encode_files.py --threads 1 --repeats 2      # steadier on a shared machine
    python benchmarks/encode_files.py --skip tower --paths index --workers 1
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSETS = Path(os.environ.get("CLIPVIP_ASSETS", REPO.parent / "shared" / "assets"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="clipvip-b32", help="model spec for clipvip.load (default clipvip-b32)")
    ap.add_argument("--assets", type=Path, default=DEFAULT_ASSETS,
                    help="shared assets folder: clips under videos/, CLIP's BPE under clip/ (default ../shared/assets)")
    ap.add_argument("--videos", type=Path, default=None, help="folder of clips (default ASSETS/videos)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer for a registry model (default ASSETS' CLIP BPE)")
    ap.add_argument("--limit", type=int, default=None,
                    help="use only the first N clips (sorted by path): bf16 without AMX is slow")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, auto")
    ap.add_argument("--paths", default="files,index", help="comma-separated end-to-end paths: files, index")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: tower, files")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per setting (the fastest counts)")
    ap.add_argument("--batch-size", type=int, default=8, help="videos per model call in the file paths")
    ap.add_argument("--workers", type=int, default=None,
                    help="decode workers for the index path (default: build_index's own default)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--tower-batch", type=int, default=4, help="videos per batch in the tower section")
    ap.add_argument("--tower-repeats", type=int, default=2, help="timed calls per tower setting (best counts)")
    ap.add_argument("--tower-find-max-batch", action="store_true",
                    help="CUDA: double --tower-batch until bf16 autocast runs out of memory; time at the largest")
    ap.add_argument("--tower-max-batch", type=int, default=4096, help="stop doubling at this batch")
    ap.add_argument("--num-frames", type=int, default=None, help="frames per video (default: the model's)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return ap.parse_args(argv)


class ModelTimer:
    """Wraps ``pipe.model.encode_video`` to sum the wall time the calling thread spends inside it."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model, self.device = model, device
        self.inner = model.encode_video
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> "ModelTimer":
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = self.inner(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            return out

        self.model.encode_video = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.encode_video  # back to the class method


class NoTokenizer:
    """Stands in for a tokenizer in tower-only runs; any use says why there is none."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this benchmark run has no tokenizer (tower only): pass --tokenizer to encode text")


def cpu_times() -> tuple[float, float]:
    """(user + system, system) CPU seconds of this process, all threads."""
    t = os.times()
    return t.user + t.system, t.system


def run_path(path: str, pipe: Any, videos: list[Path], video_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """One timed pass of ``path`` over ``videos``: wall s, CPU s, system s, model-share, videos encoded.

    The index path indexes a folder; with ``--limit`` the chosen clips are symlinked into a temporary one.
    """
    with tempfile.TemporaryDirectory() as tmp, ModelTimer(pipe.model, pipe.device) as timer:
        if path == "index" and args.limit is not None:
            video_dir = Path(tmp) / "videos"
            video_dir.mkdir()
            for i, v in enumerate(videos):
                (video_dir / f"{i:03d}_{v.name}").symlink_to(v.resolve())
        c0, s0 = cpu_times()
        t0 = time.perf_counter()
        if path == "files":
            res = pipe.encode_video_files(videos, batch_size=args.batch_size)
            done, failed = len(res.paths), len(res.failures)
        else:
            from clipvip.search.index import build_index

            kw: dict[str, Any] = {"batch_size": args.batch_size, "progress": False, "echo": lambda msg: None}
            if args.workers is not None:
                kw["workers"] = args.workers
            accepted = inspect.signature(build_index).parameters
            stats = build_index(video_dir, Path(tmp) / "index", pipe,
                                **{k: v for k, v in kw.items() if k in accepted})
            done = int(getattr(stats, "encoded", 0) or 0)
            failed = len(getattr(stats, "failures", []) or [])
        wall = time.perf_counter() - t0
        c1, s1 = cpu_times()
    if not done:
        raise RuntimeError(f"{path}: no video was encoded ({failed} failed)")
    return {"wall": wall, "cpu": c1 - c0, "sys": s1 - s0, "model": timer.seconds, "done": done, "failed": failed}


def _fits(model: Any, batch: int, frames: int, size: int, dev: torch.device) -> bool:
    """One bf16-autocast forward of the tower at ``batch`` without running out of GPU memory."""
    try:
        pixels = torch.randn(batch, frames, 3, size, size, device=dev)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            model.encode_video(pixels, normalize=False)
        torch.cuda.synchronize(dev)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        pixels = None
        torch.cuda.empty_cache()


def max_tower_batch(model: Any, args: argparse.Namespace, frames: int, size: int, dev: torch.device) -> int:
    """Largest ``--tower-batch * 2^k`` (up to ``--tower-max-batch``) whose bf16 forward fits (0: none)."""
    best, b = 0, args.tower_batch
    while b <= args.tower_max_batch and _fits(model, b, frames, size, dev):
        best, b = b, b * 2
    return best


def tower(args: argparse.Namespace, pipe: Any, dtypes: list[str]) -> None:
    """Video tower alone: fp32 vs bf16 autocast vs bf16 weights, CPU time (wall on CUDA), round-robin, best of N."""
    model = pipe.model.eval()
    dev = pipe.device
    s = pipe.image_size
    if args.tower_find_max_batch:
        args.tower_batch = max_tower_batch(model, args, pipe.num_frames, s, dev)
        if args.tower_batch == 0:
            print("\n## video tower: does not fit even at the starting --tower-batch")
            return
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.tower_batch, pipe.num_frames, 3, s, s, generator=g).to(dev)
    settings: dict[str, Callable[[], torch.Tensor]] = {"fp32": lambda: model.encode_video(pixels)}
    if "bf16" in dtypes or "auto" in dtypes:
        weights16 = copy.deepcopy(model).to(torch.bfloat16)

        def autocast() -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                return model.encode_video(pixels, normalize=False)

        settings["bf16 autocast (clipvip.load dtype=bf16)"] = autocast
        settings["bf16 weights (not used)"] = lambda: weights16.encode_video(pixels.to(torch.bfloat16))
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    outs: dict[str, torch.Tensor] = {}
    best = {k: float("inf") for k in settings}
    with torch.inference_mode():
        for name, fn in list(settings.items()):  # warm-up (oneDNN primitive creation) + reference outputs
            try:
                outs[name] = torch.nn.functional.normalize(fn().float(), dim=-1).cpu()
            except torch.cuda.OutOfMemoryError:  # fp32 needs more memory than the bf16 batch search allowed
                torch.cuda.empty_cache()
                print(f"# {name}: out of GPU memory at batch {args.tower_batch}; left out")
                del settings[name]
        for _ in range(args.tower_repeats):
            for name, fn in settings.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = clock()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                best[name] = min(best[name], clock() - t0)
    what = "process CPU" if dev.type == "cpu" else "wall"
    print(f"\n## video tower alone: batch {args.tower_batch} x {pipe.num_frames} frames x {s}px, "
          f"{what} time, best of {args.tower_repeats}")
    print("| setting | ms per video | videos/s | speed vs fp32 | min cosine to fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name in settings:
        sec = best[name]
        ref = "fp32" in settings
        cos = (float(torch.nn.functional.cosine_similarity(outs[name].double(), outs["fp32"].double(), dim=1).min())
               if ref else float("nan"))
        ratio = f"{best['fp32'] / sec:.2f}x" if ref else "–"
        print(f"| {name} | {sec * 1e3 / args.tower_batch:.1f} | {args.tower_batch / sec:.1f} | {ratio} | {cos:.6f} |",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import clipvip
    from clipvip.device import cpu_flags

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in paths:
        if p not in ("files", "index"):
            print(f"--paths: unknown path {p!r} (files, index)", file=sys.stderr)
            return 2
    video_dir = args.videos or args.assets / "videos"
    videos = sorted(p for p in video_dir.rglob("*.mp4") if p.is_file()) if video_dir.is_dir() else []
    if args.limit is not None:
        videos = videos[: args.limit]
    if args.tower_find_max_batch and args.device.split(":")[0] != "cuda":
        print("--tower-find-max-batch needs --device cuda (the CPU has no out-of-memory signal to search on)",
              file=sys.stderr)
        return 2
    if args.device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    if "files" not in skip and not videos:
        print(f"no *.mp4 clips under {video_dir}: pass --videos DIR or --assets DIR", file=sys.stderr)
        return 2
    tok: Any = args.tokenizer
    if tok is None and (args.assets / "clip" / "bpe_simple_vocab_16e6.txt.gz").is_file():
        tok = str(args.assets / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    if tok is None and "files" in skip:
        tok = NoTokenizer()  # a tower-only run (e.g. on a GPU machine without the assets) encodes no text
    pipes = {d: clipvip.load(args.model, device=args.device, tokenizer=tok, num_frames=args.num_frames, dtype=d)
             for d in dtypes}
    first = next(iter(pipes.values()))
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"# encode_files: model {args.model} ({first.num_frames} frames, {first.image_size}px), device "
          f"{args.device}, dtypes {', '.join(f'{d}->{p.dtype_name}' for d, p in pipes.items())}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs "
          f"({platform.machine()}; flags: {' '.join(flags) or 'none of avx2/avx512/bf16'}), "
          f"load average {os.getloadavg()[0]:.1f}")

    if "tower" not in skip:
        tower(args, first, dtypes)
    if "files" in skip:
        return 0
    print(f"\n## files: {len(videos)} clips under {video_dir}, batch {args.batch_size}, "
          f"{'workers ' + str(args.workers) if args.workers is not None else 'default workers'}, "
          f"best of {args.repeats} (fastest wall pass)")
    for d, pipe in pipes.items():  # warm-up on one clip: oneDNN primitives, decoder libraries
        pipe.encode_video_files(videos[:1], batch_size=1)
    best: dict[tuple[str, str], dict[str, float]] = {}
    for _ in range(args.repeats):
        for path in paths:
            for d, pipe in pipes.items():
                r = run_path(path, pipe, videos, video_dir, args)
                key = (path, d)
                if key not in best or r["wall"] < best[key]["wall"]:
                    best[key] = r
    print("| path | dtype | videos | videos/s (wall) | CPU-s per video | of which system | model share of "
          "the model thread |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (path, d), r in best.items():
        n = r["done"]
        print(f"| {path} | {pipes[d].dtype_name} | {n} | {n / r['wall']:.3f} | {r['cpu'] / n:.2f} | "
              f"{r['sys'] / n:.2f} | {100 * r['model'] / r['wall']:.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
