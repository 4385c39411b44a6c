"""Nearest-neighbour search over L2-normalised embeddings: exact (one matmul) or FAISS ``IndexFlatIP``.

Both backends are *exact* inner-product search, so they return the same videos in the same order on the
same data; FAISS only changes the speed profile (its own BLAS blocking, no torch needed at query time).
Ties are broken by the lower row so the order is deterministic for either backend.
"""

from __future__ import annotations

import importlib.util
import mmap
import warnings
from typing import Any

import numpy as np
import torch

BACKENDS = ("auto", "exact", "faiss")
# `auto` picks FAISS from this many vectors on. Below it the torch matmul measured as fast or faster than
# IndexFlatIP on our 2-core machine (docs/benchmarks.md, "Search", up to 1M vectors); beyond it the matmul's
# full [Q, N] score matrix gets large, while FAISS keeps only per-query heaps.
FAISS_MIN_ROWS = 5_000_000


def faiss_available() -> bool:
    """Whether the optional ``faiss-cpu`` extra is installed (``pip install clipvip[faiss]``)."""
    return importlib.util.find_spec("faiss") is not None


class ExactSearch:
    """Brute-force inner product: ``scores = queries @ E.T`` then top-k.

    ``embeddings`` may be float32 or float16 (half the memory and half the bytes read per query).
    """

    name = "exact"

    def __init__(self, embeddings: Any):
        arr = np.asarray(embeddings)
        if arr.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {arr.shape}")
        if arr.dtype not in (np.float32, np.float16):
            arr = arr.astype(np.float32)
        self.matrix = _shared_tensor(np.ascontiguousarray(arr))
        self.n, self.dim = arr.shape

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """All scores ``[Q, N]`` as float32.

        A float16 matrix is multiplied as float16: search over one matrix is bound by memory bandwidth,
        so reading half the bytes is ~1.7x faster, while upcasting chunks on the CPU is ~10x slower
        (measured; benchmarks/search.py). These scores carry float16 rounding (about 1e-4 on cosines);
        :meth:`search` re-scores the best candidates in float32.
        """
        if self.matrix.dtype == torch.float32:
            return queries @ self.matrix.T
        return (queries.to(torch.float16) @ self.matrix.T).float()

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores [Q, k] float32, rows [Q, k] int64)``, best first; k is clamped to N."""
        q = _queries(queries, self.dim)
        k = _check_k(k, self.n)
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        with torch.inference_mode():
            qt = torch.from_numpy(q)
            sc = self.scores(qt)
            if self.matrix.dtype == torch.float16:
                # float16 products pick candidates; re-score a margin of them in float32 so the order
                # among near-equal scores is the one of the stored vectors, not of float16 rounding.
                kk = min(self.n, max(4 * k, k + 32))
                cand = torch.topk(sc, kk, dim=1, largest=True, sorted=False).indices
                fine = torch.einsum("qd,qkd->qk", qt, self.matrix[cand].float())
                vals, pos = torch.topk(fine, k, dim=1, largest=True, sorted=True)
                idx = cand.gather(1, pos)
            else:
                vals, idx = torch.topk(sc, k, dim=1, largest=True, sorted=True)
        return _tie_order(vals.numpy(), idx.numpy().astype(np.int64))


class FaissSearch:
    """FAISS ``IndexFlatIP``: exact inner product, same ranking as :class:`ExactSearch`."""

    name = "faiss"

    def __init__(self, embeddings: Any):
        import faiss

        arr = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if arr.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {arr.shape}")
        self.n, self.dim = arr.shape
        self.index = faiss.IndexFlatIP(self.dim)
        if self.n:
            self.index.add(arr)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _queries(queries, self.dim)
        k = _check_k(k, self.n)
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        scores, rows = self.index.search(q, k)
        return _tie_order(scores.astype(np.float32), rows.astype(np.int64))


def _file_map(arr: np.ndarray) -> np.memmap | None:
    """The whole-file memory map that ``arr`` is exactly a view of (same start, same bytes), if any.

    ``np.asarray`` on an index's ``np.load(..., mmap_mode="r")`` array drops the ``memmap`` class, so the
    map is found by walking ``.base``; a slice of a map (other start or size) does not count.
    """
    base = arr
    while base is not None:
        if isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap) and base.filename:
            same = (base.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
                    and base.nbytes == arr.nbytes and base.dtype == arr.dtype and base.shape == arr.shape
                    and base.flags.c_contiguous)
            return base if same else None
        base = getattr(base, "base", None)
    return None


def _shared_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor on ``arr``'s memory, without copying and without torch's "not writable" warning.

    ``torch.from_numpy`` warns on read-only arrays because writing through the tensor would be undefined.
    An index's embeddings are a read-only memory map of a ``.npy`` file that can be gigabytes, so copying
    them into RAM to silence the warning would be wasteful. Instead the file is mapped again copy-on-write
    (``mode="c"``): same pages, shared with the page cache until written, and a write (the engine never
    writes) would go to private memory, never to the index file.
    """
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    fmap = _file_map(arr)
    if fmap is not None:
        cow = np.memmap(fmap.filename, dtype=fmap.dtype, mode="c", offset=fmap.offset, shape=fmap.shape)
        return torch.from_numpy(cow)
    # Any other read-only array (e.g. np.frombuffer over bytes): share it and silence exactly this warning;
    # safe because nothing here writes into self.matrix (every operation makes new tensors).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.from_numpy(arr)


def make_engine(embeddings: Any, backend: str = "auto") -> ExactSearch | FaissSearch:
    """Pick a backend: ``exact``, ``faiss`` (error if not installed), or ``auto`` (FAISS for large indexes)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "faiss":
        if not faiss_available():
            raise ValueError("backend 'faiss' needs the optional extra: pip install 'clipvip[faiss]' (faiss-cpu)")
        return FaissSearch(embeddings)
    if backend == "auto" and faiss_available() and len(embeddings) >= FAISS_MIN_ROWS:
        return FaissSearch(embeddings)
    return ExactSearch(embeddings)


def _queries(queries: Any, dim: int) -> np.ndarray:
    q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries)
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [Q, {dim}], got shape {q.shape}")
    return q


def _check_k(k: int, n: int) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(int(k), n)


def _tie_order(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of results by (score descending, row ascending) so equal scores order identically."""
    order = np.lexsort((rows, -scores), axis=-1) if scores.size else np.zeros_like(rows)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
