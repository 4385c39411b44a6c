"""``clipvip serve`` over real HTTP: API, limits, no path traversal, concurrency, and the page in Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import clipvip
from clipvip.search.index import VideoIndex, build_index
from clipvip.search.serve import make_server
from clipvip.search.service import SearchService
from test_pipeline import shared_tokenizer
from test_search_index import GOOD, make_folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    pipe = clipvip.load("clipvip-tiny", device="cpu", tokenizer=shared_tokenizer())
    videos = make_folder(tmp / "videos", GOOD, bad=True)
    (tmp / "secret.txt").write_text("outside the index")
    build_index(videos, tmp / "index", pipe, progress=False)
    srv = make_server(SearchService(tmp / "index", pipe), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw GET (http.client sends the path exactly as given: no client-side ``..`` normalisation)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_binds_localhost_and_reports_health(server):
    assert server.server_address[0] == "127.0.0.1"
    status, headers, body = get(server, "/api/health")
    data = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert data["status"] == "ok" and data["videos"] == len(GOOD) and data["dim"] == 32


def test_search_returns_ranked_results_with_media_urls(server):
    status, _, body = get(server, "/api/search?q=a+red+square+moves&k=3")
    data = json.loads(body)
    assert status == 200 and data["count"] == 3 and data["k"] == 3
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in data["results"]] == [1, 2, 3]
    # the scores are the cosine similarities of the text and the stored video rows
    svc = server.service
    text = svc.pipeline.encode_texts(["a red square moves"]).numpy()[0]
    for r in data["results"]:
        assert r["path"] == svc.index.entries[r["row"]].path
        assert r["score"] == pytest.approx(float(np.asarray(svc.index.embeddings[r["row"]]) @ text), abs=1e-5)
    first = data["results"][0]
    status, headers, thumb = get(server, first["thumb_url"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and thumb[:2] == b"\xff\xd8"
    status, _, video = get(server, first["video_url"])
    assert status == 200 and video == (svc.index.video_root / first["path"]).read_bytes()
    status, headers, part = get(server, first["video_url"], {"Range": "bytes=10-19"})
    assert status == 206 and part == video[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(video)}"


@pytest.mark.parametrize("query, status, fragment", [
    ("/api/search?q=", 400, "empty"),
    ("/api/search?k=3", 400, "empty"),
    ("/api/search?q=%20%20", 400, "empty"),
    ("/api/search?q=" + "a" * 1001, 413, "1000"),
    ("/api/search?q=dog&k=0", 400, "1..100"),
    ("/api/search?q=dog&k=101", 400, "1..100"),
    ("/api/search?q=dog&k=ten", 400, "1..100"),
    ("/api/search?q=dog&k=-1", 400, "1..100"),
])
def test_bad_queries_get_4xx_with_a_json_reason(server, query, status, fragment):
    got, headers, body = get(server, query)
    assert got == status and headers["Content-Type"] == "application/json"
    assert fragment in json.loads(body)["error"]


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/thumbs/../index.json", "/thumbs/..%2findex.json", "/thumbs/%2e%2e/manifest.json",
    "/video/../../secret.txt", "/video/..%2F..%2Fsecret.txt", "/video/%2e%2e%2fsecret.txt",
    "/video/0/../../secret.txt", "/videos/a.mp4", "/video/a.mp4", "/static/../../secret.txt",
    "/video/999", "/thumbs/999.jpg", "/video/-1", "/index.json", "/manifest.json",
])
def test_only_files_of_the_index_are_served(server, path):
    status, _, body = get(server, path)
    assert status in (400, 404)
    assert b"outside the index" not in body and b"model_id" not in body


def test_fifty_concurrent_queries_all_succeed(server):
    queries = [f"video number {i % 7}" for i in range(50)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda q: get(server, "/api/search?q=" + q.replace(" ", "+") + "&k=5"), queries))
    assert [a[0] for a in answers] == [200] * 50
    by_query: dict[str, list] = {}
    for q, (_, _, body) in zip(queries, answers):
        rows = [r["row"] for r in json.loads(body)["results"]]
        assert len(rows) == 5
        by_query.setdefault(q, []).append(rows)
    assert all(all(r == runs[0] for r in runs) for runs in by_query.values())  # same query, same answer


def test_service_ranks_a_planted_embedding_first(server):
    """Plant the text's own embedding as a video row: it must come back first with score 1."""
    svc = server.service
    text = svc.pipeline.encode_texts(["a planted query"]).numpy()[0]
    emb = np.array(svc.index.embeddings)
    emb[2] = text
    planted = SearchService.__new__(SearchService)
    planted.index, planted.pipeline = svc.index, svc.pipeline
    from clipvip.search.engine import make_engine

    planted.engine = make_engine(emb, "exact")
    res = planted.search("a planted query", k=5)
    assert res[0]["row"] == 2 and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="1..100"):
        planted.search("a planted query", k=0)
    both = planted.search_many(["another text", "a planted query"], k=3)
    for batch, text in zip(both, ["another text", "a planted query"]):
        alone = planted.search(text, 3)
        assert [r["row"] for r in batch] == [r["row"] for r in alone]
        assert [r["score"] for r in batch] == pytest.approx([r["score"] for r in alone], abs=1e-5)


def test_search_cli_prints_the_same_ranking(server, bpe_path: Path, capsys):
    from clipvip.cli import main

    index_dir = str(server.service.index.root)
    capsys.readouterr()
    # the index was built with a tokenizer object from load_tokenizer, which records its source: no flag needed
    assert main(["search", index_dir, "a green dot", "-k", "3", "--json"]) == 0
    assert [r["path"] for r in json.loads(capsys.readouterr().out)["results"]] == [
        r["path"] for r in server.service.search("a green dot", 3)]
    assert main(["search", index_dir, "a green dot", "-k", "3", "--json", "--tokenizer", str(bpe_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in printed["results"]] == [r["path"] for r in server.service.search("a green dot", 3)]
    assert main(["search", index_dir, "a green dot", "-k", "3", "--tokenizer", str(bpe_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].endswith(printed["results"][0]["path"])
    assert main(["search", index_dir, "", "--tokenizer", str(bpe_path)]) == 2
    assert "empty" in capsys.readouterr().err


def test_serve_cli_usage_errors(tmp_path: Path, capsys):
    from clipvip.cli import main

    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a clipvip index" in capsys.readouterr().err


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not installed (Debian package `chromium`; .ci/run installs it)")


@pytest.mark.slow
def test_page_renders_results_in_headless_chromium(server, tmp_path: Path):
    exe = _chromium()
    url = server.url + "?q=a+blue+block&k=4"
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
            "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="result"') == 4, html[-3000:]
    assert "4 results for" in html and 'data-rank="1"' in html
    api = json.loads(get(server, "/api/search?q=a+blue+block&k=4")[2])["results"]
    assert re.findall(r'data-path="([^"]+)"', html) == [r["path"] for r in api]  # same ranking as the API
    shot = Path(os.environ.get("CLIPVIP_SCREENSHOT_DIR", tmp_path)) / "serve-screenshot.png"
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 5000
