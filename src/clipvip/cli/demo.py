"""``clipvip demo [--out DIR] [--quick] [--seed N]``: the offline end-to-end demo, the README's main command."""

from __future__ import annotations

import argparse

ORDER = 0  # first in `clipvip --help`: it is the command to try first


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="offline end-to-end run: synthetic world -> train -> eval -> ablations -> search",
        description=(
            "Generate a synthetic video-text world (twin clips that are exact time reversals), train a tiny "
            "image-text CLIP, post-pretrain CLIP-ViP with the omnisource loss, fine-tune with frame / full / "
            "proxy attention over several seeds, evaluate (t2v/v2t R@K plain and DSL, twin order accuracy, "
            "order-blind pair R@1), run the OCL, auxiliary-caption and NMI ablations, write results.json + "
            "report.md (claims table with verdicts) + plots + the model, then index the test videos and query "
            "them. Every training stage runs the library trainer (clipvip train). Nothing is downloaded. "
            "The training runs after stage 0 run side by side in --jobs worker processes. Measured on 2 idle CPU "
            "cores (docs/demo.md): full preset about 2.5 minutes, --quick under 1 (a 2.3x slower machine: about "
            "5.5 and 2)."
        ),
    )
    p.add_argument("--out", default="clipvip-demo", metavar="DIR",
                   help="output folder (created; the world, model, index and report go here) [clipvip-demo]")
    p.add_argument("--quick", action="store_true",
                   help="smaller world, fewer steps, 2 attention seeds instead of 3 (what the test suite runs)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the world and of every training run; the attention ablation runs seeds N, N+1 "
                        "(and N+2 on the full preset) [0]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the run [1]: the tiny model's ops are too small to gain from more")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes for the training runs after stage 0, which are independent (results do "
                        "not depend on it) [usable CPUs / --threads, at most 8]; 1 runs everything in this process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (stage headers still print)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import signal
    import sys
    from pathlib import Path

    from clipvip.cli import CLIError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs is not None and args.jobs < 1:
        raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
    from clipvip.demo import run_demo
    from clipvip.demo.jobs import DemoRunError

    # SIGTERM (a scheduler, `kill`) ends the demo like Ctrl-C: clean-up runs, the worker processes stop.
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (main() called from a thread): no handler to install
        previous = None
    try:
        results = run_demo(out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                           threads=args.threads, jobs=args.jobs)
    except FileExistsError as exc:  # a sub-folder of --out the demo did not write: nothing was replaced
        raise CLIError(f"--out {out}: {exc}") from None
    except DemoRunError as exc:  # one line naming the run; the traceback is the worker's, not the user's
        print(f"clipvip demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if results.get("main") else 1


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
