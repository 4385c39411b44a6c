"""``clipvip index VIDEO_DIR --model SPEC --index DIR``: build or update a search index of moments."""

from __future__ import annotations

import argparse
import sys

ORDER = 40

EPILOG = """exit status: 0 every video is indexed; 1 the index is complete but some files could not be read
(listed on the console and in DIR/report.json: corrupt, empty, not a video, dangling symlink, symlink loop,
permission denied); 2 usage error (bad arguments, another model's index, an old-format index, or another
`clipvip index` already writing DIR). A re-run encodes only new or changed files and drops deleted ones;
killing it loses at most the batch in flight."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="build or update a search index of a video folder (moments, incremental, crash-safe)",
        description="Walk VIDEO_DIR (recursive, video extensions), cut every new or changed video into "
                    "overlapping windows, embed each window with the model and store the vectors, their "
                    "times and thumbnails in --index DIR (SQLite + an append-only vector file).",
        epilog=EPILOG,
    )
    p.add_argument("video_dir", metavar="VIDEO_DIR", help="folder of videos, searched recursively")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="model: a clipvip directory, an official .pt checkpoint, a transformers CLIP name or "
                        "directory, or a registry name (random weights, for tests)")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    p.add_argument("--tokenizer", metavar="SPEC", default=None,
                   help="tokenizer directory or CLIP BPE file, when the model does not carry one")
    p.add_argument("--window", type=float, default=10.0,
                   help="window length in seconds (default 10); a video no longer than this is one window")
    p.add_argument("--stride", type=float, default=5.0, help="seconds between window starts (default 5)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows encoded together; finished videos are committed after each batch (default 8)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames sampled uniformly per window (default: the frames recorded in the model by "
                        "training, else the model's temporal size)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads decoding and transforming ahead of the model (default: a quarter of the "
                        "cores, at least 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the model (default: the cores left after --workers)")
    p.add_argument("--vectors", choices=("float32", "float16"), default="float32",
                   help="storage type of the vectors of a new index (float16 halves the file; default float32)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default=None,
                   help="compute type of the model: fp32, bf16 (autocast) or auto (bf16 on AMX/AVX512-BF16 CPUs and bf16-capable GPUs); recorded in the index and its model id (default: fp32)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the existing index content and re-encode everything (new model, new windows, "
                        "old format)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from clipvip.cli import CLIError

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name in ("workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not (args.window > 0 and args.stride > 0) or args.window == float("inf") or args.stride == float("inf"):
        raise CLIError(f"--window and --stride must be positive numbers of seconds, got {args.window}, {args.stride}")
    if not Path(args.video_dir).is_dir():
        raise CLIError(f"{args.video_dir}: not a directory")
    if torchrun_world() > 1:
        from clipvip.search.distributed import run_distributed

        return run_distributed(args)

    import torch

    from clipvip.pipeline import load
    from clipvip.search.index import (
        IndexFormatError,
        IndexLockedError,
        build_index,
        default_threads,
    )

    workers, threads = default_threads(args.workers, args.threads)
    torch.set_num_threads(threads)
    kwargs = {"device": args.device, "tokenizer": args.tokenizer, "num_frames": args.num_frames}
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    try:
        pipeline = load(args.model, **kwargs)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise CLIError(f"cannot load model {args.model}: {exc}") from exc
    print(f"model {pipeline.spec} (id {pipeline.model_id}, dim {pipeline.dim}, {pipeline.num_frames} frames); "
          f"{workers} decode worker(s), {threads} torch thread(s), windows of {args.window:g} s every "
          f"{args.stride:g} s", file=sys.stderr)
    try:
        stats = build_index(args.video_dir, args.index, pipeline, batch_size=args.batch_size,
                            rebuild=args.rebuild, progress=not args.no_progress, workers=workers,
                            window=args.window, stride=args.stride, vector_dtype=args.vectors,
                            echo=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    except (IndexFormatError, IndexLockedError) as exc:
        raise CLIError(str(exc)) from exc
    except ValueError as exc:  # e.g. NaN/inf embeddings from damaged weights: nothing was stored
        raise CLIError(str(exc)) from exc
    print(f"{os.fsdecode(args.index)}: {stats.total} videos ({stats.total_windows} windows) indexed; this run: "
          f"{stats.found} found, {stats.new} new, {stats.changed} changed, {stats.deleted} deleted, "
          f"{stats.encoded} encoded ({stats.windows} windows), {stats.failed} unreadable ({stats.seconds:.1f} s)")
    for f in stats.failures:
        print(f"  unreadable: {f['path']}: {f['reason']}")
    return 1 if stats.failures else 0


def torchrun_world() -> int:
    """World size when started by ``torchrun`` (``WORLD_SIZE`` set), else 1."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1
