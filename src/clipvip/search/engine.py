"""Text → ranked moments of an index (:class:`SearchEngine`, :class:`Hit`), and the vector kernels under it.

:class:`SearchEngine` is the one search API: the CLI ``search`` verb and the HTTP server call it. It reads
a consistent snapshot of the index (``clipvip.search.store``), embeds the query with the index's model,
scores every live window (dead slots masked), groups windows by video (one hit per video, its best
window, unless ``all_windows``) and applies the metadata filters (``under``, duration range).

The kernels: :class:`ExactSearch` (one matmul + top-k) and :class:`FaissSearch` (``IndexFlatIP``) are
both *exact* inner-product search and return the same rows in the same order; ties are broken by the
lower row so the order is deterministic for either backend.
"""

from __future__ import annotations

import importlib.util
import math
import mmap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAX_K = 100
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


# ---------------------------------------------------------------------- the search API
@dataclass(frozen=True)
class Hit:
    """One search result: a window (moment) of a video, with its score.

    ``path`` is for *display* only: the relative path decoded as UTF-8 with undecodable bytes shown as
    ``\\xNN`` and control characters (newline, tab, ...) escaped, so it is always printable, valid JSON and
    safe to put in a web page as text. ``relpath`` is the raw relative path (bytes, exactly as the file
    system spells it): use it, never ``path``, to reach the file (see :meth:`SearchEngine.video_file`).
    """

    rank: int  # 1-based
    score: float  # cosine similarity, always finite
    video_id: int  # stable id of the video in this index (survives compaction and re-runs)
    window_id: int  # stable id of the window (changes only when the video is re-encoded)
    path: str  # escaped relative path, for display
    relpath: bytes  # raw relative path under the video root, for file access
    start: float  # window start, seconds from the start of the video
    end: float  # window end, seconds
    duration: float | None  # duration of the whole video (s), None when the container does not say
    thumb: bool  # whether the window has a thumbnail (SearchEngine.thumb_file(window_id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no bytes, no NaN): ``{rank, score, video_id, window_id, path, start, end, duration,
        thumb, span}`` where ``span`` is the printable ``HH:MM:SS–HH:MM:SS``."""
        return {"rank": self.rank, "score": round(float(self.score), 6), "video_id": self.video_id,
                "window_id": self.window_id, "path": self.path, "start": round(self.start, 3),
                "end": round(self.end, 3), "duration": self.duration, "thumb": self.thumb,
                "span": format_span(self.start, self.end)}


@dataclass(frozen=True)
class VideoFile:
    """Where an indexed video lives and what it looked like when it was indexed.

    A server must re-check on every request that ``os.path.realpath(path)`` is still inside
    ``os.path.realpath(root)`` and that ``os.stat(path)`` still has ``size`` and ``mtime_ns``: the folder
    may have changed since indexing (a re-pointed symlink, an edited file).
    """

    video_id: int
    root: Path  # the indexed video folder (absolute)
    path: Path  # root / relpath (absolute; may be a symlink)
    relpath: bytes
    display: str  # escaped relative path
    size: int
    mtime_ns: int
    duration: float | None


def format_span(start: float, end: float) -> str:
    """``00:41:05–00:41:15`` (hours always shown, seconds floored/ceiled to whole seconds)."""
    return f"{_hms(start)}\u2013{_hms(math.ceil(end - 1e-9))}"


def _hms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class SearchEngine:
    """Search an index directory built by ``clipvip index``.

    ``pipeline`` defaults to the model recorded in the index, loaded once; its ``model_id`` must be the
    index's (else ``ModelMismatchError``). ``backend``: ``exact`` (default behaviour of ``auto`` below
    5M windows: one matmul over the memory-mapped vector file, dead slots masked) or ``faiss`` (an IVF
    index cached per index generation; approximate). Thread-safe: a server may share one engine.
    """

    def __init__(self, index_dir: str | Path, pipeline: Any = None, *, backend: str = "auto",
                 device: str | None = None, tokenizer: Any = None):
        raise NotImplementedError("SearchEngine is being implemented (issue 10)")

    def __len__(self) -> int:
        """Number of indexed videos in the current snapshot."""
        raise NotImplementedError

    @property
    def num_windows(self) -> int:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Follow a newer commit of the index if there is one (cheap: one SQLite query); True if it moved."""
        raise NotImplementedError

    def search(self, queries: str | Sequence[str], k: int = 10, *, all_windows: bool = False,
               under: str | bytes | Path | None = None, min_duration: float | None = None,
               max_duration: float | None = None) -> list[list[Hit]]:
        """Top-``k`` hits per query, best first (one list per query, also for a single ``str``).

        One hit per video (its best window) unless ``all_windows``. ``under``: only videos whose path is
        inside this folder (relative to the video root, or absolute inside it). ``min_duration`` /
        ``max_duration``: bounds on the video's duration in seconds (videos of unknown duration are
        excluded when a bound is given). Raises ``ValueError`` for an empty/too long query, a ``k``
        outside 1..MAX_K or a bad filter.
        """
        raise NotImplementedError

    def search_vectors(self, vectors: Any, k: int = 10, **filters: Any) -> list[list[Hit]]:
        """:meth:`search` with query embeddings ``[Q, D]`` instead of texts (no model call)."""
        raise NotImplementedError

    def video_file(self, video_id: int) -> VideoFile:
        """The file of an indexed video; ``KeyError`` if ``video_id`` is not in the current snapshot."""
        raise NotImplementedError

    def thumb_file(self, window_id: int) -> Path | None:
        """The JPEG thumbnail of a window (None if it has none); ``KeyError`` for an unknown window."""
        raise NotImplementedError
