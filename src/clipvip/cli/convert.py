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
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="output directory: new or empty (with --overwrite: a model folder written by clipvip, "
                        "replaced atomically)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR when it holds a model saved by clipvip (config.json + model.safetensors "
                        "marked library=clipvip, no sub-folders); any other non-empty folder is refused")
    p.add_argument("--config", default=None, metavar="NAME_OR_JSON",
                   help="architecture: a registered name (clipvip-b32, clipvip-b16, ...) or a config JSON file; "
                        "default: inferred from the tensor shapes")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="also save a tokenizer into OUT_DIR: a tokenizer dir, a hub name, or OpenAI's "
                        "bpe_simple_vocab_16e6.txt.gz")
    p.set_defaults(func=handler)


def is_saved_model_dir(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_pretrained``: ``config.json`` plus a
    ``model.safetensors`` whose header says ``library: clipvip`` (the marker written with the weights),
    and no sub-folders (which no saved model has, and which a user's folder might)."""
    from safetensors import safe_open

    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        return False
    if any(child.is_dir() for child in path.iterdir()):
        return False
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable or not safetensors: not ours
        return False
    return meta.get("library") == "clipvip"


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``OUT_DIR`` whose contents convert did not write (before any work is done)."""
    import os

    from clipvip.cli import CLIError

    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise CLIError(f"OUT_DIR {out}: exists and is not a folder; choose another OUT_DIR")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise CLIError(f"OUT_DIR {out}: folder is not empty; choose a new OUT_DIR, or pass --overwrite to replace "
                       f"a model folder written by clipvip")
    if not is_saved_model_dir(out):
        raise CLIError(f"OUT_DIR {out}: not a model folder written by clipvip (config.json + model.safetensors "
                       f"marked library=clipvip, no sub-folders); refusing to replace it even with --overwrite")


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError
    from clipvip.config import CLIPViPConfig, available_configs
    from clipvip.weights import CheckpointError, from_official_checkpoint, save_pretrained

    check_out_dir(Path(args.out_dir), args.overwrite)
    if not Path(args.checkpoint).is_file():
        raise CLIError(f"OFFICIAL.pt {args.checkpoint}: file not found")
    config = None
    if args.config:
        try:
            if args.config in available_configs():
                config = CLIPViPConfig.from_name(args.config)
            else:
                config = CLIPViPConfig.from_json(Path(args.config))
        except (OSError, ValueError, KeyError) as exc:
            raise CLIError(f"--config {args.config}: {_one_line(exc)} (give a registered name: "
                           f"{', '.join(available_configs())}, or a config.json file)") from None
    tokenizer = None
    if args.tokenizer:
        from clipvip.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except (OSError, ValueError) as exc:
            raise CLIError(f"--tokenizer {args.tokenizer}: {_one_line(exc)}") from None
    try:
        model = from_official_checkpoint(args.checkpoint, config)
    except (CheckpointError, FileNotFoundError) as exc:
        raise CLIError(_one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises: one line naming it
        raise CLIError(f"OFFICIAL.pt {args.checkpoint}: cannot read it as a checkpoint "
                       f"({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        out = save_pretrained(model, args.out_dir, tokenizer=tokenizer)
    except OSError as exc:
        raise CLIError(f"OUT_DIR {args.out_dir}: cannot write ({exc.strerror or exc})") from None
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.2f} M parameters, patch {model.config.vision.patch_size}, "
          f"{model.config.num_proxies} proxies)")
    return 0
