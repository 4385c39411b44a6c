"""``clipvip caption VIDEO_DIR_OR_JSONL --captioner SPEC --out captions.jsonl``: auxiliary captions (C)."""

from __future__ import annotations

import argparse

ORDER = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "caption",
        help="caption the middle frame of every clip (the paper's auxiliary captions C)",
        description="Caption the middle frame of each clip (the frame the pretraining dataset uses as F) with "
                    "an image captioner, keep at most 16 words, and append one JSON line per clip "
                    "({\"video\", [\"start\", \"end\",] \"caption\"}). Resumable: clips already in --out are "
                    "skipped. Unreadable clips are listed and retried on the next run.",
    )
    p.add_argument("source", metavar="VIDEO_DIR_OR_JSONL",
                   help="a folder of videos (searched recursively; keys are paths relative to it) or a dataset "
                        "JSONL (its 'video' field, with 'start'/'end' when present)")
    p.add_argument("--captioner", required=True, metavar="SPEC",
                   help="a transformers image-captioning model name or local dir (BLIP, GIT, "
                        "VisionEncoderDecoder...), or a Python callable 'module:function' / 'file.py:function' "
                        "taking a list of RGB PIL images and returning one string per image")
    p.add_argument("--out", required=True, metavar="CAPTIONS.jsonl",
                   help="captions file; appended to, so an interrupted run resumes where it stopped")
    p.add_argument("--video-root", default=None, metavar="DIR",
                   help="folder that relative 'video' paths of a JSONL source resolve against "
                        "(default: the JSONL's folder)")
    p.add_argument("--batch-size", type=int, default=8, help="images per captioner call (default 8)")
    p.add_argument("--max-words", type=int, default=16, help="words kept per caption (default 16, as the paper)")
    p.add_argument("--max-new-tokens", type=int, default=30,
                   help="generation length limit of a transformers captioner (default 30)")
    p.add_argument("--num-beams", type=int, default=1, help="beam size of a transformers captioner (default 1)")
    p.add_argument("--prompt", default=None,
                   help="optional text prefix for conditional captioners (e.g. BLIP's 'a picture of')")
    p.add_argument("--device", default=None, help="torch device of a transformers captioner (default cpu)")
    p.add_argument("--merge-into", default=None, metavar="PRETRAIN.jsonl",
                   help="after captioning, copy the captions into this pretraining JSONL as its 'caption' field")
    p.add_argument("--merged-out", default=None, metavar="MERGED.jsonl",
                   help="where --merge-into writes (default: PRETRAIN.captioned.jsonl next to it)")
    p.add_argument("--overwrite-captions", action="store_true",
                   help="with --merge-into, replace captions the pretraining records already have")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.analysis.captions import caption_clips, list_clips, load_captioner, merge_captions
    from clipvip.cli import CLIError

    if args.batch_size < 1 or args.max_words < 1:
        raise CLIError("--batch-size and --max-words must be >= 1")
    try:
        clips = list_clips(args.source, args.video_root)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if not clips:
        raise CLIError(f"{args.source}: no videos found")
    try:
        captioner = load_captioner(args.captioner, device=args.device, max_new_tokens=args.max_new_tokens,
                                   num_beams=args.num_beams, prompt=args.prompt)
    except ValueError as exc:
        raise CLIError(f"--captioner {args.captioner}: {str(exc).removeprefix(f'captioner {args.captioner!r}: ')}") from None
    try:
        report = caption_clips(clips, captioner, args.out, batch_size=args.batch_size,
                               max_words=args.max_words, progress=not args.no_progress)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(f"{args.out}: {report.summary()}")
    for path, reason in report.failures[:20]:
        print(f"  unreadable: {path}: {reason}")
    if len(report.failures) > 20:
        print(f"  ... and {len(report.failures) - 20} more (see {args.out}.failures.jsonl)")
    if args.merge_into:
        src = Path(args.merge_into)
        dest = Path(args.merged_out) if args.merged_out else src.with_name(src.stem + ".captioned.jsonl")
        try:
            counts = merge_captions(src, args.out, dest, overwrite=args.overwrite_captions)
        except (OSError, ValueError) as exc:
            raise CLIError(str(exc)) from exc
        print(f"{dest}: {counts['records']} records, {counts['captioned']} with a caption, "
              f"{counts['missing']} without")
    return 1 if report.failures else 0
