"""``clipvip index VIDEO_DIR --model SPEC --index DIR``: build or update a search index."""

from __future__ import annotations

import argparse
import sys

ORDER = 40

EPILOG = """exit status: 0 every video is indexed; 1 the index is complete but some files could not be read
(listed on the console and in DIR/report.json); 2 usage error (bad arguments, another model's index, ...).
A re-run encodes only new or changed files and drops deleted ones; killing it loses at most one batch."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="build or update a search index of a video folder (incremental, crash-safe)",
        description="Walk VIDEO_DIR (recursive, video extensions), embed every new or changed video with "
                    "the model and store embeddings, a manifest and thumbnails in --index DIR.",
        epilog=EPILOG,
    )
    p.add_argument("video_dir", metavar="VIDEO_DIR", help="folder of videos, searched recursively")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="model: a clipvip directory, an official .pt checkpoint, a transformers CLIP name or "
                        "directory, or a registry name (random weights, for tests)")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    p.add_argument("--tokenizer", metavar="SPEC", default=None,
                   help="tokenizer directory or CLIP BPE file, when the model does not carry one")
    p.add_argument("--batch-size", type=int, default=8,
                   help="videos encoded (and committed to disk) together (default 8)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames sampled uniformly per video (default: the frames recorded in the model by "
                        "training, else the model's temporal size)")
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding videos ahead of the encoder (default 2; 1 = no prefetch)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the existing index content and re-encode everything (e.g. with a new model)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if not Path(args.video_dir).is_dir():
        raise CLIError(f"{args.video_dir}: not a directory")

    from clipvip.pipeline import load
    from clipvip.search.index import IndexFormatError, build_index

    try:
        pipeline = load(args.model, device=args.device, tokenizer=args.tokenizer, num_frames=args.num_frames)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise CLIError(f"cannot load model {args.model}: {exc}") from exc
    print(f"model {pipeline.spec} (id {pipeline.model_id}, dim {pipeline.dim}, {pipeline.num_frames} frames)",
          file=sys.stderr)
    try:
        stats = build_index(args.video_dir, args.index, pipeline, batch_size=args.batch_size,
                            rebuild=args.rebuild, progress=not args.no_progress, workers=args.workers,
                            echo=lambda msg: print(f"warning: {msg}", file=sys.stderr))
    except IndexFormatError as exc:
        raise CLIError(str(exc)) from exc
    print(f"{args.index}: {stats.total} videos indexed; this run: {stats.found} found, {stats.new} new, "
          f"{stats.changed} changed, {stats.deleted} deleted, {stats.encoded} encoded, {stats.failed} "
          f"unreadable ({stats.seconds:.1f} s)")
    for f in stats.failures:
        print(f"  unreadable: {f['path']}: {f['reason']}")
    return 1 if stats.failures else 0
