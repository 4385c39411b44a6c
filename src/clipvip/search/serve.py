"""``clipvip serve``: a JSON API and a web page over an index, on FastAPI + uvicorn (h11), hardened.

Routes (GET and HEAD):

* ``/`` — the page (``static/index.html``: one self-contained file, no CDN; strict Content-Security-Policy);
* ``/api/health`` — ``{"status": "ok", "videos", "windows", "model_id", "model_spec", "dim"}``;
* ``/api/search?q=TEXT&k=K&all_windows=BOOL&under=DIR&min_duration=S&max_duration=S`` — ranked moments;
* ``/thumbs/<window_id>.jpg`` and ``/video/<video_id>`` — files *of the index*, addressed by id only;
  a video is re-checked on every request (``SearchService.open_video``) and served by Starlette's
  ``FileResponse`` (``Range``, ``If-Range``, multi-range, 416);
* ``/docs`` and ``/openapi.json`` — FastAPI's OpenAPI description (the ``/docs`` page itself loads Swagger
  UI from a CDN in *your* browser; ``/openapi.json`` needs nothing).

Every error, whoever produces it, is ``{"error": reason, "status": code}`` with ``application/json``:

* the app's own (404, 405, 409, 422, 500) via exception handlers;
* anything else below (Starlette's plain-text 400/416 for bad ``Range`` headers, a crash that Starlette
  answers as text) is rewritten by :class:`JsonErrors`, an outer middleware;
* what uvicorn answers *before* the app (an unparsable request → 400, a request line over the head limit
  → 414, headers over it → 431, unsupported transfer encodings → 501, a client too slow to send its
  request head → 408, too many connections → 503) by :class:`_Protocol`, a subclass of uvicorn's h11
  protocol, because uvicorn itself writes those as ``text/plain`` and offers no hook.

Limits (all in :class:`clipvip.search.limits.Limits`): a Host allow-list (DNS rebinding: a page on ``evil.example`` resolving to
127.0.0.1 must not read your API), keep-alive and request-head timeouts (idle sockets are closed), a cap on
connections and on requests in flight (503 with ``Retry-After``), a URL limit, no request bodies (413), and
a send timeout for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import http
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import h11
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from clipvip.search.engine import MAX_K
from clipvip.search.limits import LOOPBACK_NAMES, Limits
from clipvip.search.service import MAX_QUERY_CHARS, SearchService, Unavailable, finite

log = logging.getLogger(__name__)

_WILDCARD_BINDS = ("", "0.0.0.0", "::")  # noqa: S104 - names of the wildcard addresses, not a bind
# on every answer, including the ones the protocol layer writes itself
_COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
_LINGER_S = 1.0  # how long a connection answered by the protocol layer keeps reading before it closes


# ---------------------------------------------------------------------- JSON everywhere
def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}, ensure_ascii=False).encode()


class SafeJSONResponse(JSONResponse):
    """JSON that is always valid: NaN/inf become ``null`` (``allow_nan=False`` as a last guard)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def raw_response(status: int, message: str, extra: list[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 JSON error response that closes the connection (for the protocol layer)."""
    body = error_body(status, message)
    phrase = _phrase(status)
    lines = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", f"date: {email.utils.formatdate(usegmt=True)}",
             *(f"{k.decode()}: {v.decode()}" for k, v in _COMMON_HEADERS), *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class JsonErrors:
    """Outermost ASGI middleware: an error response that is not JSON becomes JSON; a crash becomes a JSON 500.

    Starlette answers a malformed ``Range`` (400), an unsatisfiable one (416) and an unhandled exception
    (500) with ``text/plain``; this rewrites such responses as ``{"error", "status"}`` keeping their other
    headers (``Allow``, ``Content-Range``, ``Retry-After``). Error bodies are small, so they are buffered.
    """

    _KEEP = {b"allow", b"content-range", b"retry-after", b"connection", b"www-authenticate"}

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "done": False, "hold": None, "chunks": []}

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                ctype = headers.get(b"content-type", b"")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    state["hold"] = message
                    return
                return await send(message)
            if message["type"] == "http.response.body" and state["hold"] is not None:
                if sum(map(len, state["chunks"])) < 4096:  # only the start of it becomes the reason
                    state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, state["hold"] = state["hold"], None
                text = b"".join(state["chunks"]).decode("utf-8", "replace").strip()[:300]
                status = start["status"]
                body = error_body(status, text or _phrase(status))
                kept = [(k, v) for k, v in start.get("headers", []) if k.lower() in self._KEEP]
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), *kept]})
                state["done"] = True
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            return await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception:
            if not state["started"] or state["hold"] is not None:
                log.exception("error answering %s %s", scope.get("method"), scope.get("path"))
                body = error_body(500, "internal error (see the server log)")
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            elif state["done"]:
                # Starlette already answered (a JSON 500 by then) and re-raised for the log: log, don't crash.
                log.exception("error answering %s %s", scope.get("method"), scope.get("path"))
            else:
                raise  # mid-stream: nothing valid can be sent any more; uvicorn closes the connection


class RequestGuard:
    """ASGI middleware: Host allow-list, URL length, no request bodies, and the in-flight request cap."""

    def __init__(self, app: Any, limits: Limits, extra_hosts: tuple[str, ...] = ()):
        self.app = app
        self.limits = limits
        self.any_host = "*" in limits.allow_hosts
        self.hosts = {_norm_host(h) for h in (*limits.allow_hosts, *extra_hosts) if h != "*"}
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if not self.any_host:
            name = _host_name(host.decode("latin-1")) if host is not None else None
            if name is None or name not in self.hosts:
                shown = "a request without a Host header" if host is None else \
                    f"Host {host.decode('latin-1')[:100]!r}"
                return await _error(400, f"{shown} is not allowed: this server answers to "
                                         f"{', '.join(sorted(self.hosts))} (start it with --allow-host NAME "
                                         f"to add a name)")(scope, receive, send)
        url_len = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + 1
        if url_len > self.limits.max_url:
            return await _error(414, f"the URL is {url_len} bytes long; the limit is "
                                     f"{self.limits.max_url}")(scope, receive, send)
        # h11 bounds only a head that arrives in pieces; one that arrives whole is measured here.
        head_len = url_len + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head_len > self.limits.max_head:
            return await _error(431, f"the request head is {head_len} bytes long; the limit is "
                                     f"{self.limits.max_head}", {"connection": "close"})(scope, receive, send)
        length = headers.get(b"content-length", b"0").strip()
        if b"transfer-encoding" in headers or (length not in (b"", b"0")):
            return await _error(413, "this API takes no request body",
                                {"connection": "close"})(scope, receive, send)
        if self.in_flight >= self.limits.max_concurrency:
            return await _error(503, f"busy: {self.in_flight} requests are being answered (the limit is "
                                     f"{self.limits.max_concurrency}); retry shortly",
                                {"retry-after": "1"})(scope, receive, send)
        self.in_flight += 1  # the event loop is single-threaded: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _norm_host(name: str) -> str:
    return name.strip().lower().rstrip(".").strip("[]")


def _host_name(value: str) -> str | None:
    """The name part of a Host header (``[::1]:8000`` → ``::1``, ``LocalHost.:80`` → ``localhost``)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        return _norm_host(value[1:end])
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    elif value.count(":") > 1:
        return None  # an IPv6 literal must be bracketed
    return _norm_host(value) or None


# ---------------------------------------------------------------------- the protocol layer
class _Conn(h11.Connection):
    """h11's connection, remembering the protocol error so the answer can carry its status (431, 501, ...)."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON protocol errors, a request-head timeout, a connection cap and a send
    timeout. ``limits`` is set on a per-server subclass (:func:`_protocol_class`)."""

    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.conn = _Conn(h11.SERVER, self.limits.max_head)
        self.limit_concurrency = None  # enforced by connection_made and RequestGuard, with JSON answers
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._over_limit = False
        self._draining = False
        self._drain_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connections
    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_limit = len(self.connections) > self.limits.max_connections
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # answered already: discard until the client closes or the linger time is over
        if self._over_limit:
            self._answer(503, f"too many open connections (the limit is {self.limits.max_connections}); "
                              f"retry shortly", [("retry-after", "1")])
            return
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # a partial request head, or bytes after a response: the clock runs
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # ------------------------------------------------------------------ timeouts
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.request_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            self._answer(408, f"the request head did not arrive within {self.limits.request_timeout:g} s")
        else:
            self.transport.close()  # an idle connection: close it silently, as a keep-alive timeout does

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self._send_timeout)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _send_timeout(self) -> None:
        self._send_timer = None
        self.logger.info("closing a connection whose client read nothing for %g s", self.limits.send_timeout)
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for name in ("_head_timer", "_send_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # ------------------------------------------------------------------ errors before the app
    def send_400_response(self, msg: str) -> None:  # called by uvicorn for an unparsable request
        exc = self.conn.last_error
        status = getattr(exc, "error_status_hint", 400) or 400
        reason = str(exc) if exc is not None else msg
        if status == 431:
            head = self.conn.trailing_data[0]
            if b"\r\n" not in head and b"\n" not in head:
                status, reason = 414, f"the request line is longer than {self.limits.max_head} bytes"
            else:
                reason = f"the request head is longer than {self.limits.max_head} bytes"
        self._answer(status, f"invalid HTTP request: {reason}")

    def _answer(self, status: int, message: str, extra: list[tuple[str, str]] = ()) -> None:
        """Write a JSON error and close *gently*: half-close, then discard what the client still sends for
        up to a second. Closing a socket with unread input makes the kernel send a reset, which can
        destroy the answer before the client reads it (a client still uploading an oversized head)."""
        if self.transport.is_closing() or self._draining:
            return
        self._draining = True
        self._cancel_timers()
        self.transport.write(raw_response(status, message, extra))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._drain_timer = self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()


def _protocol_class(limits: Limits) -> type[_Protocol]:
    return type("ClipvipH11Protocol", (_Protocol,), {"limits": limits})


# ---------------------------------------------------------------------- the app
class _VideoResponse(FileResponse):
    """Starlette's ``FileResponse`` (Range, If-Range, multi-range, 416) over an already verified descriptor."""

    def __init__(self, video: Any, **kwargs: Any):
        super().__init__(video.read_path, media_type=video.media_type, stat_result=video.stat, **kwargs)
        self.video = video

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self.video.close()


def page_csp(page: bytes) -> str:
    """A Content-Security-Policy for the page that allows exactly its own inline script and style (by
    sha256), so that markup smuggled in through a file name could not run even if it reached the DOM."""
    def hashes(tag: str) -> str:
        found = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in found)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self'; "
            "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")




def create_app(service: SearchService, limits: Limits = Limits(), extra_hosts: tuple[str, ...] = ()) -> Any:
    """The ASGI application: FastAPI routes wrapped in :class:`RequestGuard` and :class:`JsonErrors`."""
    page = resources.files("clipvip").joinpath("search/static/index.html").read_bytes()
    csp = page_csp(page)
    app = FastAPI(title="clipvip search", version="1", docs_url="/docs", redoc_url=None,
                  default_response_class=SafeJSONResponse,
                  description="Text search over the moments of an indexed video folder. Every error is "
                              '`{"error": reason, "status": code}`.')
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path[:200]}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every route answers GET and HEAD (registered as two routes)
            detail = f"method {request.method} is not allowed here (use GET or HEAD)"
            headers = {**{k: v for k, v in headers.items() if k.lower() != "allow"}, "allow": "GET, HEAD"}
        return _error(exc.status_code, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> Response:
        return _error(exc.status, exc.reason)

    def route(path: str, **kwargs: Any) -> Any:
        """GET in the OpenAPI description, plus the same handler for HEAD (kept out of it: one operation id)."""
        def register(fn: Any) -> Any:
            app.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False,
                              **{k: v for k, v in kwargs.items() if k in ("response_class",)})
            return app.get(path, **kwargs)(fn)

        return register

    @route("/", include_in_schema=False)
    def index_page() -> Response:
        return HTMLResponse(page, headers={"content-security-policy": csp, "cache-control": "no-store"})

    @route("/api/health", summary="index and model summary")
    def health() -> Any:
        _refresh(service)
        return service.health()

    @route("/api/search", summary="rank the moments of the index for a text")
    def search(
        q: str = Query(..., max_length=MAX_QUERY_CHARS, description="what to look for, in words"),
        k: int = Query(10, ge=1, le=MAX_K, description="number of hits"),
        all_windows: bool = Query(False, description="every matching window, not only each video's best"),
        under: str | None = Query(None, max_length=4096, description="only videos inside this folder "
                                                                     "(relative to the video root)"),
        min_duration: float | None = Query(None, ge=0, allow_inf_nan=False, description="seconds"),
        max_duration: float | None = Query(None, ge=0, allow_inf_nan=False, description="seconds"),
    ) -> Any:
        if not q.strip():
            return _error(422, "the query parameter q is empty")
        _refresh(service)
        t0 = time.perf_counter()
        try:
            results = service.search(q, k, all_windows=all_windows, under=under or None,
                                     min_duration=min_duration, max_duration=max_duration)
        except ValueError as exc:
            return _error(422, str(exc))
        took = (time.perf_counter() - t0) * 1000
        for r in results:
            r["thumb_url"] = f"/thumbs/{r['window_id']}.jpg" if r.get("thumb") else None
            r["video_url"] = f"/video/{r['video_id']}"
            r["play_url"] = f"/video/{r['video_id']}#t={r['start']:g},{r['end']:g}"
        return {"query": q, "k": k, "all_windows": all_windows, "count": len(results),
                "took_ms": round(took, 2), "results": results}

    @route("/thumbs/{window_id}.jpg", summary="a window's thumbnail (JPEG)",
                   response_class=Response)
    def thumb(window_id: int) -> Response:
        path = service.thumb(window_id)
        return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})

    @route("/video/{video_id}", response_class=Response,
                   summary="a video file (byte ranges supported)",
                   responses={404: {"description": "not indexed, gone, or now outside the video folder"},
                              409: {"description": "the file changed since it was indexed"}})
    def video(video_id: int) -> Response:
        opened = service.open_video(video_id)
        try:
            return _VideoResponse(opened, headers={"cache-control": "no-cache"})
        except BaseException:
            opened.close()
            raise

    return _SecurityHeaders(JsonErrors(RequestGuard(app, limits, extra_hosts)))


class _SecurityHeaders:
    """Adds ``nosniff`` and ``no-referrer`` to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_COMMON_HEADERS]}
            await send(message)

        await self.app(scope, receive, wrapped)


def _refresh(service: SearchService) -> None:
    try:
        service.refresh()
    except Exception as exc:  # noqa: BLE001 - keep answering from the snapshot we have
        log.warning("could not follow the index (still serving the previous snapshot): %s", exc)


def _validation_message(errors: Any) -> str:
    """One readable sentence for FastAPI's validation errors (the OpenAPI constraints stay declarative)."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path")]
        name = loc[-1] if loc else "request"
        raw = err.get("input")
        if name == "q" and err.get("type") == "missing":
            parts.append("the query parameter q is empty")
        elif name == "q" and err.get("type") == "string_too_long":
            parts.append(f"the query is {len(raw)} characters long; the limit is {MAX_QUERY_CHARS}")
        elif name == "k":
            parts.append(f"k must be an integer in 1..{MAX_K}, got {str(raw)[:20]!r}")
        else:
            shown = "" if raw is None or isinstance(raw, dict) else f", got {str(raw)[:40]!r}"
            parts.append(f"{name}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------- the server
@dataclass
class SearchServer:
    """A bound, ready-to-run server: ``serve_forever()`` (blocking) or ``start()`` (a thread) and ``shutdown()``.

    The socket is bound in the constructor, so a port in use fails here with ``OSError`` and ``port=0``
    gives a free port that :attr:`url` names.
    """

    service: SearchService
    host: str = "127.0.0.1"
    port: int = 8000
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        import uvicorn

        info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.socket = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(info[4])
            self.socket.listen(1024)  # connections queue from now on, even before serve_forever() runs
        except OSError:
            self.socket.close()
            raise
        bound = self.host if self.host not in _WILDCARD_BINDS else None
        self.app = create_app(self.service, self.limits, (bound,) if bound else ())
        self.service.refresh_interval = self.limits.refresh_interval
        config = uvicorn.Config(
            self.app, http=_protocol_class(self.limits), ws="none", lifespan="off", interface="asgi3",
            proxy_headers=False, server_header=False, log_config=None, log_level="warning", access_log=False,
            timeout_keep_alive=self.limits.keep_alive,  # type: ignore[arg-type] - a float works
            timeout_graceful_shutdown=5, backlog=1024, h11_max_incomplete_event_size=self.limits.max_head,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until Ctrl-C / SIGTERM (in the main thread) or :meth:`shutdown`."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 30.0) -> "SearchServer":
        """Serve in a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="clipvip-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def server_close(self) -> None:
        self.socket.close()


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8000,
                limits: Limits | None = None) -> SearchServer:
    """A bound server (``port=0`` picks a free port; read it back from ``server.url``)."""
    return SearchServer(service, host, port, limits or Limits())


__all__ = ["LOOPBACK_NAMES", "Limits", "SearchServer", "create_app", "make_server", "raw_response"]
