"""``clipvip search DIR "text" [-k 10] [--json]``: query an index from the command line."""

from __future__ import annotations

import argparse

ORDER = 41


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="find the moments of an index that best match a text",
                              description="Embed TEXT with the index's model and print the top-k videos, each "
                                          "with its best-matching window (or every window with --all-windows).")
    p.add_argument("index", metavar="DIR", help="index directory built by `clipvip index`")
    p.add_argument("text", metavar="TEXT", help="what to look for, in words")
    p.add_argument("-k", type=int, default=10, help="number of results, 1..100 (default 10)")
    p.add_argument("--all-windows", action="store_true",
                   help="rank every window (several moments of one video may appear); default: one per video")
    p.add_argument("--under", metavar="DIR", default=None,
                   help="only videos inside this folder (relative to the indexed folder, or absolute inside it)")
    p.add_argument("--min-duration", type=float, default=None, metavar="S", help="only videos at least S seconds long")
    p.add_argument("--max-duration", type=float, default=None, metavar="S", help="only videos at most S seconds long")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--backend", choices=("auto", "exact", "faiss"), default="auto",
                   help="exact matmul (default below 5M windows) or a FAISS IVF index (approximate, cached)")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer, when the one recorded in the index has moved")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from clipvip.cli import CLIError
    from clipvip.search.engine import SearchEngine
    from clipvip.search.store import IndexFormatError, escape_path

    try:
        engine = SearchEngine(args.index, backend=args.backend, device=args.device, tokenizer=args.tokenizer)
        hits = engine.search(args.text, args.k, all_windows=args.all_windows, under=args.under,
                             min_duration=args.min_duration, max_duration=args.max_duration)[0]
    except (IndexFormatError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps({"query": args.text, "k": args.k, "all_windows": args.all_windows,
                          "video_root": escape_path(engine.meta["video_root"]),
                          "results": [h.to_dict() for h in hits]}, indent=1, allow_nan=False, ensure_ascii=False))
        return 0
    if not hits:
        print("the index is empty" if not len(engine) else "no video matches the filters")
        return 0
    for h in hits:
        from clipvip.search.engine import format_span

        print(f"{h.rank:3d}  {h.score:8.4f}  {format_span(h.start, h.end)}  {h.path}")
    return 0
