"""``clipvip train CONFIG.yaml [section.key=value ...]``: post-pretraining or fine-tuning.

Run it as is for one process, or under ``torchrun --nproc_per_node N -m clipvip train ...`` for several
(DDP; the global batch in the recipe stays the same and is split across the processes).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

ORDER = 40


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="post-pretraining or fine-tuning from a YAML recipe (torchrun for several processes)",
        description="Train from a YAML recipe (see configs/ and docs/training.md). Overrides use "
                    "section.key=value, e.g. optim.lr=1e-5 run.output_dir=runs/x; values are parsed as YAML. "
                    "A run folder that already holds last/ is resumed (run.resume=auto).",
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/msrvtt_b32.yaml")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                   help="recipe overrides as section.key=value (sections: model, data, optim, run); "
                        "--print-config may also follow them")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved recipe (after overrides) as YAML and exit without training")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though keys other than the safe ones (run.eval_every, optim.max_steps, "
                        "... see docs/training.md) differ from the run's config; may also follow the overrides")
    p.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    from clipvip.cli import CLIError
    from clipvip.train.config import ConfigError, load_config

    flags = ("--print-config", "--allow-config-change")
    overrides = [o for o in args.overrides if o not in flags]
    print_config = args.print_config or "--print-config" in args.overrides
    allow_change = args.allow_config_change or "--allow-config-change" in args.overrides
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise CLIError(f"unknown option {bad[0]!r} among the overrides (overrides look like section.key=value; "
                       f"options: {', '.join(flags)})")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from clipvip.metrics import format_table
    from clipvip.train.checkpoint import CheckpointStateError
    from clipvip.train.loop import one_line, train

    try:
        result = train(cfg, allow_config_change=allow_change)
    except (ConfigError, CheckpointStateError, FileNotFoundError, FileExistsError) as exc:
        raise CLIError(one_line(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now; torchrun sets RANK
        _print_result(result, format_table)
    return 0


def _print_result(result: dict[str, Any], format_table: Any) -> None:
    print(f"run folder: {result['output_dir']} ({result['steps']} steps)")
    used = result.get("test_checkpoint") or {}
    best_title = (f"best checkpoint (best/, step {result['best_step']}, selected on {result['selected_on']})"
                  if result.get("best_step") is not None else "best checkpoint")
    for key, title in (("best", best_title),
                       ("test", f"test split, {used.get('label', 'best checkpoint')}")):
        res = result.get(key)
        if res:
            print(f"\n{title}:")
            print(format_table({k: v for k, v in res.items() if isinstance(v, dict)}))
            if res.get("failures"):
                print(f"({len(res['failures'])} video(s) failed to decode; see eval_log.jsonl)")
