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
import threading
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
    index's (else ``ModelMismatchError``). ``backend``: ``exact`` (one matmul over the memory-mapped vector
    file, dead slots masked), ``faiss`` (an IVF index, approximate, built once per index generation and
    cached beside it), or ``auto`` (exact below ``FAISS_MIN_ROWS`` windows). Thread-safe: a server may
    share one engine.
    """

    def __init__(self, index_dir: str | Path, pipeline: Any = None, *, backend: str = "auto",
                 device: str | None = None, tokenizer: Any = None):
        from clipvip.search.store import ModelMismatchError, read_snapshot

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ValueError("backend 'faiss' needs the optional extra: pip install 'clipvip[faiss]' (faiss-cpu)")
        self.index_dir = Path(index_dir)
        self.backend = backend
        self._lock = threading.Lock()
        from clipvip.search.store import commit_token

        self._commit = commit_token(self.index_dir)  # before the read: a commit in between is seen later
        self._snap = read_snapshot(self.index_dir)
        self._token = self._snap.data_version
        self._prepare(self._snap)
        if pipeline is None:
            from clipvip.pipeline import load

            meta = self._snap.meta
            pipeline = load(meta["model_spec"], device=device,
                            tokenizer=tokenizer if tokenizer is not None else meta.get("tokenizer_spec"),
                            num_frames=meta.get("num_frames"), dtype=meta.get("compute_dtype", "fp32"))
        if pipeline.model_id != self._snap.model_id:
            raise ModelMismatchError(
                f"{self.index_dir} was built with model id {self._snap.model_id} ({self._snap.meta.get('model_spec')}), "
                f"but the loaded model has id {pipeline.model_id} ({pipeline.spec}): the weights changed since "
                f"indexing; re-run `clipvip index --rebuild`")
        self.pipeline = pipeline

    # ------------------------------------------------------------------ snapshot
    def _prepare(self, snap: Any) -> None:
        """Per-snapshot search state: the score kernel, video arrays for filters, the IVF cache slot."""
        snap.kernel = ExactSearch(snap.vectors) if len(snap.vectors) else None
        # window i lives in slot i (no dead slots, insertion order): scores need no gather
        snap.identity = len(snap.slots) == len(snap.vectors) and bool((snap.slots == np.arange(len(snap.slots))).all())
        snap.video_paths = snap.videos.paths
        snap.durations = snap.videos.durations
        snap.ivf = None

    @property
    def snapshot(self) -> Any:
        return self._snap

    @property
    def meta(self) -> dict[str, Any]:
        return self._snap.meta

    @property
    def model_id(self) -> str:
        return self._snap.model_id

    @property
    def video_root(self) -> Path:
        return self._snap.video_root

    def __len__(self) -> int:
        """Number of indexed videos in the current snapshot."""
        return len(self._snap.videos)

    @property
    def num_windows(self) -> int:
        return len(self._snap.slots)

    def refresh(self) -> bool:
        """Follow a newer commit of the index if there is one; True if the snapshot moved."""
        from clipvip.search.store import commit_token, read_snapshot

        token = commit_token(self.index_dir)
        if token == self._commit:
            return False
        with self._lock:
            snap = read_snapshot(self.index_dir)
            if snap.model_id != self.pipeline.model_id:
                from clipvip.search.store import ModelMismatchError

                raise ModelMismatchError(f"{self.index_dir} was rebuilt with model id {snap.model_id}; restart with it")
            self._prepare(snap)
            self._snap = snap
            self._commit = token
        return True

    # ------------------------------------------------------------------ search
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
        texts = [queries] if isinstance(queries, str) else list(queries)
        _check_k_range(k)
        snap = self._snap
        vecs = self.pipeline.encode_texts(texts)
        return self._search(snap, vecs, int(k), all_windows, under, min_duration, max_duration)

    def search_vectors(self, vectors: Any, k: int = 10, *, all_windows: bool = False,
                       under: str | bytes | Path | None = None, min_duration: float | None = None,
                       max_duration: float | None = None) -> list[list[Hit]]:
        """:meth:`search` with query embeddings ``[Q, D]`` instead of texts (no model call)."""
        _check_k_range(k)
        return self._search(self._snap, vectors, int(k), all_windows, under, min_duration, max_duration)

    def _video_mask(self, snap: Any, under: Any, lo: float | None, hi: float | None) -> np.ndarray | None:
        if under is None and lo is None and hi is None:
            return None
        mask = np.ones(len(snap.videos), bool)
        if under is not None:
            prefix = _under_prefix(under, snap)
            if prefix:
                mask &= np.array([p == prefix or p.startswith(prefix + b"/") for p in snap.video_paths], bool)
        for bound, name in ((lo, "min_duration"), (hi, "max_duration")):
            if bound is not None and (not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {bound!r}")
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"max_duration {hi} is below min_duration {lo}")
        with np.errstate(invalid="ignore"):
            if lo is not None:
                mask &= snap.durations >= lo
            if hi is not None:
                mask &= snap.durations <= hi
        return mask

    def _search(self, snap: Any, queries: Any, k: int, all_windows: bool, under: Any, lo: Any, hi: Any) -> list[list[Hit]]:
        q = _queries(queries, int(snap.meta["dim"]))
        vmask = self._video_mask(snap, under, lo, hi)
        n_q = q.shape[0]
        if snap.kernel is None or not len(snap.slots):
            return [[] for _ in range(n_q)]
        use_ivf = self.backend == "faiss" or (self.backend == "auto" and faiss_available()
                                              and len(snap.slots) >= FAISS_MIN_ROWS)
        with torch.inference_mode():
            cand = self._ivf_candidates(snap, q, k, vmask) if use_ivf else None
            sc = None if use_ivf else self._window_scores(snap, q, vmask)
            out = []
            for qi in range(n_q):
                if cand is not None:
                    ranked = self._group(snap, cand[qi][0], cand[qi][1], k, all_windows)
                    if len(ranked) < k and len(cand[qi][1]) < len(snap.slots):
                        # IVF found too few (strict filters): rank this query exactly instead
                        row = self._window_scores(snap, q[qi : qi + 1], vmask)[0]
                        ranked = self._rank_row(snap, row, k, all_windows)
                else:
                    ranked = self._rank_row(snap, sc[qi], k, all_windows)
                out.append([self._hit(snap, r + 1, s_, w) for r, (s_, w) in enumerate(ranked)])
            return out

    def _rank_row(self, snap: Any, row: torch.Tensor, k: int, all_windows: bool) -> list[tuple[float, int]]:
        """Best ``k`` windows (or videos, each with its best window) of one query's ``[W]`` scores.

        One hit per video: the top ``4k + 64`` windows are grouped by video; the first window of a video in
        that list is its best window overall (any better one would rank higher). Only when they hold fewer
        than ``k`` videos (a few long videos dominate) are all windows reduced per video.
        """
        n_w = row.shape[0]
        kk = min(n_w, k if all_windows else 4 * k + 64)
        vals, idx = torch.topk(row, kk)
        ranked = self._group(snap, vals.numpy(), idx.numpy(), k, all_windows)
        if all_windows or len(ranked) >= k or kk == n_w:
            return ranked
        best = torch.full((len(snap.videos),), -math.inf).scatter_reduce(0, torch.from_numpy(snap.video_index), row, "amax")
        vv, vi = torch.topk(best, min(k, len(snap.videos)))
        r = row.numpy()
        out = []
        for v, i in zip(vv.tolist(), vi.tolist()):
            if v == -math.inf:
                break
            a, b = int(snap.offsets[i]), int(snap.offsets[i + 1])
            w = a + int(r[a:b].argmax())
            out.append((float(r[w]), w))
        out.sort(key=lambda t: (-t[0], int(snap.video_index[t[1]])))
        return out

    @staticmethod
    def _group(snap: Any, scores: np.ndarray, windows: np.ndarray, k: int, all_windows: bool) -> list[tuple[float, int]]:
        """Candidates (best first, ``-inf``/negative positions = none) → up to ``k`` (score, window)."""
        out: list[tuple[float, int]] = []
        seen: set[int] = set()
        for s_, w in zip(scores.tolist(), windows.tolist()):
            if w < 0 or s_ == -math.inf:
                continue
            if not all_windows:
                v = int(snap.video_index[w])
                if v in seen:
                    continue
                seen.add(v)
            out.append((float(s_), int(w)))
            if len(out) == k:
                break
        out.sort(key=lambda t: (-t[0], int(snap.video_index[t[1]]), t[1]))
        return out

    def _window_scores(self, snap: Any, q: np.ndarray, vmask: np.ndarray | None) -> torch.Tensor:
        """Exact scores of every live window ``[Q, W]`` (one matmul over the mapped file); filtered ones ``-inf``."""
        full = snap.kernel.scores(torch.from_numpy(q))  # [Q, slots]
        sc = full if snap.identity else full[:, torch.from_numpy(snap.slots)]  # dead slots never gathered
        if vmask is not None:
            sc = sc.masked_fill(~torch.from_numpy(vmask[snap.video_index]), -math.inf)
        return sc

    def _ivf_candidates(self, snap: Any, q: np.ndarray, k: int, vmask: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, IVF's best windows ``(scores, window positions)`` with filtered ones removed."""
        if snap.ivf is None:
            with self._lock:
                if snap.ivf is None:
                    snap.ivf = IVFSearch.cached(snap)
        n_w = len(snap.slots)
        want = min(n_w, max(64, 16 * k) if vmask is None else max(256, 64 * k))
        scores, pos = snap.ivf.search(q, want)
        out = []
        for qi in range(q.shape[0]):
            keep = pos[qi] >= 0
            if vmask is not None:
                keep &= vmask[snap.video_index[np.maximum(pos[qi], 0)]]
            out.append((scores[qi][keep], pos[qi][keep]))
        return out

    def _hit(self, snap: Any, rank: int, score: float, w: int) -> Hit:
        from clipvip.search.store import escape_path

        v = snap.videos[int(snap.video_index[w])]
        return Hit(rank=rank, score=float(score), video_id=v.id, window_id=int(snap.window_ids[w]),
                   path=escape_path(v.path), relpath=v.path, start=float(snap.starts[w]), end=float(snap.ends[w]),
                   duration=v.duration, thumb=snap.thumbs[w] is not None)

    # ------------------------------------------------------------------ files
    def video_file(self, video_id: int) -> VideoFile:
        """The file of an indexed video; ``KeyError`` if ``video_id`` is not in the current snapshot."""
        import os

        from clipvip.search.store import escape_path

        snap = self._snap
        v = snap.videos[snap.videos.position(int(video_id))]
        root = snap.video_root
        return VideoFile(video_id=v.id, root=root, path=Path(os.fsdecode(os.path.join(snap.meta["video_root"], v.path))),
                         relpath=v.path, display=escape_path(v.path), size=v.size, mtime_ns=v.mtime_ns,
                         duration=v.duration)

    def thumb_file(self, window_id: int) -> Path | None:
        """The JPEG thumbnail of a window (None if it has none); ``KeyError`` for an unknown window."""
        snap = self._snap
        name = snap.thumbs[snap.window_position(int(window_id))]
        return None if name is None else self.index_dir / "thumbs" / name


class IVFSearch:
    """FAISS ``IndexIVFFlat`` (inner product) over the live windows of one index generation.

    Approximate: it probes ``nprobe`` of ``nlist`` clusters. Built once per (generation, slots) and
    saved as ``ivf-<generation>-<slots>.faiss`` beside the index (atomically; a read-only index directory
    just keeps it in memory), so a server restart does not retrain it.
    """

    def __init__(self, index: Any, nprobe: int):
        self.index = index
        self.index.nprobe = nprobe

    @staticmethod
    def nlist_for(n: int) -> int:
        # ~4 sqrt(N) lists (FAISS's usual range), at most 1024 so that training stays seconds, and at
        # least 39 training points per list (FAISS warns below that)
        return max(1, min(int(4 * math.sqrt(n)), 1024, n // 39 if n >= 39 else 1))

    @classmethod
    def build(cls, vectors: np.ndarray, nprobe: int | None = None, seed: int = 0) -> "IVFSearch":
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        nlist = cls.nlist_for(n)
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train = x if n <= 64 * nlist else x[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(train)
        index.add(x)
        return cls(index, nprobe or max(1, nlist // 16))

    @classmethod
    def cached(cls, snap: Any) -> "IVFSearch":
        import faiss

        from clipvip.atomic import atomic_write_bytes

        path = snap.root / f"ivf-{snap.generation:06d}-{len(snap.vectors)}-{len(snap.slots)}.faiss"
        if path.is_file():
            try:
                index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
                if index.ntotal == len(snap.slots):
                    return cls(index, max(1, index.nlist // 16))
            except Exception:  # noqa: BLE001 - a bad cache is rebuilt, never trusted
                pass
        ivf = cls.build(np.asarray(snap.vectors)[snap.slots])
        try:
            atomic_write_bytes(path, faiss.serialize_index(ivf.index).tobytes())
        except OSError:
            pass
        return ivf

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        return scores.astype(np.float32), rows.astype(np.int64)


def _check_k_range(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")


def _under_prefix(under: Any, snap: Any) -> bytes:
    """``under`` as a relative path prefix (bytes, no trailing slash); ``b""`` = the whole root."""
    import os

    raw = os.fsencode(under)
    root = snap.meta["video_root"]
    if os.path.isabs(raw):
        rel = os.path.relpath(os.path.normpath(raw), root)
        if rel == b".." or rel.startswith(b"../"):
            raise ValueError(f"under={os.fsdecode(raw)!r} is not inside the indexed folder {os.fsdecode(root)}")
    else:
        rel = os.path.normpath(raw)
        if rel == b".." or rel.startswith(b"../"):
            raise ValueError(f"under={os.fsdecode(raw)!r} leaves the indexed folder")
    return b"" if rel == b"." else rel.rstrip(b"/")
