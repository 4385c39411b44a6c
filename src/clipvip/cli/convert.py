"""``clipvip convert OFFICIAL.pt OUT_DIR``: an official CLIP-ViP checkpoint -> our directory format."""

from __future__ import annotations

import argparse

ORDER = 80


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official CLIP-ViP checkpoint (.pt) to config.json + model.safetensors",
        description="Convert an official CLIP-ViP checkpoint (pretrain_clipvip_base_{32,16}.pt layout) into "
                    "a directory loadable with CLIPViP.from_pretrained. Loading is strict: every missing, "
                    "unexpected or shape-mismatched key is reported, and no pickled code is executed.",
    )
    p.add_argument("checkpoint", metavar="OFFICIAL.pt", help="the official checkpoint file")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (replaced atomically if it exists)")
    p.add_argument("--config", default=None, metavar="NAME_OR_JSON",
                   help="architecture: a registered name (clipvip-b32, clipvip-b16, ...) or a config JSON file; "
                        "default: inferred from the tensor shapes")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="also save a tokenizer into OUT_DIR: a tokenizer dir, a hub name, or OpenAI's "
                        "bpe_simple_vocab_16e6.txt.gz")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError
    from clipvip.config import CLIPViPConfig, available_configs
    from clipvip.weights import CheckpointError, from_official_checkpoint, save_pretrained

    config = None
    if args.config:
        try:
            if args.config in available_configs():
                config = CLIPViPConfig.from_name(args.config)
            else:
                config = CLIPViPConfig.from_json(Path(args.config))
        except (OSError, ValueError) as exc:
            raise CLIError(f"--config {args.config}: {exc}") from exc
    tokenizer = None
    if args.tokenizer:
        from clipvip.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except (OSError, ValueError) as exc:
            raise CLIError(f"--tokenizer {args.tokenizer}: {exc}") from exc
    try:
        model = from_official_checkpoint(args.checkpoint, config)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    out = save_pretrained(model, args.out_dir, tokenizer=tokenizer)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.2f} M parameters, patch {model.config.vision.patch_size}, "
          f"{model.config.num_proxies} proxies)")
    return 0
