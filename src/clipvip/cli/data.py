"""``clipvip data prepare|shard|synth``: annotations → JSONL, JSONL → shards, the synthetic world."""

from __future__ import annotations

import argparse
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
    pr.add_argument("--drop-missing", action="store_true", help="leave records whose video is missing out")
    pr.set_defaults(func=_prepare)

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
        raise CLIError(str(exc)) from exc
    missing: list[str] = []
    if args.videos:
        if not Path(args.videos).is_dir():
            raise CLIError(f"--videos {args.videos}: not a folder")
        missing = find_missing(records, args.videos)
        if args.drop_missing:
            gone = set(missing)
            records = [r for r in records if r["video"] not in gone]
    write_jsonl(records, args.out)
    n_texts = sum(len(r["texts"]) for r in records)
    print(f"wrote {len(records)} records ({n_texts} texts) to {args.out}")
    if args.videos:
        if missing:
            print(f"{len(missing)} videos missing under {args.videos}" + (" (dropped)" if args.drop_missing else ""))
            for v in missing[:20]:
                print(f"  missing: {v}")
            if len(missing) > 20:
                print(f"  ... and {len(missing) - 20} more")
        else:
            print(f"all videos found under {args.videos}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from clipvip.data.annotations import AnnotationError
    from clipvip.data.shards import write_shards

    try:
        manifest = write_shards(args.jsonl, args.out, video_root=args.video_root, fps=args.fps,
                                short_side=args.short_side or None, shard_size=args.shard_size, crf=args.crf,
                                gop=args.gop, fast_decode=not args.no_fast_decode)
    except AnnotationError as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {manifest['num_samples']} of {manifest['num_records']} videos in {len(manifest['shards'])} "
          f"shards to {args.out}")
    if manifest["failures"]:
        print(f"{len(manifest['failures'])} videos failed (listed in {Path(args.out) / 'manifest.json'}):")
        for path, reason in manifest["failures"][:20]:
            print(f"  {path}: {reason}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from clipvip.data.synthetic import generate_world

    try:
        world = generate_world(args.out, num_videos=args.num_videos, seed=args.seed, size=args.size,
                               num_frames=args.num_frames, fps=args.fps, progress=True)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(f"synthetic world in {world.root}: {world.counts}")
    return 0
