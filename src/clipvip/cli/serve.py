"""``clipvip serve DIR [--host 127.0.0.1] [--port 8000]``: JSON API and web page over an index."""

from __future__ import annotations

import argparse

ORDER = 42


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve an index over HTTP: a search page and a JSON API",
                              description="GET / (page), /api/search?q=TEXT&k=K, /api/health.")
    p.add_argument("index", metavar="DIR", help="index directory built by `clipvip index`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--backend", choices=("auto", "exact", "faiss"), default="auto",
                   help="search backend (same results; auto picks FAISS for large indexes)")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer, when the one recorded in the index has moved")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipvip.cli import CLIError
    from clipvip.search.index import IndexFormatError
    from clipvip.search.serve import make_server
    from clipvip.search.service import SearchService

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    try:
        service = SearchService(args.index, backend=args.backend, device=args.device, tokenizer=args.tokenizer)
    except (IndexFormatError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    try:
        server = make_server(service, args.host, args.port)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    print(f"serving {len(service)} videos from {args.index} at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
