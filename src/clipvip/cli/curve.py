"""``clipvip curve --checkpoints DIR... --finetune CONFIG.yaml --out DIR``: the paper's Figure 1."""

from __future__ import annotations

import argparse

ORDER = 62


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curve",
        help="downstream R@1/5/10 of each post-pretraining checkpoint (fine-tuned or zero-shot), as a plot",
        description="For each checkpoint of each post-pretraining run, in step order, fine-tune it with the "
                    "given recipe (model.init=pretrained:<checkpoint>) or evaluate it zero-shot, and record "
                    "R@1/5/10. Writes curve.json, curve.md and curve.png (R@1 against steps, one line per run) "
                    "to --out. Resumable: checkpoints already in curve.json are skipped. A checkpoint's step "
                    "comes from its checkpoint.json / trainer_state, else the number ending its folder name "
                    "(step_000100, ckpt_step_100, checkpoint-100).",
    )
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="DIR",
                   help="one folder per post-pretraining run (one line each), holding model folders "
                        "(config.json + model.safetensors) up to two levels deep")
    p.add_argument("--finetune", required=True, metavar="CONFIG.yaml",
                   help="fine-tuning recipe; with --zero-shot it only supplies the evaluation data (data.test, "
                        "else data.val) and settings")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (curve.json, curve.md, curve.png, runs/)")
    p.add_argument("--zero-shot", action="store_true", help="evaluate each checkpoint as is instead of fine-tuning")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="name of a run in the table and legend, once per --checkpoints folder, in order "
                        "(default: the folder names)")
    p.add_argument("--table", default="t2v", choices=("t2v", "v2t", "t2v_dsl", "v2t_dsl"),
                   help="which metrics table is recorded and plotted (default t2v)")
    p.add_argument("--device", default=None, help="torch device for zero-shot evaluation (default: auto)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, section.key=value (e.g. optim.max_steps=200 data.root=/data/msrvtt)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from clipvip.analysis.curves import run_curve
    from clipvip.cli import CLIError
    from clipvip.train.config import ConfigError

    from pathlib import Path

    from clipvip.train.loop import one_line

    for folder in args.checkpoints:
        if not Path(folder).is_dir():
            raise CLIError(f"--checkpoints {folder}: not a folder (give one folder of model checkpoints per run)")
    if not Path(args.finetune).is_file():
        raise CLIError(f"--finetune {args.finetune}: file not found (give a YAML recipe, e.g. configs/msrvtt_b32.yaml)")
    if args.label is not None and len(args.label) != len(args.checkpoints):
        raise CLIError(f"--label given {len(args.label)} time(s) for {len(args.checkpoints)} --checkpoints "
                       f"folder(s): give one label per folder, in order")
    if args.device is not None:
        import torch

        try:
            dev = torch.device(args.device)
        except (RuntimeError, TypeError):
            raise CLIError(f"--device {args.device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    try:
        doc = run_curve(args.checkpoints, args.out, finetune=args.finetune, zero_shot=args.zero_shot,
                        labels=args.label, overrides=args.overrides, table=args.table, device=args.device)
    except ConfigError as exc:
        raise CLIError(f"--finetune {args.finetune}: {one_line(exc)}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(one_line(exc)) from None

    print((Path(args.out) / "curve.md").read_text(), end="")
    print(f"wrote {args.out}/curve.json, curve.md, curve.png ({len(doc['rows'])} checkpoints)")
    return 0
