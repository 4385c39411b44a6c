"""Build and update the search index of a video folder: moments (windows), crash-safe, incremental.

Every video is cut into overlapping windows (``window`` seconds every ``stride`` seconds; a video no
longer than one window is one window covering all of it; the last window is aligned to the end so the
tail is covered). Each window is ``num_frames`` frames sampled uniformly inside it and fetched by seeking
(``clipvip.data.video``), so a one-hour recording costs its windows' frames, not a full decode.

The work is split so the model never waits for the decoder: ``workers`` threads open each video, decode
*and* transform its windows (resize, normalise) and hand ready ``[n, T, 3, S, S]`` tensors over a bounded
queue; the calling thread only stacks and encodes. A video is committed when all its windows are
encoded, in one transaction with the rest of the batch (``clipvip.search.store``): a re-encoded video's
old windows disappear exactly when its new ones appear, and a kill at any instant loses at most the
batch in flight. A re-run encodes only new and changed files (size or mtime changed; failures also when
their permission bits changed), drops vanished ones and compacts the vector file when dead slots pile up.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipvip.atomic import atomic_write_bytes, atomic_write_json
from clipvip.search.store import (
    DB_NAME,
    FailureRow,
    IndexFormatError,
    IndexLockedError,
    IndexWriter,
    ModelMismatchError,
    escape_path,
)

__all__ = ["build_index", "IndexStats", "plan_windows", "scan_videos", "IndexFormatError", "ModelMismatchError",
           "IndexLockedError", "VIDEO_EXTENSIONS", "DEFAULT_WINDOW", "DEFAULT_STRIDE"]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
    ".ogv", ".gif",
})
_EXT_BYTES = frozenset(e.encode() for e in VIDEO_EXTENSIONS)
DEFAULT_WINDOW = 10.0
DEFAULT_STRIDE = 5.0


@dataclass
class IndexStats:
    """What one ``build_index`` run did (also written to ``report.json``)."""

    found: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    encoded: int = 0  # videos
    windows: int = 0  # windows encoded by this run
    commits: int = 0
    compactions: int = 0
    total: int = 0  # videos in the index at the end
    total_windows: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # {path (escaped), reason}
    encoded_paths: list[str] = field(default_factory=list)  # escaped
    seconds: float = 0.0
    model_seconds: float = 0.0  # time the model thread spent in the model

    @property
    def failed(self) -> int:
        return len(self.failures)


# ---------------------------------------------------------------------- windows
def plan_windows(duration: float, window: float = DEFAULT_WINDOW, stride: float = DEFAULT_STRIDE) -> list[tuple[float, float]]:
    """``[(start, end)]`` seconds: ``window``-long spans every ``stride`` s, the last one ending at the end.

    A video no longer than one window (or of unknown/zero duration) is a single window over all of it.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    d = float(duration) if duration and np.isfinite(duration) and duration > 0 else 0.0
    if d <= window + 1e-6:
        return [(0.0, round(d, 3))]
    spans = []
    start = 0.0
    while start + window < d - 1e-6:
        spans.append((round(start, 3), round(start + window, 3)))
        start += stride
    last = round(d - window, 3)
    if not spans or spans[-1][0] < last - 1e-6:
        spans.append((last, round(d, 3)))
    return spans


# ---------------------------------------------------------------------- scanning
def scan_videos(video_dir: str | Path) -> tuple[dict[bytes, os.stat_result], list[tuple[bytes, str]]]:
    """Video files under ``video_dir`` → ``({relpath bytes: stat}, [(relpath bytes, reason)])``.

    Recursive, by extension, hidden files and folders skipped, symlinked folders not followed. Names are
    handled as raw bytes, so any name the OS allows works. Entries that cannot be used (dangling
    symlinks, symlink loops, unreadable folders, non-regular files) are returned with a reason.
    """
    root = os.fsencode(os.path.abspath(video_dir))
    if not os.path.isdir(root):
        raise IndexFormatError(f"{os.fsdecode(root)}: not a directory")
    found: dict[bytes, os.stat_result] = {}
    problems: list[tuple[bytes, str]] = []

    def rel(p: bytes) -> bytes:
        return os.path.relpath(p, root)

    def onerror(exc: OSError) -> None:
        problems.append((rel(os.fsencode(exc.filename)), f"cannot list folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(b"."))
        for name in sorted(filenames):
            if name.startswith(b".") or os.path.splitext(name)[1].lower() not in _EXT_BYTES:
                continue
            full = os.path.join(dirpath, name)
            r = rel(full)
            try:
                st = os.stat(full)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    reason = "symlink loop (the link resolves to itself)"
                elif exc.errno == errno.ENOENT and os.path.islink(full):
                    reason = f"dangling symlink (points to {escape_path(os.readlink(full))}, which does not exist)"
                else:
                    reason = f"cannot stat: {exc.strerror or exc}"
                problems.append((r, reason))
                continue
            if not stat_mod.S_ISREG(st.st_mode):
                problems.append((r, "not a regular file"))
                continue
            found[r] = st
    return found, problems


def thumb_name(relpath: bytes, st: os.stat_result, start: float) -> str:
    """Thumbnail file of one window: a hash of the file's identity and the window start."""
    key = b"%s\0%d\0%d\0%.3f" % (relpath, st.st_size, st.st_mtime_ns, start)
    return hashlib.sha1(key).hexdigest()[:20] + ".jpg"


# ---------------------------------------------------------------------- decoding (worker threads)
def _open_reader(full: bytes) -> Any:
    """A video reader for a path given as bytes (PyAV wants UTF-8 names: others go through a file object)."""
    from clipvip.data import VideoDecodeError
    from clipvip.data.video import open_video

    try:
        name = full.decode("utf-8")
    except UnicodeDecodeError:
        name = None
    if name is not None:
        return open_video(name)
    try:
        if os.path.getsize(full) == 0:
            raise VideoDecodeError(escape_path(full), "empty file (0 bytes)")
        fh = open(full, "rb")
    except OSError as exc:
        raise VideoDecodeError(escape_path(full), f"cannot open: {exc.strerror or exc}") from exc
    try:
        reader = open_video(fh)
    except BaseException:
        fh.close()
        raise
    reader._clipvip_fh = fh  # closed with the reader (see _close)
    return reader


def _close(reader: Any) -> None:
    try:
        reader.close()
    finally:
        fh = getattr(reader, "_clipvip_fh", None)
        if fh is not None:
            fh.close()


@dataclass
class _Chunk:
    rel: bytes
    spans: list[tuple[float, float]]
    pixels: torch.Tensor  # [n, T, 3, S, S]
    jpegs: list[bytes | None]
    first: int  # index of spans[0] among the video's windows
    total: int  # windows of the video
    duration: float | None


@dataclass
class _Failed:
    rel: bytes
    reason: str


def decode_windows(full: bytes, rel: bytes, num_frames: int, transform: Callable, window: float, stride: float,
                   chunk: int) -> Iterator[_Chunk]:
    """Open a video once, then decode + transform its windows ``chunk`` at a time (runs in a worker)."""
    from clipvip.data import VideoDecodeError
    from clipvip.data.video import sample_indices, window_range
    from clipvip.search.thumbs import thumbnail_jpeg

    reader = _open_reader(full)
    try:
        times = reader.frame_times()
        info = reader.info()
        duration = float(info.duration) if info.duration and np.isfinite(info.duration) else None
        spans = plan_windows(duration or 0.0, window, stride)
        for first in range(0, len(spans), chunk):
            part = spans[first : first + chunk]
            pixels, jpegs = [], []
            for j, (s, e) in enumerate(part):
                last = first + j == len(spans) - 1
                # windows are half-open [s, e) (a frame at e belongs to the next one), the last one closed
                lo, hi = (0, len(times)) if len(spans) == 1 else window_range(times, s, e if last else e - 1e-3)
                idx = [int(i) for i in sample_indices(hi - lo, num_frames, "uniform") + lo]
                frames = reader.get_frames(idx)
                if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
                    raise VideoDecodeError(escape_path(rel), f"decoder returned frames of shape {frames.shape}")
                try:
                    jpegs.append(thumbnail_jpeg(frames[len(frames) // 2]))
                except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not lose the embedding
                    log.warning("no thumbnail for %s: %s", escape_path(rel), exc)
                    jpegs.append(None)
                # transform right away: only the model-sized frames are kept, the full-size ones are freed
                pixels.append(transform(torch.from_numpy(np.ascontiguousarray(frames))))
                del frames
            yield _Chunk(rel, part, torch.stack(pixels), jpegs, first, len(spans),
                         None if duration is None else round(duration, 3))
    finally:
        _close(reader)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}")


class _Producer:
    """``workers`` threads decoding videos into a bounded queue; the consumer iterates :meth:`items`."""

    def __init__(self, todo: list[bytes], root: bytes, pipeline: Any, window: float, stride: float, chunk: int,
                 workers: int):
        self.q: queue.Queue = queue.Queue(maxsize=max(2, 2 * workers))
        self.stop = threading.Event()
        self.todo = todo
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
        args = (pipeline.num_frames, pipeline.transform, window, stride, chunk)
        self.futures = [self.pool.submit(self._work, os.path.join(root, rel), rel, args) for rel in todo]

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, full: bytes, rel: bytes, args: tuple) -> None:
        if self.stop.is_set():
            return
        try:
            for ch in decode_windows(full, rel, *args):
                if not self._put(ch):
                    return
        except Exception as exc:  # noqa: BLE001 - any failure is a property of this file; keep going
            self._put(_Failed(rel, _reason(exc)))
            return
        self._put(("done", rel))

    def items(self) -> Iterator[Any]:
        finished = 0
        while finished < len(self.todo):
            item = self.q.get()
            if isinstance(item, _Failed) or (isinstance(item, tuple) and item[0] == "done"):
                finished += 1
            yield item

    def close(self) -> None:
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- building
def default_threads(workers: int | None = None, threads: int | None = None) -> tuple[int, int]:
    """``(decode workers, torch threads)`` that together do not exceed the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if workers is None:
        workers = max(1, cores // 4) if threads is None else max(1, cores - threads)
    if threads is None:
        threads = max(1, cores - workers)
    return int(workers), int(threads)


def build_index(
    video_dir: str | Path,
    index_dir: str | Path,
    pipeline: Any,
    *,
    batch_size: int = 8,
    rebuild: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    workers: int | None = None,
    window: float = DEFAULT_WINDOW,
    stride: float = DEFAULT_STRIDE,
    vector_dtype: str = "float32",
    encoder: Callable[..., None] | None = None,
) -> IndexStats:
    """Create or update the index of ``video_dir`` in ``index_dir`` with ``pipeline`` (see module doc).

    ``batch_size`` windows go through the model together; finished videos are committed after every
    batch. Raises ``ModelMismatchError`` for an index of another model, ``IndexFormatError`` for one of
    another folder, other window settings or an old format (unless ``rebuild``), ``IndexLockedError``
    when another writer holds the index. Unreadable videos never stop the run: they are listed in
    ``stats.failures`` and ``report.json`` and announced through ``echo``. ``encoder`` replaces the
    in-process encoding loop (``clipvip.search.distributed`` spreads it over ranks); it receives the same
    arguments as ``_encode_all`` and commits through the writer it is given.
    """
    t0 = time.perf_counter()
    echo = echo or (lambda msg: log.warning("%s", msg))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not (window > 0 and stride > 0):
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if workers is None:
        workers = default_threads()[0]
    video_root = os.path.abspath(os.fsencode(video_dir))
    if not os.path.isdir(video_root):
        raise IndexFormatError(f"{escape_path(video_root)}: not a directory")
    root = Path(index_dir)
    meta = {
        "model_spec": pipeline.spec,
        "tokenizer_spec": getattr(pipeline, "tokenizer_spec", None),
        "model_id": pipeline.model_id,
        "compute_dtype": getattr(pipeline, "dtype_name", "fp32"),  # the encode dtype (fp32/bf16), not storage
        "dim": int(pipeline.dim),
        "num_frames": int(pipeline.num_frames),
        "image_size": int(pipeline.image_size),
        "video_root": video_root,
        "dtype": vector_dtype,
        "window": float(window),
        "stride": float(stride),
    }
    stats = IndexStats()
    with IndexWriter(root, meta, rebuild=rebuild, must_match=("window", "stride")) as writer:
        (root / "thumbs").mkdir(exist_ok=True)
        found, problems = scan_videos(video_root)
        stats.found = len(found) + len(problems)
        known = writer.videos()
        failed = writer.failures()
        todo: list[bytes] = []
        for rel, st in found.items():
            k, f = known.get(rel), failed.get(rel)
            if k and k.size == st.st_size and k.mtime_ns == st.st_mtime_ns:
                stats.unchanged += 1
            elif f and (f.size, f.mtime_ns, f.mode) == (st.st_size, st.st_mtime_ns, st.st_mode):
                stats.unchanged += 1  # known bad and untouched (content and permissions): not retried
            else:
                if k or f:
                    stats.changed += 1
                else:
                    stats.new += 1
                todo.append(rel)
        gone = [p for p in known if p not in found]
        gone += [p for p in failed if p not in found and p not in known]
        stats.deleted = sum(1 for p in known if p not in found)
        if gone:
            writer.delete_videos(gone)
            stats.commits += 1
        stats.compactions += int(writer.compact())

        (encoder or _encode_all)(writer, root, video_root, todo, found, pipeline, stats, echo, batch_size, workers,
                                 window, stride, progress)
        stats.compactions += int(writer.compact())
        keep = writer.window_thumbs()
        _clean_thumbs(root, keep)
        failures = writer.failures()
        stats.total = len(writer.videos())
        stats.total_windows = writer.live
    rows = [{"path": escape_path(p), "reason": f.reason} for p, f in failures.items()]
    rows += [{"path": escape_path(p), "reason": r} for p, r in problems]
    stats.failures = sorted(rows, key=lambda r: r["path"])
    stats.seconds = round(time.perf_counter() - t0, 3)
    report = {
        "video_root": escape_path(video_root),
        "model_spec": pipeline.spec,
        "model_id": pipeline.model_id,
        "window": window,
        "stride": stride,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {k: getattr(stats, k) for k in ("found", "new", "changed", "unchanged", "deleted", "encoded",
                                                  "windows", "failed", "total", "total_windows", "commits",
                                                  "compactions")},
        "seconds": stats.seconds,
        "model_seconds": round(stats.model_seconds, 3),
        "failures": stats.failures,
        "encoded": stats.encoded_paths,
    }
    atomic_write_json(root / "report.json", report)
    return stats


def _encode_all(writer: IndexWriter, root: Path, video_root: bytes, todo: list[bytes], found: dict, pipeline: Any,
                stats: IndexStats, echo: Callable[[str], None], batch_size: int, workers: int, window: float,
                stride: float, progress: bool) -> None:
    """The model thread: take decoded windows, encode ``batch_size`` at a time, commit finished videos."""
    bar = _bar(len(todo), progress)
    state: dict[bytes, dict[str, Any]] = {}  # rel → {vectors: {i: vec}, spans, jpegs, total, done}
    buffer: list[_Chunk] = []
    new_failures: list[FailureRow] = []

    def encode() -> None:
        if not buffer:
            return
        t = time.perf_counter()
        vecs = pipeline.encode_pixels(torch.cat([c.pixels for c in buffer])).numpy()
        stats.model_seconds += time.perf_counter() - t
        pos = 0
        for c in buffer:
            s = state.get(c.rel)
            if s is not None:  # None: the video failed after this chunk was decoded
                for j in range(len(c.spans)):
                    s["vectors"][c.first + j] = vecs[pos + j]
            pos += len(c.spans)
        stats.windows += pos
        buffer.clear()

    def commit(final: bool = False) -> None:
        ready = [r for r, s in state.items() if s["done"] and len(s["vectors"]) == s["total"]]
        if not ready and not (final and new_failures):
            return
        done = []
        for rel in ready:
            s = state.pop(rel)
            done.append({"rel": rel, "spans": s["spans"], "jpegs": s["jpegs"], "duration": s["duration"],
                         "vectors": np.stack([s["vectors"][i] for i in range(s["total"])])})
        bar.update(commit_videos(writer, root, found, done, new_failures, stats))
        new_failures.clear()

    producer = _Producer(todo, video_root, pipeline, window, stride, batch_size, workers)
    try:
        for item in producer.items():
            if isinstance(item, _Chunk):
                s = state.setdefault(item.rel, {"vectors": {}, "spans": [], "jpegs": [], "total": item.total,
                                                "done": False, "duration": item.duration})
                s["spans"].extend(item.spans)
                s["jpegs"].extend(item.jpegs)
                buffer.append(item)
                if sum(len(c.spans) for c in buffer) >= batch_size:
                    encode()
                    commit()
            elif isinstance(item, _Failed):
                state.pop(item.rel, None)
                st = found[item.rel]
                new_failures.append(FailureRow(item.rel, st.st_size, st.st_mtime_ns, st.st_mode, item.reason))
                echo(f"cannot index {escape_path(os.path.join(video_root, item.rel))}: {item.reason}")
                bar.update(1)
            else:  # ("done", rel)
                s = state.get(item[1])
                if s is not None:
                    s["done"] = True
                else:  # a video with zero windows cannot happen (plan_windows returns >= 1); be safe
                    pass
        encode()
        commit(final=True)
    finally:
        producer.close()
        bar.close()


def commit_videos(writer: IndexWriter, root: Path, found: dict, done: list[dict], failures: list[FailureRow],
                  stats: IndexStats) -> int:
    """Write the thumbnails of finished videos, then commit them (and ``failures``) in one transaction.

    ``done``: ``[{rel, spans, jpegs, duration, vectors [n, D]}]``. Returns the number of videos committed.
    """
    items = []
    for d in done:
        st = found[d["rel"]]
        windows = []
        for (a, b), jpeg in zip(d["spans"], d["jpegs"]):
            thumb = None
            if jpeg is not None:
                thumb = thumb_name(d["rel"], st, a)
                atomic_write_bytes(root / "thumbs" / thumb, jpeg)
            windows.append((a, b, thumb))
        items.append({"path": d["rel"], "size": st.st_size, "mtime_ns": st.st_mtime_ns, "mode": st.st_mode,
                      "duration": d["duration"], "windows": windows, "vectors": d["vectors"]})
    if not items and not failures:
        return 0
    writer.replace_videos(items, list(failures))
    stats.commits += 1
    for it in items:
        stats.encoded += 1
        stats.encoded_paths.append(escape_path(it["path"]))
    return len(items)


def _clean_thumbs(root: Path, keep: set[str]) -> None:
    """Remove thumbnails no window points at (replaced or deleted videos) and temp files left by a kill."""
    folder = root / "thumbs"
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.name not in keep and (p.suffix == ".jpg" or p.name.endswith(".tmp")):
            try:
                p.unlink()
            except OSError:
                pass


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="indexing", unit="video")


def is_index(path: str | Path) -> bool:
    return (Path(path) / DB_NAME).is_file()
