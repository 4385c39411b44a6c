"""``clipvip demo [--out DIR] [--quick] [--seed N]``: the offline end-to-end demo, the README's main command."""

from __future__ import annotations

import argparse

ORDER = 0  # first in `clipvip --help`: it is the command to try first


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="offline end-to-end run: synthetic world -> train -> eval -> ablations -> search",
        description=(
            "Generate a synthetic video-text world, pretrain a tiny image-text CLIP, post-pretrain CLIP-ViP "
            "with the omnisource loss, fine-tune, evaluate (t2v/v2t, plain and DSL), run the paper's "
            "ablations, write results.json + report.md + plots + the model, then index the test videos and "
            "query them. Nothing is downloaded."
        ),
    )
    p.add_argument("--out", default="clipvip-demo", metavar="DIR",
                   help="output folder (created; the world, model, index and report go here) [clipvip-demo]")
    p.add_argument("--quick", action="store_true",
                   help="smaller world and fewer steps: about 2 minutes instead of about 10 on 2 CPU cores")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of every training run [0]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the run [1]: the tiny model's ops are too small to gain from more")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage headers still print)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    from clipvip.demo import run_demo

    results = run_demo(out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                       threads=args.threads)
    return 0 if results.get("main") else 1
