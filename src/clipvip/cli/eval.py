"""``clipvip eval --model SPEC --data test.jsonl [--dsl]``: retrieval tables of any model on any split."""

from __future__ import annotations

import argparse
from typing import Any

ORDER = 41


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="text-video retrieval metrics (R@1/5/10, MdR, MnR; optional dual softmax) of a model",
        description="Evaluate a model on an annotation JSONL: text->video and video->text tables, and with "
                    "--dsl the dual-softmax re-scored tables (reference §4). Prints the tables and writes JSON.",
    )
    p.add_argument("--model", required=True,
                   help="model spec: a run/model folder (e.g. runs/x/best), an official .pt checkpoint, a "
                        "transformers CLIP name or folder, or a registry name")
    p.add_argument("--data", required=True, help="annotation JSONL of the split to evaluate (one video per line)")
    p.add_argument("--dsl", action="store_true", help="also report dual-softmax (DSL) re-scored text->video")
    p.add_argument("--v2t", choices=("best-caption", "maxpool"), default="best-caption",
                   help="video->text convention with several captions per video: best-caption (default: the "
                        "rank of the video's best caption among the other videos' captions) or maxpool "
                        "(CLIP4Clip's: captions max-pooled per video, ranked among videos); see docs/metrics.md")
    p.add_argument("--out", default=None, help="write the results as JSON to this file (atomically)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames sampled per video (default: the frames recorded in the model's config.json by "
                        "training, else the model's temporal size, 12)")
    p.add_argument("--batch-size", type=int, default=16, help="videos encoded per batch (default 16)")
    p.add_argument("--paragraph", action="store_true",
                   help="paragraph protocol: join each video's sentences into one query (DiDeMo, ActivityNet)")
    p.add_argument("--video-root", default=None, help="folder that relative video paths in --data refer to")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or CLIP BPE file (default: the one saved with the model; OpenAI's "
                        "vocabulary, shipped with clipvip, for registry names and official .pt checkpoints)")
    p.add_argument("--max-length", type=int, default=None,
                   help="text context in tokens (default: the model's, 77; the recipes use 50 or 70)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="encode in fp32 (default) or under bf16 autocast; auto = bf16 where the CPU has AMX or "
                        "AVX512-BF16, or on a bf16-capable GPU, else fp32 (bf16 without that hardware is slower)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for decoding")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_handler)


def load_model(spec: str, *, device: str | None, tokenizer: str | None, num_frames: int | None,
               max_length: int | None, dtype: str | None = None) -> Any:
    """``clipvip.load(spec)``: the pipeline object with ``model``, ``tokenizer``, ``num_frames``, ``dtype``..."""
    import clipvip

    return clipvip.load(spec, device=device, tokenizer=tokenizer, num_frames=num_frames, max_length=max_length,
                        dtype=dtype)


def _handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError

    data = Path(args.data)
    if not data.is_file():
        raise CLIError(f"--data {data}: file not found")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    tokenizer = None
    if args.tokenizer is not None:
        from clipvip.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise CLIError(f"--tokenizer {args.tokenizer}: {exc}") from None
    try:
        pipe = load_model(args.model, device=args.device, tokenizer=tokenizer, num_frames=args.num_frames,
                          max_length=args.max_length, dtype=args.dtype)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise CLIError(f"--model {args.model}: {exc}") from None

    import torch

    from clipvip.metrics import format_table
    from clipvip.train.evaluate import evaluate_retrieval
    from clipvip.train.logging import write_json

    import logging

    quiet = logging.getLogger("clipvip.data.datasets")  # one summary below, not a warning per video
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        res = evaluate_retrieval(pipe.model, pipe.tokenizer, data, num_frames=pipe.num_frames,
                                 image_size=pipe.image_size, max_length=pipe.max_length,
                                 batch_size=args.batch_size, device=pipe.device, video_root=args.video_root,
                                 paragraph=args.paragraph, dsl=args.dsl, num_workers=args.num_workers,
                                 progress=not args.no_progress, v2t_convention=args.v2t,
                                 autocast_dtype=None if pipe.dtype == torch.float32 else pipe.dtype)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(f"--data {data}: {exc}") from None
    finally:
        quiet.setLevel(level)
    failures = res["failures"]
    if failures and len(failures) >= res["num_videos"]:
        raise CLIError(f"--data {data}: none of the {res['num_videos']} videos could be read (first: "
                       f"{failures[0][0]}: {failures[0][1]}); check --video-root")
    tables = {k: v for k, v in res.items() if isinstance(v, dict)}
    print(f"{res['num_texts']} texts x {res['num_videos']} videos, model {args.model} ({pipe.dtype_name})")
    print(format_table(tables, v2t_convention=res["v2t_convention"]))
    if args.out:
        write_json(args.out, {"model": args.model, "data": str(data), "dsl": args.dsl,
                              "num_frames": pipe.num_frames, "max_length": pipe.max_length,
                              "dtype": pipe.dtype_name, "model_id": pipe.model_id, **res})
    if failures:
        where = (f"the 'failures' list of {args.out}" if args.out else "rerun with --out FILE to keep the full list")
        shown = "; ".join(f"{path}: {why}" for path, why in failures[:3])
        print(f"{len(failures)} of {res['num_videos']} videos could not be read (guaranteed misses, ranked below "
              f"every readable video); first {min(3, len(failures))}: {shown}; full list: {where}")
    if args.out:
        print(f"results written to {args.out}")
    return 1 if failures else 0
