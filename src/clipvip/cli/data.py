"""``clipvip data prepare|msrvtt|shard|synth``: annotations → JSONL, MSR-VTT's three splits, JSONL → shards,
the synthetic world.

Exit statuses (all commands): 0 all good, 1 done with failures (listed), 2 nothing done (usage error, bad
input, or every video failed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from clipvip.cli import CLIError

ORDER = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="prepare annotations, write shards, generate the synthetic world",
                              description="Data tools: annotations -> JSONL schema, JSONL -> WebDataset shards, "
                                          "and the synthetic video-text world.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    pr = sub.add_parser("prepare", help="convert a dataset's annotation file to the JSONL schema",
                        description="Read DATASET's ANNOTATION_FILE, write the JSONL schema, report missing videos.")
    pr.add_argument("dataset", help="msrvtt | didemo | activitynet | lsmdc | csv | jsonl")
    pr.add_argument("annotation_file", help="the dataset's own annotation file (csv/json/tsv)")
    pr.add_argument("--out", required=True, help="output JSONL path (written atomically)")
    pr.add_argument("--videos", default=None, help="video folder: report records whose video is missing there")
    pr.add_argument("--split", choices=["train", "val", "test"], default=None,
                    help="split to write (default: inferred from the file)")
    pr.add_argument("--ext", default=None, help="video file extension to use (e.g. .mp4), replacing the default")
    pr.add_argument("--data-json", default=None,
                    help="MSR-VTT: MSRVTT_data.json with the captions (needed with MSRVTT_train.9k.csv)")
    pr.add_argument("--drop-missing", action="store_true",
                    help="leave records whose video is missing out (otherwise they are kept, listed, and the exit "
                         "status is 1)")
    pr.set_defaults(func=_prepare)

    ms = sub.add_parser("msrvtt", help="build MSR-VTT's train9k / val / test1ka JSONL files for the recipes",
                        description="Write train9k.jsonl, val.jsonl and test1ka.jsonl (the names configs/msrvtt_*.yaml "
                                    "use under data.root) from MSR-VTT's annotation files: val.jsonl holds "
                                    "--val-size videos drawn (seeded) from the 9k training videos, train9k.jsonl "
                                    "the rest, test1ka.jsonl the 1k-A test pairs. See docs/data.md.")
    ms.add_argument("annotations", metavar="ANNOTATION_DIR",
                    help="folder with MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv and MSRVTT_data.json "
                         "(CLIP4Clip's msrvtt_data download)")
    ms.add_argument("--out", required=True, metavar="DATA_ROOT",
                    help="folder to write the three JSONL files into (the recipes' data.root)")
    ms.add_argument("--val-size", type=int, default=500,
                    help="videos held out of the 9k train videos for validation (default 500)")
    ms.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    ms.add_argument("--ext", default=".mp4", help="video file extension (default .mp4)")
    ms.add_argument("--videos", default=None, metavar="DIR",
                    help="video folder (the recipes' data.root/videos): report videos missing there")
    ms.add_argument("--overwrite", action="store_true", help="replace the three files if they exist")
    ms.set_defaults(func=_msrvtt)

    sh = sub.add_parser("shard", help="re-encode videos at low fps/size into WebDataset tar shards",
                        description="Re-encode every video of a JSONL at low fps and size into tar shards "
                                    "(resumable; failures listed in manifest.json).")
    sh.add_argument("jsonl", help="schema JSONL (video paths relative to --video-root)")
    sh.add_argument("--out", required=True, help="output folder for shard-*.tar and manifest.json")
    sh.add_argument("--video-root", default=None, help="folder relative video paths resolve against "
                                                       "(default: the JSONL's folder)")
    sh.add_argument("--fps", type=float, default=3.0, help="output frame rate (default 3)")
    sh.add_argument("--short-side", type=int, default=240, help="output shorter side in pixels (default 240; "
                                                                "0 keeps the size)")
    sh.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    sh.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (default 23)")
    sh.add_argument("--gop", type=int, default=1,
                    help="keyframe interval in output frames (default 1: every frame a keyframe, so reading a "
                         "frame decodes only that frame; larger values give smaller, slower-to-read shards)")
    sh.add_argument("--no-fast-decode", action="store_true",
                    help="do not use x264's fastdecode tuning (smaller shards, slower reads)")
    sh.set_defaults(func=_shard)

    sy = sub.add_parser("synth", help="generate the synthetic video-text world",
                        description="Write the deterministic synthetic world (videos, JSONL splits, images, "
                                    "tokenizer) used by the demo and tests.")
    sy.add_argument("--out", required=True, help="output folder")
    sy.add_argument("--num-videos", type=int, default=400, help="number of clips (default 400)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (same seed, same world)")
    sy.add_argument("--size", type=int, default=32, help="frame side in pixels, even (default 32)")
    sy.add_argument("--num-frames", type=int, default=8, help="frames per clip (default 8)")
    sy.add_argument("--fps", type=int, default=4, help="clip frame rate (default 4)")
    sy.set_defaults(func=_synth)

    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _prepare(args: argparse.Namespace) -> int:
    from clipvip.data.annotations import AnnotationError, find_missing, read_annotations, write_jsonl

    kw = {}
    if args.ext is not None:
        kw["ext"] = args.ext
    if args.data_json is not None:
        if args.dataset.lower().replace("-", "") != "msrvtt":
            raise CLIError("--data-json only applies to msrvtt")
        kw["data_json"] = args.data_json
    try:
        records = read_annotations(args.dataset, args.annotation_file, split=args.split, **kw)
    except (AnnotationError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    missing: list[str] = []
    if args.videos:
        if not Path(args.videos).is_dir():
            raise CLIError(f"--videos {args.videos}: not a folder")
        missing = find_missing(records, args.videos)
        if args.drop_missing:
            gone = set(missing)
            records = [r for r in records if r["video"] not in gone]
    try:
        write_jsonl(records, args.out)
    except ValueError as exc:
        raise CLIError(f"{args.annotation_file}: {exc}") from None
    n_texts = sum(len(r["texts"]) for r in records)
    print(f"wrote {len(records)} records ({n_texts} texts) to {args.out}")
    if args.videos:
        if missing:
            print(f"{len(missing)} videos missing under {args.videos}" + (" (dropped)" if args.drop_missing else ""))
            for v in missing[:20]:
                print(f"  missing: {v}")
            if len(missing) > 20:
                print(f"  ... and {len(missing) - 20} more")
            if not args.drop_missing:
                return 1  # written, but training would fail on these: done with failures
        else:
            print(f"all videos found under {args.videos}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from clipvip.data.annotations import AnnotationError
    from clipvip.data.shards import write_shards

    try:
        with _quiet("clipvip.data.shards"):  # one summary below instead of a warning per video
            manifest = write_shards(args.jsonl, args.out, video_root=args.video_root, fps=args.fps,
                                    short_side=args.short_side or None, shard_size=args.shard_size, crf=args.crf,
                                    gop=args.gop, fast_decode=not args.no_fast_decode)
    except (AnnotationError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {manifest['num_samples']} of {manifest['num_records']} videos in {len(manifest['shards'])} "
          f"shards to {args.out}")
    failures = manifest["failures"]
    if failures:
        _print_failures(failures, "videos failed", Path(args.out) / "manifest.json")
    return _status(manifest["num_records"], len(failures))


def _status(total: int, failed: int) -> int:
    """0 all good, 1 done with failures, 2 nothing done (every item failed)."""
    if not failed:
        return 0
    return 2 if failed >= total else 1


def _print_failures(failures: list, what: str, where: Path, show: int = 5) -> None:
    """One summary: the count, the first few, and where the full list is."""
    print(f"{len(failures)} {what} (full list in {where}); first {min(show, len(failures))}:")
    for path, reason in failures[:show]:
        print(f"  {path}: {reason}")


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a library logger's per-item warnings while the command prints its own summary."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _msrvtt(args: argparse.Namespace) -> int:
    from clipvip.data.annotations import (MSRVTT_SOURCES, MSRVTT_SPLIT_FILES, AnnotationError, find_missing,
                                          msrvtt_splits, write_jsonl)

    ann = Path(args.annotations)
    if not ann.is_dir():
        raise CLIError(f"ANNOTATION_DIR {ann}: not a folder")
    sources = {key: ann / name for key, name in MSRVTT_SOURCES.items()}
    absent = [p.name for p in sources.values() if not p.is_file()]
    if absent:
        raise CLIError(f"ANNOTATION_DIR {ann} lacks {', '.join(absent)} (expected {', '.join(MSRVTT_SOURCES.values())})")
    if args.val_size < 1:
        raise CLIError(f"--val-size must be >= 1, got {args.val_size}")
    out = Path(args.out)
    targets = {split: out / name for split, name in MSRVTT_SPLIT_FILES.items()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not args.overwrite:
        raise CLIError(f"--out {out}: {', '.join(existing)} already exist; pass --overwrite to replace them")
    if args.videos and not Path(args.videos).is_dir():
        raise CLIError(f"--videos {args.videos}: not a folder")
    try:
        splits = msrvtt_splits(sources["train_csv"], sources["test_csv"], sources["data_json"],
                               val_size=args.val_size, seed=args.seed, ext=args.ext)
    except AnnotationError as exc:
        raise CLIError(str(exc)) from None
    except ValueError as exc:
        raise CLIError(f"--val-size {args.val_size}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(records, targets[split])
        print(f"{targets[split]}: {len(records)} videos, {sum(len(r['texts']) for r in records)} captions")
    print(f"val: {args.val_size} of the 9k train videos, seed {args.seed}; use with data.root={out}")
    if args.videos:
        missing = find_missing([r for recs in splits.values() for r in recs], args.videos)
        if missing:
            print(f"{len(missing)} videos missing under {args.videos}; first {min(5, len(missing))}:")
            for v in missing[:5]:
                print(f"  missing: {v}")
            return 1
        print(f"all videos found under {args.videos}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from clipvip.data.synthetic import generate_world

    try:
        with _quiet("clipvip.data.synthetic"):  # the library logs the same summary printed below
            world = generate_world(args.out, num_videos=args.num_videos, seed=args.seed, size=args.size,
                                   num_frames=args.num_frames, fps=args.fps, progress=True)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"synthetic world in {world.root}: {world.counts}")
    return 0
