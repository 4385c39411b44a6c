"""``clipvip serve`` over real HTTP (FastAPI on uvicorn, ephemeral loopback ports only): the API and its
moments, JSON for every error (including the ones uvicorn/h11 produce before the app), the Host allow-list,
idle connections closed, connection and concurrency limits, ``/video`` re-checks (re-pointed symlinks,
edited files), no path traversal, 50 concurrent queries, and the page in headless Chromium."""

from __future__ import annotations

import html as html_mod
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

import clipvip
from clipvip.search.engine import Hit
from clipvip.search.index import build_index
from clipvip.search.limits import LOOPBACK_NAMES, Limits
from clipvip.search.serve import make_server
from clipvip.search.service import SearchService
from conftest import REPO
from test_pipeline import make_video, shared_tokenizer

# A relative path that reads as a script element: the "/" is a folder separator.
SCRIPT_DIR = "<script>document.body.dataset.pwned='1'<"
SCRIPT_PATH = SCRIPT_DIR + "/script>.mp4"
IMG_NAME = "<img src=x onerror=\"document.body.dataset.pwned='2'\">.mp4"
SECRET = b"TOP SECRET: outside the video folder"
ODD_NAMES = [b"caf\xe9 latin-1.mp4", b"two\nlines.mp4"]
N_VIDEOS = 9


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    pipe = clipvip.load("clipvip-tiny", device="cpu", tokenizer=shared_tokenizer())
    videos = tmp / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / SCRIPT_DIR).mkdir()
    make_video(videos / "a.mp4", seed=1, frames=6)
    make_video(videos / "long.mp4", seed=2, frames=30)  # 5 s at 6 fps: several 2 s windows
    make_video(videos / "sub" / "c.mp4", seed=3, frames=8)
    make_video(videos / SCRIPT_PATH, seed=4, frames=6)
    make_video(videos / IMG_NAME, seed=5, frames=6)
    make_video(videos / "other.mp4", seed=6, frames=12)
    os.symlink("a.mp4", videos / "link.mp4")
    for i, raw_name in enumerate(ODD_NAMES):  # names that are not valid UTF-8 or hold a newline
        make_video(videos / f"odd{i}.mp4", seed=30 + i, frames=6)
        os.rename(os.fsencode(videos / f"odd{i}.mp4"), os.fsencode(videos) + b"/" + raw_name)
    (videos / "corrupt.mp4").write_bytes(b"not a video at all")
    (tmp / "secret.txt").write_bytes(SECRET)
    build_index(videos, tmp / "index", pipe, progress=False, window=2.0, stride=1.0)
    service = SearchService(tmp / "index", pipe)
    return SimpleNamespace(tmp=tmp, videos=videos, pipe=pipe, service=service, index=tmp / "index")


@pytest.fixture(scope="module")
def server(world):
    srv = make_server(world.service, "127.0.0.1", 0, Limits(keep_alive=1.0, request_timeout=2.0)).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """A raw request (http.client sends the path exactly as given: no client-side ``..`` normalisation)."""
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(server, data: bytes, *, chunks: int = 1, timeout: float = 20.0) -> bytes:
    """Send bytes on a fresh socket (optionally in pieces) and read until the server closes it."""
    s = socket.create_connection(server.server_address, timeout=timeout)
    try:
        step = max(1, len(data) // chunks)
        try:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                if chunks > 1:
                    time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole request was sent: read its answer
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def parse(response: bytes) -> tuple[int, dict, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def strict_json(body: bytes):
    """``json.loads`` that refuses NaN/Infinity (Python's parser accepts them; the JSON grammar does not)."""
    def bad(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(body, parse_constant=bad)


# ---------------------------------------------------------------------- the API
def test_binds_localhost_and_reports_health(server, world):
    assert server.server_address[0] == "127.0.0.1"
    status, headers, body = get(server, "/api/health")
    data = strict_json(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert data["status"] == "ok" and data["videos"] == N_VIDEOS and data["dim"] == 32
    assert data["windows"] > data["videos"]  # the 5 s video has several 2 s windows


def test_search_returns_moments_with_media_urls(server, world):
    status, _, body = get(server, "/api/search?q=a+red+square+moves&k=3")
    data = strict_json(body)
    assert status == 200 and data["count"] == 3 and data["k"] == 3 and data["all_windows"] is False
    results = data["results"]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in results] == [1, 2, 3]
    assert len({r["video_id"] for r in results}) == 3  # one hit per video by default
    # every score is the cosine of the text and the stored vector of that window (read from the snapshot)
    snap = world.service.engine.snapshot
    text = world.pipe.encode_texts(["a red square moves"]).numpy()[0]
    for r in results:
        i = int(np.flatnonzero(snap.window_ids == r["window_id"])[0])
        assert float(snap.starts[i]) == pytest.approx(r["start"], abs=1e-3)
        assert float(snap.ends[i]) == pytest.approx(r["end"], abs=1e-3)
        vec = np.asarray(snap.vectors[snap.slots[i]], np.float32)
        assert r["score"] == pytest.approx(float(vec @ text), abs=1e-4), (
            "the hit's score is not the cosine of its window's stored vector: are scores gathered by slot "
            f"(snapshot.slots = {snap.slots.tolist()}, dead = {snap.dead})?")
        assert 0 <= r["start"] < r["end"] and re.fullmatch(r"\d\d:\d\d:\d\d\u2013\d\d:\d\d:\d\d", r["span"])
        assert r["play_url"] == f"/video/{r['video_id']}#t={r['start']:g},{r['end']:g}"
    first = results[0]
    status, headers, thumb = get(server, first["thumb_url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and thumb[:2] == b"\xff\xd8"
    status, headers, video = get(server, first["video_url"])
    real = world.service.engine.video_file(first["video_id"]).path
    assert status == 200 and video == Path(real).read_bytes() and headers["accept-ranges"] == "bytes"
    status, headers, part = get(server, first["video_url"], {"Range": "bytes=10-19"})
    assert status == 206 and part == video[10:20]
    assert headers["content-range"] == f"bytes 10-19/{len(video)}"
    status, headers, tail = get(server, first["video_url"], {"Range": "bytes=-7"})
    assert status == 206 and tail == video[-7:]
    status, headers, body = get(server, first["video_url"], method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(video))


def test_all_windows_lists_every_moment_of_a_long_video(server, world):
    long_id = next(v.id for v in world.service.engine.snapshot.videos if v.path == b"long.mp4")
    data = strict_json(get(server, "/api/search?q=colours&k=100&all_windows=true")[2])
    assert data["all_windows"] is True and data["count"] == world.service.engine.num_windows
    spans = sorted((r["start"], r["end"]) for r in data["results"] if r["video_id"] == long_id)
    assert len(spans) >= 3 and len({s for s, _ in spans}) == len(spans)  # distinct moments of one video
    one = strict_json(get(server, "/api/search?q=colours&k=100")[2])
    assert one["count"] == N_VIDEOS and len({r["video_id"] for r in one["results"]}) == N_VIDEOS
    under = strict_json(get(server, "/api/search?q=colours&k=10&under=sub")[2])
    assert [r["path"] for r in under["results"]] == ["sub/c.mp4"]
    longer = strict_json(get(server, "/api/search?q=colours&k=10&min_duration=3")[2])
    assert [r["path"] for r in longer["results"]] == ["long.mp4"]


@pytest.mark.parametrize("query, fragment", [
    ("/api/search?q=", "empty"),
    ("/api/search?k=3", "empty"),
    ("/api/search?q=%20%20", "empty"),
    ("/api/search?q=" + "a" * 1001, "1000"),
    ("/api/search?q=dog&k=0", "1..100"),
    ("/api/search?q=dog&k=101", "1..100"),
    ("/api/search?q=dog&k=ten", "1..100"),
    ("/api/search?q=dog&k=-1", "1..100"),
    ("/api/search?q=dog&k=1e3", "1..100"),
    ("/api/search?q=dog&min_duration=nan", "finite"),
    ("/api/search?q=dog&max_duration=inf", "finite"),
    ("/api/search?q=dog&min_duration=-1", "min_duration"),
    ("/api/search?q=dog&min_duration=9&max_duration=2", "duration"),
    ("/api/search?q=dog&all_windows=maybe", "all_windows"),
    ("/api/search?q=dog&under=../..", "under"),
])
def test_bad_queries_get_422_with_a_json_reason(server, query, fragment):
    status, headers, body = get(server, query)
    data = strict_json(body)
    assert status == 422 and headers["content-type"] == "application/json" and data["status"] == 422
    assert fragment in data["error"]


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/thumbs/../index.json", "/thumbs/..%2findex.json", "/thumbs/%2e%2e/manifest.json",
    "/video/../../secret.txt", "/video/..%2F..%2Fsecret.txt", "/video/%2e%2e%2fsecret.txt",
    "/video/0/../../secret.txt", "/videos/a.mp4", "/video/a.mp4", "/static/../../secret.txt",
    "/video/999999", "/thumbs/999999.jpg", "/video/-1", "/video/99999999999999999999999999", "/index.db",
    "/video/1%00", "/thumbs/1.jpg%00.txt",
])
def test_only_files_of_the_index_are_served(server, path):
    status, headers, body = get(server, path)
    assert status in (404, 422) and headers["content-type"] == "application/json"
    assert SECRET not in body and strict_json(body)["status"] == status


def test_fifty_concurrent_queries_all_succeed(server):
    queries = [f"video number {i % 7}" for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda q: get(server, "/api/search?q=" + q.replace(" ", "+") + "&k=5"), queries))
    assert [a[0] for a in answers] == [200] * 50
    by_query: dict[str, list] = {}
    for q, (_, _, body) in zip(queries, answers):
        rows = [(r["video_id"], r["window_id"]) for r in strict_json(body)["results"]]
        assert len(rows) == 5
        by_query.setdefault(q, []).append(rows)
    assert all(all(r == runs[0] for r in runs) for runs in by_query.values())  # same query, same answer


def test_openapi_describes_the_api(server):
    status, _, body = get(server, "/openapi.json")
    spec = strict_json(body)
    assert status == 200 and "/api/search" in spec["paths"] and "/video/{video_id}" in spec["paths"]
    params = {p["name"]: p for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "k", "all_windows", "under", "min_duration", "max_duration"} <= set(params)
    assert params["k"]["schema"]["maximum"] == 100 and params["q"]["schema"]["maxLength"] == 1000


# ---------------------------------------------------------------------- JSON for every status
LONG_LINE = b"GET /api/search?q=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
BIG_HEAD = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\n"


@pytest.mark.parametrize("request_bytes, chunks, status", [
    (b"GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 1, 404),
    (b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 1, 405),
    (b"DELETE /video/VID HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 1, 405),
    (b"BREW /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 1, 405),
    (b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello", 1, 413),
    (b"GET /api/search?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 1, 414),
    (LONG_LINE, 1, 414),  # arrives whole: measured by the app
    (LONG_LINE, 40, 414),  # arrives in pieces: h11's buffer limit, answered by the protocol layer
    (BIG_HEAD, 1, 431),
    (BIG_HEAD, 40, 431),
    (b"GET /api/search?q=dog&k=0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", 1, 422),
    (b"HELLO\r\n\r\n", 1, 400),
    (b"GET / HTTP/1.1\r\n\r\n", 1, 400),  # HTTP/1.1 without Host (h11)
    (b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 1, 501),
    (b"GET /video/VID HTTP/1.1\r\nHost: localhost\r\nRange: bytes=zz\r\nConnection: close\r\n\r\n", 1, 400),
    (b"GET /video/VID HTTP/1.1\r\nHost: localhost\r\nRange: bytes=999999999-\r\nConnection: close\r\n\r\n", 1, 416),
    (b"GET /api/health HTTP/1.1\r\nHost: loc", 1, 408),  # a head that never completes
], ids=["404", "405-post", "405-delete", "405-brew", "413-body", "414-app", "414-whole", "414-pieces",
        "431-whole", "431-pieces", "422", "400-garbage", "400-no-host", "501-gzip", "400-range", "416", "408"])
def test_every_error_is_json(server, world, request_bytes, chunks, status):
    vid = str(world.service.engine.snapshot.videos[0].id).encode()
    got, headers, body = parse(raw(server, request_bytes.replace(b"/VID ", b"/" + vid + b" "), chunks=chunks))
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json"
    data = strict_json(body)
    assert data["status"] == status and isinstance(data["error"], str) and data["error"]
    if status == 416:
        assert headers["content-range"].startswith("bytes */")
    if status == 405:
        assert set(headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_a_crash_is_a_json_500(world):
    class Broken:
        def __getattr__(self, name):
            return getattr(world.service.engine, name)

        def __len__(self):
            return len(world.service.engine)

        def search(self, *a, **kw):
            raise RuntimeError("boom")

    srv = make_server(SearchService(engine=Broken()), "127.0.0.1", 0).start()
    try:
        status, headers, body = get(srv, "/api/search?q=dog")
        assert status == 500 and headers["content-type"] == "application/json"
        assert strict_json(body)["status"] == 500 and "boom" not in body.decode()
        assert get(srv, "/api/health")[0] == 200  # the server lives on
    finally:
        srv.shutdown()
        srv.server_close()


def test_non_finite_scores_never_make_invalid_json(world):
    class NaNScores:
        def __getattr__(self, name):
            return getattr(world.service.engine, name)

        def __len__(self):
            return len(world.service.engine)

        def search(self, queries, k=10, **kw):
            return [[Hit(rank=1, score=float("nan"), video_id=0, window_id=0, path="a.mp4", relpath=b"a.mp4",
                         start=0.0, end=1.0, duration=float("inf"), thumb=False)] for _ in queries]

    srv = make_server(SearchService(engine=NaNScores()), "127.0.0.1", 0).start()
    try:
        status, _, body = get(srv, "/api/search?q=dog")
        hit = strict_json(body)["results"][0]
        assert status == 200 and hit["score"] is None and hit["duration"] is None
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------------- Host, timeouts, limits
@pytest.mark.parametrize("host, allowed", [
    ("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("[::1]", True), ("localhost:1234", True),
    ("evil.example", False), ("evil.example:80", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example", False), ("", False), ("[::1", False), ("::1", False),
])
def test_foreign_host_is_refused(server, host, allowed):
    status, headers, body = parse(raw(server, f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n"
                                              f"Connection: close\r\n\r\n".encode()))
    if allowed:
        assert status == 200
    else:
        assert status == 400 and headers["content-type"] == "application/json"
        assert "--allow-host" in strict_json(body)["error"] and b"model_id" not in body


def test_http10_without_host_is_refused(server):
    status, _, body = parse(raw(server, b"GET /api/health HTTP/1.0\r\n\r\n"))
    assert status == 400 and "Host" in strict_json(body)["error"]


def test_allow_host_adds_names(world):
    srv = make_server(world.service, "127.0.0.1", 0, Limits(allow_hosts=(*LOOPBACK_NAMES, "videos.lan"))).start()
    try:
        ok = parse(raw(srv, b"GET /api/health HTTP/1.1\r\nHost: videos.lan:8000\r\nConnection: close\r\n\r\n"))
        bad = parse(raw(srv, b"GET /api/health HTTP/1.1\r\nHost: evil.lan\r\nConnection: close\r\n\r\n"))
        assert ok[0] == 200 and bad[0] == 400
    finally:
        srv.shutdown()
        srv.server_close()


def test_idle_connections_are_closed(server):
    """Sockets that never send a byte, and keep-alive sockets after a response, are closed by the server
    (recv returns b"" — not a client-side timeout: each socket waits up to 20 s)."""
    idle = [socket.create_connection(server.server_address, timeout=20) for _ in range(20)]
    kept = socket.create_connection(server.server_address, timeout=20)
    try:
        kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while b'"status":"ok"' not in data:
            data += kept.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        assert kept.recv(65536) == b""  # keep-alive expired: the server closed it
        for s in idle:
            assert s.recv(65536) == b""  # request timeout: closed without an answer
    finally:
        for s in (*idle, kept):
            s.close()


def test_connection_limit_answers_503_json(world):
    srv = make_server(world.service, "127.0.0.1", 0, Limits(max_connections=3, request_timeout=30)).start()
    held = [socket.create_connection(srv.server_address, timeout=20) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept them (bounded: one short sleep, then a bounded read)
        status, headers, body = parse(raw(srv, b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        assert status == 503 and headers["content-type"] == "application/json" and headers["retry-after"]
        assert "connections" in strict_json(body)["error"]
    finally:
        for s in held:
            s.close()
        srv.shutdown()
        srv.server_close()


def test_concurrency_limit_answers_503_json(world):
    gate, entered = threading.Event(), threading.Semaphore(0)

    class Slow:
        def __getattr__(self, name):
            return getattr(world.service.engine, name)

        def __len__(self):
            return len(world.service.engine)

        def search(self, *a, **kw):
            entered.release()
            assert gate.wait(30)
            return world.service.engine.search(*a, **kw)

    srv = make_server(SearchService(engine=Slow()), "127.0.0.1", 0, Limits(max_concurrency=2)).start()
    try:
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(get, srv, "/api/search?q=dog") for _ in range(2)]
            for _ in range(2):
                assert entered.acquire(timeout=30)
            status, headers, body = get(srv, "/api/search?q=cat")
            assert status == 503 and headers["retry-after"] == "1" and strict_json(body)["status"] == 503
            gate.set()
            assert [f.result(timeout=60)[0] for f in busy] == [200, 200]
        assert get(srv, "/api/search?q=cat")[0] == 200
    finally:
        gate.set()
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------------- /video re-checks
def _video_id(world, relpath: bytes) -> int:
    return next(v.id for v in world.service.engine.snapshot.videos if v.path == relpath)


def test_repointed_symlink_is_refused(server, world):
    vid = _video_id(world, b"link.mp4")
    link = world.videos / "link.mp4"
    status, _, body = get(server, f"/video/{vid}")
    assert status == 200 and body == (world.videos / "a.mp4").read_bytes()
    try:
        link.unlink()
        link.symlink_to(world.tmp / "secret.txt")  # outside the video folder
        status, headers, body = get(server, f"/video/{vid}")
        assert status == 404 and SECRET not in body and "outside" in strict_json(body)["error"]
        status, _, body = get(server, f"/video/{vid}", {"Range": "bytes=0-5"})
        assert status == 404 and SECRET[:6] not in body
        link.unlink()
        link.symlink_to("other.mp4")  # inside, but not the file that was indexed
        status, _, body = get(server, f"/video/{vid}")
        assert status == 409 and "changed since it was indexed" in strict_json(body)["error"]
        link.unlink()
        link.symlink_to("missing.mp4")  # dangling
        assert get(server, f"/video/{vid}")[0] == 404
    finally:
        link.unlink()
        link.symlink_to("a.mp4")
    assert get(server, f"/video/{vid}")[0] == 200


@pytest.mark.parametrize("raw_name", ODD_NAMES)
def test_videos_with_odd_names_are_served(server, world, raw_name):
    vid = _video_id(world, raw_name)
    status, headers, body = get(server, f"/video/{vid}")
    assert status == 200 and body == open(os.fsencode(world.videos) + b"/" + raw_name, "rb").read()
    hits = strict_json(get(server, "/api/search?q=x&k=100")[2])["results"]
    shown = next(r["path"] for r in hits if r["video_id"] == vid)
    assert shown.isprintable() and "\n" not in shown  # escaped for display, one line


def test_edited_or_removed_file_is_refused(server, world):
    vid = _video_id(world, b"sub/c.mp4")
    path = world.videos / "sub" / "c.mp4"
    st = path.stat()
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        status, _, body = get(server, f"/video/{vid}")
        assert status == 409 and "mtime" in strict_json(body)["error"]
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert get(server, f"/video/{vid}")[0] == 200
        path.rename(path.with_suffix(".bak"))
        assert get(server, f"/video/{vid}")[0] == 404
    finally:
        if path.with_suffix(".bak").exists():
            path.with_suffix(".bak").rename(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert get(server, f"/video/{vid}")[0] == 200


def test_folder_swapped_for_a_symlink_is_refused(server, world):
    vid = _video_id(world, b"sub/c.mp4")
    outside = world.tmp / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy2(world.videos / "sub" / "c.mp4", outside / "c.mp4")  # same size and mtime
    sub = world.videos / "sub"
    try:
        sub.rename(world.videos / "sub.real")
        sub.symlink_to(outside)
        status, _, body = get(server, f"/video/{vid}")
        assert status == 404 and "outside" in strict_json(body)["error"]
    finally:
        if sub.is_symlink():
            sub.unlink()
        if (world.videos / "sub.real").exists():
            (world.videos / "sub.real").rename(sub)
    assert get(server, f"/video/{vid}")[0] == 200


def test_server_follows_new_commits_of_the_index(world, tmp_path: Path):
    """``clipvip index`` run again while the server runs: the new video is served without a restart."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "first.mp4", seed=21, frames=6)
    build_index(videos, tmp_path / "index", world.pipe, progress=False)
    srv = make_server(SearchService(tmp_path / "index", world.pipe), "127.0.0.1", 0,
                      Limits(refresh_interval=0.1)).start()
    try:
        assert strict_json(get(srv, "/api/health")[2])["videos"] == 1
        make_video(videos / "second.mp4", seed=22, frames=6)
        build_index(videos, tmp_path / "index", world.pipe, progress=False)
        deadline = time.monotonic() + 30
        while strict_json(get(srv, "/api/health")[2])["videos"] != 2:
            assert time.monotonic() < deadline, "the server never saw the new commit"
            time.sleep(0.1)
        paths = {r["path"] for r in strict_json(get(srv, "/api/search?q=anything&k=5")[2])["results"]}
        assert paths == {"first.mp4", "second.mp4"}
        second = next(v.id for v in srv.service.engine.snapshot.videos if v.path == b"second.mp4")
        assert get(srv, f"/video/{second}")[2] == (videos / "second.mp4").read_bytes()
    finally:
        srv.shutdown()
        srv.server_close()


# ---------------------------------------------------------------------- CLI
def test_search_cli_prints_the_same_ranking(server, world, bpe_path: Path, capsys):
    from clipvip.cli import main

    capsys.readouterr()
    assert main(["search", str(world.index), "a green dot", "-k", "3", "--json", "--tokenizer", str(bpe_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = strict_json(get(server, "/api/search?q=a+green+dot&k=3")[2])["results"]
    assert [r["path"] for r in printed["results"]] == [r["path"] for r in api]


def test_serve_cli_usage_errors(tmp_path: Path, capsys):
    from clipvip.cli import main

    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--keep-alive", "0"]) == 2
    assert "--keep-alive" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-concurrency", "0"]) == 2
    assert "--max-concurrency" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--allow-host", "http://x/"]) == 2
    assert "--allow-host" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "index" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_cli_serves_until_interrupted(world, bpe_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "clipvip", "serve", str(world.index), "--port", "0",
                             "--tokenizer", str(bpe_path), "--allow-host", "videos.lan"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # bounded: the process prints one line once it listens, or exits
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        srv = SimpleNamespace(server_address=("127.0.0.1", int(m.group(1))))
        assert f"{N_VIDEOS} videos" in line
        assert get(srv, "/api/health")[0] == 200
        assert get(srv, "/api/health", {"Host": "videos.lan"})[0] == 200
        assert get(srv, "/api/health", {"Host": "evil.lan"})[0] == 400
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---------------------------------------------------------------------- the page in a browser
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (Debian package `chromium`; .ci/run installs it)")


def _browse(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
            "--virtual-time-budget=10000"]
    return subprocess.run([*base, *extra, url], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_page_renders_moments_in_headless_chromium(server, tmp_path: Path):
    url = server.url + "?q=a+blue+block&k=4"
    dom = _browse(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert page.count('class="result"') == 4, page[-3000:]
    assert "4 results for" in page and 'data-rank="1"' in page
    api = strict_json(get(server, "/api/search?q=a+blue+block&k=4")[2])["results"]
    # same ranking as the API, each with its moment: thumbnail, start–end, and a link that plays from there
    assert [html_mod.unescape(p) for p in re.findall(r'data-path="([^"]+)"', page)] == [r["path"] for r in api]
    assert [html_mod.unescape(h) for h in re.findall(r'class="thumblink" href="([^"]+)"', page)] == \
        [r["play_url"] for r in api]
    for r in api:
        assert r["span"] in page
    assert page.count('class="thumb" alt=') == 4 and len(re.findall(r'src="/thumbs/\d+\.jpg"', page)) == 4
    shot = Path(os.environ.get("CLIPVIP_SCREENSHOT_DIR", tmp_path)) / "serve-screenshot.png"
    _browse(url, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 5000
    # every moment: the checkbox state comes from the URL and the page lists every window
    every = _browse(server.url + "?q=a+blue+block&k=100&all_windows=true", tmp_path, "--dump-dom").stdout
    windows = strict_json(get(server, "/api/health")[2])["windows"]
    assert every.count('class="result"') == windows and f"{windows} moments for" in every


@pytest.mark.slow
def test_markup_in_file_names_is_shown_as_text(server, tmp_path: Path):
    """A file whose relative path reads ``<script>…</script>.mp4`` (and one named like an ``<img onerror>``)
    appears as text: no element is created from it and nothing in it runs."""
    url = server.url + "?q=colours&k=10"
    dom = _browse(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    paths = [html_mod.unescape(p) for p in re.findall(r'<div class="path">(.*?)</div>', page, flags=re.S)]
    assert SCRIPT_PATH in paths and IMG_NAME in paths, paths
    assert "data-pwned" not in page  # neither name ran
    assert page.count("<script") == 1  # the page's own script only
    assert '<img src="x"' not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.body.dataset.pwned" in page  # escaped text in the DOM
    shot = Path(os.environ.get("CLIPVIP_SCREENSHOT_DIR", tmp_path)) / "serve-markup-names.png"
    _browse(url, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 5000


class _DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3 and 4, messages
    ended by NUL): no port, no extra package."""

    def __init__(self, profile: Path):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()

        def fds() -> None:
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._n = b"", 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._n += 1
        msg = {"id": self._n, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw_msg, self._buf = self._buf.split(b"\0", 1)
                answer = json.loads(raw_msg)
                if answer.get("id") == self._n:
                    if "error" in answer:
                        raise RuntimeError(answer["error"])
                    return answer["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"Chromium did not answer {method} within {timeout} s"
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 16)
                assert chunk, "Chromium exited"
                self._buf += chunk

    def evaluate(self, session: str, expression: str, timeout: float = 60):
        res = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                        session, timeout)
        return res["result"].get("value")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._w)
        os.close(self._r)


def _make_webm(path: Path, seconds: int = 6, fps: int = 6) -> None:
    """A VP8 clip (a codec every Chromium build plays) whose frames differ over time."""
    try:
        av.codec.Codec("libvpx", "w")
    except Exception:  # noqa: BLE001 - PyAV built without libvpx
        pytest.skip("this PyAV build cannot encode VP8 (libvpx), which the browser test needs")
    container = av.open(str(path), "w")
    stream = container.add_stream("libvpx", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(seconds * fps):
        img = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
        img[:, : i % 64] = 200
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.mark.slow
def test_clicking_a_moment_plays_the_video_from_its_start(world, tmp_path: Path):
    """In Chromium (driven over the DevTools pipe): click a later window of a 6 s video; the player opens
    on ``/video/ID#t=start,end`` and its playback position is inside that window, not at 0."""
    (tmp_path / "videos").mkdir()
    _make_webm(tmp_path / "videos" / "long.webm")
    build_index(tmp_path / "videos", tmp_path / "index", world.pipe, progress=False, window=2.0, stride=1.0)
    srv = make_server(SearchService(tmp_path / "index", world.pipe), "127.0.0.1", 0).start()
    browser = _DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": srv.url + "?q=a+grey+frame&k=100&all_windows=true"})
        session = browser.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for _ in range(300):  # until the page (not about:blank) has loaded; bounded
            try:
                if browser.evaluate(session, "document.readyState === 'complete' && location.protocol === 'http:'"):
                    break
            except RuntimeError:  # the execution context was replaced by the navigation: ask again
                pass
            time.sleep(0.05)
        got = json.loads(browser.evaluate(session, """(async () => {
          const until = async (f) => { for (let i = 0; i < 400 && !f(); i++) await new Promise(r => setTimeout(r, 50)); };
          await until(() => document.querySelectorAll('.result').length > 0);
          const li = [...document.querySelectorAll('.result')].find((e) => Number(e.dataset.start) >= 2);
          li.click();
          const v = document.getElementById('video');
          await until(() => v.readyState >= 1 && v.currentTime > 0);
          return JSON.stringify({start: Number(li.dataset.start), end: Number(li.dataset.end), time: v.currentTime,
                                 src: v.src, error: v.error && v.error.code,
                                 open: document.getElementById('player').classList.contains('open')});
        })()"""))
        assert got["open"] and got["error"] is None, got
        assert got["start"] >= 2 and re.search(rf"/video/\d+#t={got['start']:g},{got['end']:g}$", got["src"]), got
        assert got["start"] - 0.01 <= got["time"] <= got["end"] + 0.5, got  # playing from the moment, not from 0
    finally:
        browser.close()
        srv.shutdown()
        srv.server_close()
