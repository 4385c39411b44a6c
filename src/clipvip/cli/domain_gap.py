"""``clipvip domain-gap CORPUS... --model SPEC --out DIR``: the language domain gap (K-means k=2 + NMI)."""

from __future__ import annotations

import argparse

ORDER = 61


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "domain-gap",
        help="measure the language domain gap between text corpora (K-means k=2 + NMI, as the paper)",
        description="Sample N texts from each corpus, encode them with the model's text tower, cluster each pair "
                    "of corpora into two clusters with K-means and report the normalised mutual information "
                    "between cluster and corpus (1 = the clusters are the corpora, a large gap; 0 = no gap). "
                    "Writes nmi.json, nmi.md and the heat-map nmi.png to --out. Deterministic by --seed.",
    )
    p.add_argument("corpora", nargs="+", metavar="CORPUS",
                   help="[NAME=]PATH: a text file (one text per line), FILE.jsonl:FIELD (a field of each "
                        "record, string or list), or a dataset JSONL (its 'texts', else 'subtitle', else "
                        "'caption'); at least two")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="model whose text tower embeds the texts: our model dir, official .pt, transformers "
                        "CLIP name/dir, or a registry name")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer when the model spec carries none (a dir, CLIP's BPE file, a hub name)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for nmi.json, nmi.md, nmi.png")
    p.add_argument("-n", "--num-texts", type=int, default=1000,
                   help="texts sampled per corpus (default 1000, as the paper); all when a corpus has fewer")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and of K-means (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="texts per encoder batch (default 256)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from clipvip.analysis.domain_gap import run_domain_gap
    from clipvip.cli import CLIError

    if len(args.corpora) < 2:
        raise CLIError("give at least two corpora to compare")
    if args.num_texts < 1:
        raise CLIError("--num-texts must be >= 1")
    import clipvip

    try:
        pipe = clipvip.load(args.model, device=args.device, tokenizer=args.tokenizer)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--model {args.model}: {exc}") from exc

    def encode(texts: list[str]):
        return pipe.encode_texts(texts, batch_size=args.batch_size)

    try:
        run_domain_gap(args.corpora, args.out, model=args.model, encode=encode, n=args.num_texts, seed=args.seed)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    from pathlib import Path

    print((Path(args.out) / "nmi.md").read_text(), end="")
    print(f"wrote {args.out}/nmi.json, nmi.md, nmi.png")
    return 0
