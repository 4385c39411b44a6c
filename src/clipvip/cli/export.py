"""``clipvip export MODEL --out DIR``: the video and text towers as verified ONNX files + preprocessing JSON."""

from __future__ import annotations

import argparse

ORDER = 81


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export the video and text towers as ONNX (dynamic batch), verified with onnxruntime",
        description="Write DIR/video.onnx and DIR/text.onnx (dynamic batch; the frame count is fixed), "
                    "DIR/preprocessing.json (frames, image size, resize, mean/std, tokenizer, context length, "
                    "embedding size) and DIR/tokenizer/. Each ONNX file is run by onnxruntime at batch sizes "
                    "other than the traced one and compared with PyTorch before the export counts as done; "
                    "nothing is left in DIR if that fails. Needs the export extra: "
                    "pip install 'clipvip[export]'.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a model directory, an official .pt checkpoint, a transformers CLIP name/directory, or a "
                        "registry name (with --tokenizer)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must be new or empty, or a "
                                                              "previous export with --overwrite)")
    p.add_argument("--frames", type=int, default=None, metavar="T",
                   help="frames per video in the video graph (default: the frame count the model uses to embed "
                        "videos, i.e. what clipvip.load records for it; the config's temporal size otherwise)")
    p.add_argument("--context-length", type=int, default=None, metavar="N",
                   help="text length of the text graph (default: the model's text context, 77 for CLIP)")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer directory, hub name, or CLIP's bpe_simple_vocab_16e6.txt.gz (default: the "
                        "model's own)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |onnxruntime - PyTorch| difference of the embeddings (default 1e-4)")
    p.add_argument("--pt2", action="store_true",
                   help="also save the torch.export programs as DIR/video.pt2 and DIR/text.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace a previous clipvip export in DIR")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipvip.cli import CLIError
    from clipvip.export import ExportError, export_model, require_onnx

    try:
        require_onnx()  # before loading a large model
    except ExportError as exc:
        raise CLIError(str(exc)) from exc
    if args.frames is not None and args.frames < 1:
        raise CLIError(f"--frames must be >= 1, got {args.frames}")
    import clipvip

    try:
        pipe = clipvip.load(args.model, device="cpu", tokenizer=args.tokenizer, num_frames=args.frames,
                            max_length=args.context_length)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    model = pipe.model.float()
    print(f"exporting {pipe.spec} ({pipe.num_frames} frames, context {pipe.max_length}) to {args.out}", flush=True)
    try:
        result = export_model(model, Path(args.out), frames=pipe.num_frames, context_length=pipe.max_length,
                              tokenizer=pipe.tokenizer, tokenizer_spec=pipe.tokenizer_spec, source=pipe.spec,
                              model_id=pipe.model_id, transform=pipe.transform, opset=args.opset, atol=args.atol,
                              overwrite=args.overwrite, save_programs=args.pt2,
                              progress=lambda msg: print(msg, flush=True))
    except ExportError as exc:
        raise CLIError(str(exc)) from exc
    for check in result.verifications:
        diffs = ", ".join(f"batch {b}: {d:.1e}" for b, d in check.max_abs_diff.items())
        print(f"verified {check.tower}.onnx with onnxruntime against PyTorch ({diffs}; allowed {check.atol:g})")
    size = sum(p.stat().st_size for p in result.files) / 2**20
    print(f"wrote {result.out_dir} ({len(result.files)} files, {size:.1f} MiB)")
    return 0
