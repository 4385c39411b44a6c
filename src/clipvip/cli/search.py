"""``clipvip search DIR "text" [-k 10] [--json]``: query an index from the command line."""

from __future__ import annotations

import argparse

ORDER = 41


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="find the videos of an index that best match a text",
                              description="Embed TEXT with the index's model and print the top-k videos.")
    p.add_argument("index", metavar="DIR", help="index directory built by `clipvip index`")
    p.add_argument("text", metavar="TEXT", help="what to look for, in words")
    p.add_argument("-k", type=int, default=10, help="number of results, 1..100 (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--backend", choices=("auto", "exact", "faiss"), default="auto",
                   help="exact matmul or FAISS IndexFlatIP (same results); auto picks FAISS for large indexes")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer, when the one recorded in the index has moved")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from clipvip.cli import CLIError
    from clipvip.search.index import IndexFormatError
    from clipvip.search.service import SearchService

    try:
        service = SearchService(args.index, backend=args.backend, device=args.device, tokenizer=args.tokenizer)
        results = service.search(args.text, args.k)
    except (IndexFormatError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps({"query": args.text, "k": args.k,
                          "video_root": str(service.index.video_root), "results": results}, indent=1))
        return 0
    if not results:
        print("the index is empty")
        return 0
    for r in results:
        dur = f"{r['duration']:7.1f}s" if r["duration"] is not None else "       -"
        print(f"{r['rank']:3d}  {r['score']:8.4f}  {dur}  {r['path']}")
    return 0
