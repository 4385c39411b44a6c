"""``clipvip serve DIR``: the search page and JSON API over an index, on FastAPI + uvicorn (loopback by default)."""

from __future__ import annotations

import argparse

ORDER = 42


def register(subparsers: argparse._SubParsersAction) -> None:
    from clipvip.search.limits import DEFAULTS

    p = subparsers.add_parser(
        "serve", help="serve an index over HTTP: a search page and a JSON API",
        description="GET / (the page), /api/search?q=TEXT&k=K[&all_windows=true&under=DIR&min_duration=S"
                    "&max_duration=S], /api/health, /docs (OpenAPI). Binds 127.0.0.1 and answers only to "
                    "loopback Host names unless told otherwise. Follows new commits of `clipvip index` "
                    "without a restart.")
    p.add_argument("index", metavar="DIR", help="index directory built by `clipvip index`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the "
                        "network, and then needs --allow-host for the names clients use)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; default: localhost, "
                        "127.0.0.1, ::1 and the --host address; '*' accepts any name, which re-opens DNS "
                        "rebinding)")
    p.add_argument("--keep-alive", type=float, default=DEFAULTS.keep_alive, metavar="S",
                   help=f"close an idle keep-alive connection after S seconds (default {DEFAULTS.keep_alive:g})")
    p.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout, metavar="S",
                   help="close a connection that has not sent a complete request head within S seconds "
                        f"(408; default {DEFAULTS.request_timeout:g})")
    p.add_argument("--max-connections", type=int, default=DEFAULTS.max_connections, metavar="N",
                   help=f"open connections before new ones get 503 (default {DEFAULTS.max_connections})")
    p.add_argument("--max-concurrency", type=int, default=DEFAULTS.max_concurrency, metavar="N",
                   help=f"requests answered at once before new ones get 503 (default {DEFAULTS.max_concurrency})")
    p.add_argument("--backend", choices=("auto", "exact", "faiss"), default="auto",
                   help="search backend (see `clipvip search --help`)")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="tokenizer, when the one recorded in the index has moved")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from clipvip.cli import CLIError
    from clipvip.search.limits import DEFAULTS, LOOPBACK_NAMES
    from clipvip.search.store import IndexFormatError

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    hosts = [h.strip() for h in args.allow_host]
    if any(not h or any(c in h for c in "/ \t") for h in hosts):
        raise CLIError(f"--allow-host takes a host name or address (no scheme, path or spaces), got {args.allow_host}")
    try:
        limits = dataclasses.replace(DEFAULTS, allow_hosts=(*LOOPBACK_NAMES, *hosts), keep_alive=args.keep_alive,
                                     request_timeout=args.request_timeout, max_connections=args.max_connections,
                                     max_concurrency=args.max_concurrency)
    except ValueError as exc:
        raise CLIError(str(exc).replace("keep_alive", "--keep-alive").replace("request_timeout", "--request-timeout")
                       .replace("max_connections", "--max-connections")
                       .replace("max_concurrency", "--max-concurrency")) from exc
    from clipvip.search.serve import make_server
    from clipvip.search.service import SearchService

    try:
        service = SearchService(args.index, backend=args.backend, device=args.device, tokenizer=args.tokenizer)
    except (IndexFormatError, ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    try:
        server = make_server(service, args.host, args.port, limits)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "*" in hosts:
        print("warning: --allow-host '*' answers any Host header: a web page on any site can then read this "
              "API through DNS rebinding", flush=True)
    print(f"serving {len(service)} videos ({service.engine.num_windows} moments) from {args.index} at "
          f"{server.url}  (API docs: {server.url}docs; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
