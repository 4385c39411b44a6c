"""Vector search backends against a loop-based reference, and FAISS against the exact matmul."""

from __future__ import annotations

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
