"""Vector search backends against a loop-based reference, and FAISS against the exact matmul."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pytest

from clipvip.search.engine import ExactSearch, FaissSearch, faiss_available, make_engine


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_topk(emb: np.ndarray, q: np.ndarray, k: int) -> tuple[list[float], list[int]]:
    """Dot products one by one in float64, sorted by (score desc, row asc): no BLAS, no torch."""
    scored = []
    for row in range(emb.shape[0]):
        s = sum(float(a) * float(b) for a, b in zip(emb[row], q))
        scored.append((-s, row))
    scored.sort()
    return [-s for s, _ in scored[:k]], [r for _, r in scored[:k]]


def test_exact_matches_loop_reference():
    rng = np.random.default_rng(0)
    emb, queries = _unit(rng, 200, 16), _unit(rng, 3, 16)
    scores, rows = ExactSearch(emb).search(queries, 7)
    assert scores.shape == rows.shape == (3, 7)
    for qi in range(3):
        ref_scores, ref_rows = _reference_topk(emb, queries[qi], 7)
        assert rows[qi].tolist() == ref_rows
        np.testing.assert_allclose(scores[qi], ref_scores, atol=1e-5)


def test_planted_vector_ranks_first():
    rng = np.random.default_rng(1)
    emb = _unit(rng, 500, 32)
    target = 137
    query = emb[target] + 0.05 * _unit(rng, 1, 32)[0]
    scores, rows = make_engine(emb, "exact").search(query, 5)
    assert rows[0, 0] == target
    assert np.all(np.diff(scores[0]) <= 0)


def test_float16_storage_ranks_like_reference_on_rounded_vectors():
    rng = np.random.default_rng(2)
    emb16 = _unit(rng, 300, 16).astype(np.float16)
    q = _unit(rng, 1, 16)[0]
    scores, rows = ExactSearch(emb16).search(q, 10)
    ref_scores, ref_rows = _reference_topk(emb16.astype(np.float32), q, 10)
    assert rows[0].tolist() == ref_rows
    np.testing.assert_allclose(scores[0], ref_scores, atol=1e-5)  # final scores are float32 re-scores


def test_float16_rescoring_matches_float32_search_of_the_rounded_vectors():
    rng = np.random.default_rng(5)
    emb16 = _unit(rng, 3000, 64).astype(np.float16)
    queries = _unit(rng, 25, 64)
    s16, r16 = ExactSearch(emb16).search(queries, 10)
    s32, r32 = ExactSearch(emb16.astype(np.float32)).search(queries, 10)
    np.testing.assert_array_equal(r16, r32)
    np.testing.assert_allclose(s16, s32, atol=1e-5)


def test_ties_are_ordered_by_row():
    emb = np.zeros((6, 4), np.float32)
    emb[:, 0] = [0.5, 1.0, 0.5, 1.0, 0.2, 1.0]
    scores, rows = ExactSearch(emb).search(np.array([1, 0, 0, 0], np.float32), 4)
    assert rows[0].tolist() == [1, 3, 5, 0]


def test_k_is_clamped_and_validated():
    emb = _unit(np.random.default_rng(3), 4, 8)
    _, rows = ExactSearch(emb).search(emb[0], 50)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k must be"):
        ExactSearch(emb).search(emb[0], 0)
    with pytest.raises(ValueError, match=r"\[Q, 8\]"):
        ExactSearch(emb).search(np.ones(5, np.float32), 1)
    with pytest.raises(ValueError, match="backend"):
        make_engine(emb, "annoy")


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (optional extra clipvip[faiss])")
def test_faiss_gives_the_same_results_as_exact():
    rng = np.random.default_rng(4)
    emb, queries = _unit(rng, 5000, 64), _unit(rng, 20, 64)
    s1, r1 = ExactSearch(emb).search(queries, 10)
    s2, r2 = FaissSearch(emb).search(queries, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert isinstance(make_engine(emb, "faiss"), FaissSearch)


def _mapped_file(address: int) -> str | None:
    """The file backing virtual ``address`` in this process (Linux /proc/self/maps), or None."""
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_read_only_memory_map_is_shared_without_warning_or_copy(tmp_path):
    """An index's embeddings arrive as a read-only np.load memory map (through np.asarray, as the search
    service passes them): no "not writable" warning, and the matrix still lives in the file's pages."""
    import warnings

    emb = _unit(np.random.default_rng(4), 64, 8)
    np.save(tmp_path / "emb.npy", emb)
    mapped = np.load(tmp_path / "emb.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = ExactSearch(np.asarray(mapped))
        sliced = ExactSearch(mapped[3:])  # not the whole map: shared too, the warning silenced precisely
    assert _mapped_file(engine.matrix.data_ptr()) == str((tmp_path / "emb.npy").resolve())
    assert _mapped_file(sliced.matrix.data_ptr()) == str((tmp_path / "emb.npy").resolve())
    scores, rows = engine.search(emb[10], 1)
    assert rows.tolist() == [[10]]
    assert np.array_equal(np.load(tmp_path / "emb.npy"), emb)  # the file is untouched


# ---------------------------------------------------------------------- SearchEngine over a store
from types import SimpleNamespace  # noqa: E402

from clipvip.search.engine import Hit, SearchEngine, format_span  # noqa: E402
from clipvip.search.store import IndexWriter  # noqa: E402

D = 16


def _store(tmp_path: Path, videos: dict[bytes, tuple[float, np.ndarray]]) -> Path:
    d = tmp_path / "idx"
    meta = {"model_id": "m1", "dim": D, "video_root": b"/videos", "dtype": "float32"}
    with IndexWriter(d, meta) as w:
        for path, (duration, vecs) in videos.items():
            w.replace_videos([{"path": path, "size": 1, "mtime_ns": 1, "mode": 0, "duration": duration,
                               "windows": [(5.0 * i, 5.0 * i + 10.0, f"t{len(path)}{i}.jpg") for i in range(len(vecs))],
                               "vectors": vecs}])
    return d


def _fake_pipeline() -> SimpleNamespace:
    return SimpleNamespace(model_id="m1", spec="fake")


def _reference(videos: dict, q: np.ndarray, k: int, all_windows: bool, keep=lambda p, d: True) -> list[tuple]:
    """Loop reference in float64: (path, start) of the best k windows, or of each video's best window."""
    rows = []
    for path in sorted(videos):
        duration, vecs = videos[path]
        if not keep(path, duration):
            continue
        scores = [sum(float(a) * float(b) for a, b in zip(v, q)) for v in vecs]
        if all_windows:
            rows += [(-s, path, 5.0 * i) for i, s in enumerate(scores)]
        else:
            i = int(np.argmax(scores))
            rows.append((-scores[i], path, 5.0 * i))
    rows.sort()
    return [(p, s) for _, p, s in rows[:k]]


def test_engine_ranks_videos_by_their_best_window_and_masks_dead_slots(tmp_path: Path):
    rng = np.random.default_rng(1)
    videos = {b"a.mp4": (30.0, _unit(rng, 4, D)), b"b.mp4": (5.0, _unit(rng, 1, D)),
              b"sub/c.mp4": (60.0, _unit(rng, 6, D)), b"sub/d\xe9.mp4": (12.0, _unit(rng, 2, D))}
    d = _store(tmp_path, videos)
    # replace a (its old windows become dead slots, which must never be returned) and plant a query on them
    stale = videos[b"a.mp4"][1]
    videos[b"a.mp4"] = (30.0, _unit(rng, 3, D))
    with IndexWriter(d, {"model_id": "m1", "dim": D, "video_root": b"/videos"}) as w:
        w.replace_videos([{"path": b"a.mp4", "size": 2, "mtime_ns": 2, "mode": 0, "duration": 30.0,
                           "windows": [(5.0 * i, 5.0 * i + 10.0, None) for i in range(3)], "vectors": videos[b"a.mp4"][1]}])
    eng = SearchEngine(d, _fake_pipeline())
    assert (len(eng), eng.num_windows, eng.snapshot.dead) == (4, 12, 4)
    queries = np.concatenate([_unit(rng, 3, D), stale[:1]])
    for all_windows in (False, True):
        hits = eng.search_vectors(queries, k=20, all_windows=all_windows)
        for q, h in zip(queries, hits):
            assert [(x.relpath, x.start) for x in h] == _reference(videos, q, 20, all_windows)
            assert [x.rank for x in h] == list(range(1, len(h) + 1))
    # filters
    for kw, keep in [({"under": "sub"}, lambda p, dur: p.startswith(b"sub/")),
                     ({"under": "/videos/sub/"}, lambda p, dur: p.startswith(b"sub/")),
                     ({"min_duration": 12}, lambda p, dur: dur >= 12),
                     ({"min_duration": 6, "max_duration": 40}, lambda p, dur: 6 <= dur <= 40)]:
        got = eng.search_vectors(queries[:1], k=10, **kw)[0]
        assert [(x.relpath, x.start) for x in got] == _reference(videos, queries[0], 10, False, keep), kw
    for bad in ({"under": "../etc"}, {"under": "/etc"}, {"min_duration": -1}, {"min_duration": 5, "max_duration": 1}):
        with pytest.raises(ValueError):
            eng.search_vectors(queries[:1], k=3, **bad)
    with pytest.raises(ValueError, match="k must be"):
        eng.search_vectors(queries[:1], k=0)


def test_hits_files_and_refresh(tmp_path: Path):
    rng = np.random.default_rng(2)
    videos = {b"x\ny.mp4": (20.0, _unit(rng, 3, D))}
    d = _store(tmp_path, videos)
    eng = SearchEngine(d, _fake_pipeline())
    hit = eng.search_vectors(videos[b"x\ny.mp4"][1][2:3], k=1, all_windows=True)[0][0]
    assert isinstance(hit, Hit) and hit.path == "x\\ny.mp4" and hit.relpath == b"x\ny.mp4"
    assert (hit.start, hit.end) == (10.0, 20.0) and hit.score == pytest.approx(1.0, abs=1e-5)
    as_json = json.dumps(hit.to_dict(), allow_nan=False)
    assert json.loads(as_json)["span"] == "00:00:10\u201300:00:20"
    vf = eng.video_file(hit.video_id)
    assert vf.path == Path("/videos/x\ny.mp4") and vf.root == Path("/videos") and (vf.size, vf.mtime_ns) == (1, 1)
    assert eng.thumb_file(hit.window_id) == d / "thumbs" / "t72.jpg"  # name planted by _store: t{len(path)}{window}
    with pytest.raises(KeyError):
        eng.video_file(999)
    assert not eng.refresh()
    with IndexWriter(d, {"model_id": "m1", "dim": D, "video_root": b"/videos"}) as w:
        w.delete_videos([b"x\ny.mp4"])
    assert eng.refresh() and len(eng) == 0
    assert eng.search_vectors(videos[b"x\ny.mp4"][1][:1], k=3) == [[]]
    assert format_span(2465.2, 2475.0) == "00:41:05\u201300:41:15"


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
def test_ivf_backend_finds_planted_windows_and_is_cached_per_generation(tmp_path: Path):
    rng = np.random.default_rng(3)
    centers = _unit(rng, 20, D)
    videos = {}
    for v in range(200):
        x = centers[rng.integers(0, 20, 5)] + 0.15 * rng.standard_normal((5, D)).astype(np.float32)
        videos[f"v{v:03d}.mp4".encode()] = (25.0, x / np.linalg.norm(x, axis=1, keepdims=True))
    d = _store(tmp_path, videos)
    exact = SearchEngine(d, _fake_pipeline(), backend="exact")
    ivf = SearchEngine(d, _fake_pipeline(), backend="faiss")
    q = np.stack([videos[b"v007.mp4"][1][2], videos[b"v150.mp4"][1][4]])
    for a, b in zip(exact.search_vectors(q, 10, all_windows=True), ivf.search_vectors(q, 10, all_windows=True)):
        assert (a[0].relpath, a[0].start) == (b[0].relpath, b[0].start)
        assert len({(h.relpath, h.start) for h in a} & {(h.relpath, h.start) for h in b}) >= 7
    assert len(list(d.glob("ivf-*.faiss"))) == 1


def test_one_hit_per_video_when_one_long_video_fills_the_top_windows(tmp_path: Path):
    """A 300-window video that matches the query better than anything else must not hide the others."""
    rng = np.random.default_rng(4)
    q = _unit(rng, 1, D)[0]
    big = q + 0.05 * rng.standard_normal((300, D)).astype(np.float32)
    videos = {b"big.mp4": (1500.0, big / np.linalg.norm(big, axis=1, keepdims=True))}
    for i in range(6):
        videos[f"s{i}.mp4".encode()] = (10.0, _unit(rng, 2, D))
    eng = SearchEngine(_store(tmp_path, videos), _fake_pipeline())
    got = eng.search_vectors(q[None], k=5)[0]
    assert [(h.relpath, h.start) for h in got] == _reference(videos, q, 5, False)
    assert len({h.video_id for h in got}) == 5 and got[0].relpath == b"big.mp4"
