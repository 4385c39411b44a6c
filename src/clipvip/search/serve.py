"""``clipvip serve``: a small JSON API and a web page over an index, on the standard library's HTTP server.

Routes (GET and HEAD only):

* ``/`` — the page (``static/index.html``: one self-contained file, no CDN);
* ``/api/health`` — ``{"status": "ok", "videos": N, "model_id", "model_spec", "dim"}``;
* ``/api/search?q=TEXT&k=K`` — ``{"query", "k", "count", "took_ms", "results": [{rank, row, score, path,
  duration, thumb_url, video_url}]}``; an empty ``q`` or a bad ``k`` → 400, a ``q`` over 1000 characters
  → 413, each with ``{"error": reason}``;
* ``/thumbs/<row>.jpg`` and ``/video/<row>`` — files *of the index*, addressed by row number only, so no
  request can name a path (``../`` and friends simply match no route → 404). Videos honour ``Range``
  requests so the browser can seek.

Safety: binds 127.0.0.1 unless told otherwise; the model call is serialised by the pipeline's lock, so
any number of concurrent requests is safe.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clipvip.search.service import MAX_K, SearchService

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
_THUMB = re.compile(r"^/thumbs/(\d{1,12})\.jpg$")
_VIDEO = re.compile(r"^/video/(\d{1,12})$")
_CHUNK = 1 << 16


class SearchServer(ThreadingHTTPServer):
    """Threaded server holding the shared :class:`SearchService`."""

    daemon_threads = True
    request_queue_size = 128  # many clients at once must queue, not be refused

    def __init__(self, address: tuple[str, int], service: SearchService):
        self.service = service
        self.page = resources.files("clipvip").joinpath("search/static/index.html").read_bytes()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    server_version = "clipvip-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ dispatch
    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        try:
            url = urlsplit(self.path)
            route = url.path
            if route in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8", head)
            elif route == "/api/health":
                self._health(head)
            elif route == "/api/search":
                self._search(url.query, head)
            elif m := _THUMB.match(route):
                self._thumb(int(m.group(1)), head)
            elif m := _VIDEO.match(route):
                self._video(int(m.group(1)), head)
            else:
                self._error(404, f"no such resource: {route[:200]}", head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, not kill the connection silently
            log.exception("error serving %s", self.path)
            self._error(500, f"internal error: {type(exc).__name__}", head)

    # ------------------------------------------------------------------ routes
    def _health(self, head: bool) -> None:
        svc = self.server.service
        self._json(200, {"status": "ok", "videos": len(svc), "model_id": svc.index.model_id,
                         "model_spec": svc.index.meta.get("model_spec"), "dim": svc.index.meta.get("dim")}, head)

    def _search(self, query: str, head: bool) -> None:
        params = parse_qs(query, keep_blank_values=True)
        q = params.get("q", [""])[0]
        k_raw = params.get("k", ["10"])[0]
        if not q.strip():
            return self._error(400, "the query parameter q is empty", head)
        if len(q) > MAX_QUERY_CHARS:
            return self._error(413, f"the query is {len(q)} characters long; the limit is {MAX_QUERY_CHARS}", head)
        try:
            k = int(k_raw)
        except ValueError:
            return self._error(400, f"k must be an integer in 1..{MAX_K}, got {k_raw[:20]!r}", head)
        if not 1 <= k <= MAX_K:
            return self._error(400, f"k must be an integer in 1..{MAX_K}, got {k}", head)
        t0 = time.perf_counter()
        try:
            results = self.server.service.search(q, k)
        except ValueError as exc:
            return self._error(400, str(exc), head)
        took = (time.perf_counter() - t0) * 1000
        for r in results:
            r["thumb_url"] = f"/thumbs/{r['row']}.jpg" if r.pop("thumb") else None
            r["video_url"] = f"/video/{r['row']}"
        self._json(200, {"query": q, "k": k, "count": len(results), "took_ms": round(took, 2),
                         "results": results}, head)

    def _thumb(self, row: int, head: bool) -> None:
        index = self.server.service.index
        path = index.thumb_path(row) if row < len(index) else None
        if path is None or not path.is_file():
            return self._error(404, f"no thumbnail for row {row}", head)
        self._send(200, path.read_bytes(), "image/jpeg", head, cache=True)

    def _video(self, row: int, head: bool) -> None:
        index = self.server.service.index
        if row >= len(index):
            return self._error(404, f"no video at row {row}", head)
        path = index.video_path(row)
        if not path.is_file():
            return self._error(404, f"video of row {row} is no longer on disk", head)
        self._file(path, head)

    # ------------------------------------------------------------------ responses
    def _file(self, path: Path, head: bool) -> None:
        """Send a file, honouring a single ``Range: bytes=a-b`` so <video> can seek."""
        size = path.stat().st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._error(416, f"unsupported range {rng[:50]!r}", head)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            if start > end or start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or not length:
            return
        with path.open("rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _json(self, status: int, obj: Any, head: bool) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", head)

    def _error(self, status: int, message: str, head: bool) -> None:
        self._json(status, {"error": message, "status": status}, head)

    def _send(self, status: int, body: bytes, ctype: str, head: bool, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8000) -> SearchServer:
    """A ready-to-run server (``port=0`` picks a free port; read it back from ``server.url``)."""
    return SearchServer((host, port), service)
