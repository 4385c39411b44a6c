"""The search index on disk: build, update incrementally, load.

Layout of an index directory::

    index.json                model spec, model id, dim, video root (written once; --rebuild rewrites it)
    manifest.json             the commit point: generation, embeddings file, entries, known failures
    embeddings-<gen>.npy      float32 [N, D]; row i belongs to manifest entry i (entries sorted by path)
    thumbs/<hash>.jpg         middle sampled frame, longer side 160 px
    report.json               what the last run did: counts and failures with reasons

Crash safety: after every encoded batch the builder writes a *new* ``embeddings-<gen+1>.npy`` and then
atomically replaces ``manifest.json`` pointing at it; only then are older generations deleted. A reader
always follows ``manifest.json``, so a kill at any instant leaves a consistent index and loses at most the
batch in flight. Entries are kept sorted by path, so an interrupted-then-resumed build ends byte-for-byte
in the same order as an uninterrupted one.

Incremental: a file is re-encoded when its size or mtime (ns) changed; files that vanished are dropped;
files that failed before and did not change are not retried (they stay listed as failures).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = 1
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
    ".ogv", ".gif",
})


class IndexFormatError(ValueError):
    """An index directory that cannot be used as asked (wrong model, wrong folder, damaged files)."""


class ModelMismatchError(IndexFormatError):
    """The index holds embeddings of another model; mixing them would make scores meaningless."""


@dataclass
class Entry:
    """One indexed video. ``row`` is its row in the embeddings array."""

    path: str  # relative to the video root, POSIX separators
    size: int
    mtime_ns: int
    duration: float | None
    model_id: str
    row: int
    thumb: str | None  # file name under thumbs/

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


@dataclass
class IndexStats:
    """What one ``build_index`` run did (also written to ``report.json``)."""

    found: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    encoded: int = 0
    commits: int = 0
    total: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    encoded_paths: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)


# ---------------------------------------------------------------------- reading
class VideoIndex:
    """A loaded index: metadata, entries (sorted by path) and the ``[N, D]`` embeddings (memory-mapped)."""

    def __init__(self, root: Path, meta: dict[str, Any], manifest: dict[str, Any], embeddings: np.ndarray):
        self.root = root
        self.meta = meta
        self.manifest = manifest
        self.embeddings = embeddings
        self.entries = [Entry(**e) for e in manifest.get("entries", [])]
        self.failures: list[dict[str, Any]] = list(manifest.get("failures", []))

    @classmethod
    def open(cls, index_dir: str | Path) -> "VideoIndex":
        """Load an index; raises ``IndexFormatError`` naming the file and the problem."""
        root = Path(index_dir)
        meta_path = root / "index.json"
        if not meta_path.is_file():
            raise IndexFormatError(f"{root}: not a clipvip index (no index.json); build one with `clipvip index`")
        meta = _read(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexFormatError(f"{meta_path}: unsupported index format {meta.get('format') if isinstance(meta, dict) else meta!r}")
        missing = [k for k in ("dim", "model_id", "video_root") if k not in meta]
        if missing:
            raise IndexFormatError(f"{meta_path}: missing {', '.join(missing)}")
        dim = int(meta["dim"])
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():  # killed before the first commit: a valid, empty index
            return cls(root, meta, {"generation": 0, "entries": [], "failures": []},
                       np.zeros((0, dim), np.float32))
        manifest = _read(manifest_path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("embeddings"), str) \
                or not isinstance(manifest.get("entries"), list):
            raise IndexFormatError(f"{manifest_path}: not a clipvip manifest (no embeddings file or entries)")
        emb_path = root / manifest["embeddings"]
        try:
            emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{emb_path}: cannot read embeddings ({exc})") from exc
        n = len(manifest["entries"])
        if emb.ndim != 2 or emb.shape != (n, dim):
            raise IndexFormatError(f"{emb_path}: shape {emb.shape} does not match {n} entries of dim {dim}")
        try:
            return cls(root, meta, manifest, emb)
        except TypeError as exc:
            raise IndexFormatError(f"{manifest_path}: malformed entry ({exc})") from exc

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def video_root(self) -> Path:
        return Path(self.meta["video_root"])

    def video_path(self, row: int) -> Path:
        """Absolute path of the video in ``row`` (raises ``IndexError`` for a row that does not exist)."""
        if not 0 <= row < len(self.entries):
            raise IndexError(f"no row {row} in an index of {len(self.entries)} videos")
        return self.video_root / self.entries[row].path

    def thumb_path(self, row: int) -> Path | None:
        if not 0 <= row < len(self.entries):
            raise IndexError(f"no row {row} in an index of {len(self.entries)} videos")
        thumb = self.entries[row].thumb
        return self.root / "thumbs" / thumb if thumb else None


# ---------------------------------------------------------------------- scanning
def scan_videos(video_dir: str | Path) -> dict[str, os.stat_result]:
    """Video files under ``video_dir`` (recursive, by extension, hidden files skipped) → ``{relpath: stat}``."""
    root = Path(video_dir)
    if not root.is_dir():
        raise IndexFormatError(f"{root}: not a directory")
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
            except OSError as exc:
                log.warning("cannot stat %s: %s", full, exc)
                continue
            if not full.is_file():
                continue
            found[full.relative_to(root).as_posix()] = st
    return found


def thumb_name(relpath: str) -> str:
    """Thumbnail file name: a hash of the relative path, stable across compaction and re-runs."""
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:16] + ".jpg"


# ---------------------------------------------------------------------- building
class _Writer:
    """Holds the live state of an index being built and commits it atomically."""

    def __init__(self, root: Path, dim: int, entries: dict[str, dict], vectors: dict[str, np.ndarray],
                 failures: dict[str, dict], generation: int):
        self.root = root
        self.dim = dim
        self.entries = entries  # relpath -> entry dict (row filled at commit)
        self.vectors = vectors  # relpath -> [D] float32
        self.failures = failures  # relpath -> {path, size, mtime_ns, reason}
        self.generation = generation
        self.commits = 0

    def commit(self) -> None:
        paths = sorted(self.entries)
        emb = np.zeros((len(paths), self.dim), np.float32)
        for i, p in enumerate(paths):
            emb[i] = self.vectors[p]
            self.entries[p]["row"] = i
        gen = self.generation + 1
        name = f"embeddings-{gen:06d}.npy"
        atomic_save_npy(self.root / name, emb)
        manifest = {
            "format": FORMAT,
            "generation": gen,
            "embeddings": name,
            "count": len(paths),
            "entries": [self.entries[p] for p in paths],
            "failures": [self.failures[p] for p in sorted(self.failures)],
        }
        atomic_write_json(self.root / "manifest.json", manifest)  # the commit point
        self.generation = gen
        self.commits += 1
        for old in self.root.glob("embeddings-*.npy"):
            if old.name != name:
                try:
                    old.unlink()
                except OSError:
                    pass


def build_index(
    video_dir: str | Path,
    index_dir: str | Path,
    pipeline: Any,
    *,
    batch_size: int = 8,
    rebuild: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    workers: int = 2,
) -> IndexStats:
    """Create or update the index of ``video_dir`` in ``index_dir`` with ``pipeline`` (see module doc).

    Raises ``ModelMismatchError`` when the index was built with another model (unless ``rebuild``), and
    ``IndexFormatError`` when it indexes another folder. Unreadable videos never stop the run: they are listed
    in ``stats.failures`` and ``report.json``, and announced through ``echo``. ``workers`` threads decode
    ahead of the encoder (1 = decode inline).
    """
    t0 = time.perf_counter()
    echo = echo or (lambda msg: log.warning("%s", msg))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    video_root = Path(video_dir).resolve()
    root = Path(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "thumbs").mkdir(exist_ok=True)
    meta = {
        "format": FORMAT,
        "model_spec": pipeline.spec,
        "tokenizer_spec": getattr(pipeline, "tokenizer_spec", None),
        "model_id": pipeline.model_id,
        "dim": int(pipeline.dim),
        "num_frames": int(pipeline.num_frames),
        "image_size": int(pipeline.image_size),
        "video_root": str(video_root),
        "dtype": "float32",
    }
    entries: dict[str, dict] = {}
    vectors: dict[str, np.ndarray] = {}
    failures: dict[str, dict] = {}
    generation = 0
    if (root / "index.json").is_file() and not rebuild:
        old = VideoIndex.open(root)
        if old.model_id != pipeline.model_id:
            raise ModelMismatchError(
                f"{root} holds embeddings of model {old.meta.get('model_spec')!r} (id {old.model_id}); the "
                f"model given ({pipeline.spec!r}) has id {pipeline.model_id}. Mixing them would make scores "
                f"meaningless: pass --rebuild to re-encode everything with the new model, or use another --index"
            )
        if Path(old.meta["video_root"]) != video_root:
            raise IndexFormatError(
                f"{root} indexes {old.meta['video_root']}, not {video_root}; use another --index for another "
                f"folder, or --rebuild to replace it"
            )
        generation = int(old.manifest.get("generation", 0))
        emb = np.asarray(old.embeddings, dtype=np.float32)
        for i, e in enumerate(old.entries):
            entries[e.path] = asdict(e)
            vectors[e.path] = emb[i].copy()
        failures = {f["path"]: dict(f) for f in old.failures}
        meta["tokenizer_spec"] = meta["tokenizer_spec"] or old.meta.get("tokenizer_spec")
    elif rebuild and (root / "manifest.json").is_file():
        try:
            generation = int(read_json(root / "manifest.json").get("generation", 0))
        except (ValueError, OSError, AttributeError):
            generation = 0
        # No manifest means an empty index: dropping it first keeps the directory consistent if we are
        # killed before the new model's first commit (old vectors never sit under the new index.json).
        _unlink(root / "manifest.json")
    atomic_write_json(root / "index.json", meta)

    found = scan_videos(video_root)
    stats = IndexStats(found=len(found))
    todo: list[str] = []
    for rel, st in found.items():
        known = entries.get(rel)
        failed = failures.get(rel)
        if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
            stats.unchanged += 1
        elif failed and failed["size"] == st.st_size and failed["mtime_ns"] == st.st_mtime_ns:
            stats.unchanged += 1  # known bad and untouched: not retried, still reported
        else:
            stats.changed += 1 if (known or failed) else 0
            stats.new += 0 if (known or failed) else 1
            todo.append(rel)
    gone = [p for p in entries if p not in found]
    gone_failed = [p for p in failures if p not in found]
    stats.deleted = len(gone)
    writer = _Writer(root, meta["dim"], entries, vectors, failures, generation)
    for rel in gone:
        del entries[rel]
        del vectors[rel]
    for rel in gone_failed:
        del failures[rel]
    if gone or gone_failed or not (root / "manifest.json").is_file() or rebuild:
        writer.commit()
        for rel in gone:
            _unlink(root / "thumbs" / thumb_name(rel))

    bar = _bar(len(todo), progress)
    pending: list[tuple[str, os.stat_result, Any, float | None, bytes | None]] = []
    dirty = False  # failures recorded since the last commit

    def flush() -> None:
        nonlocal dirty
        if not pending:
            return
        vecs = pipeline.encode_frames([clip for _, _, clip, _, _ in pending]).numpy().astype(np.float32)
        for (rel, st, _clip, duration, jpeg), vec in zip(pending, vecs):
            thumb = thumb_name(rel) if jpeg else None
            if jpeg:
                atomic_write_bytes(root / "thumbs" / thumb, jpeg)
            entries[rel] = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                            "duration": duration, "model_id": pipeline.model_id, "row": -1, "thumb": thumb}
            vectors[rel] = vec
            failures.pop(rel, None)
            stats.encoded += 1
            stats.encoded_paths.append(rel)
        writer.commit()
        dirty = False
        bar.update(len(pending))
        pending.clear()

    for rel, clip, duration, jpeg, reason in _prefetch(todo, video_root, pipeline, workers):
        st = found[rel]
        if reason is not None:
            if rel in entries:  # it was good, it changed, and now it is bad: drop the stale vector
                del entries[rel]
                del vectors[rel]
            failures[rel] = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "reason": reason}
            echo(f"cannot index {video_root / rel}: {reason}")
            dirty = True
            bar.update(1)
            continue
        pending.append((rel, st, clip, duration, jpeg))
        if len(pending) >= batch_size:
            flush()
    flush()
    if dirty:  # failures after the last batch: record them so the next run does not retry them
        writer.commit()
    bar.close()

    stats.commits = writer.commits
    stats.total = len(entries)
    stats.failures = [failures[p] for p in sorted(failures)]
    stats.seconds = round(time.perf_counter() - t0, 3)
    _clean_thumbs(root, {e["thumb"] for e in entries.values() if e.get("thumb")})
    report = {
        "video_root": str(video_root),
        "model_spec": pipeline.spec,
        "model_id": pipeline.model_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {k: getattr(stats, k) for k in
                   ("found", "new", "changed", "unchanged", "deleted", "encoded", "failed", "total", "commits")},
        "seconds": stats.seconds,
        "failures": [{"path": f["path"], "reason": f["reason"]} for f in stats.failures],
        "encoded": stats.encoded_paths,
    }
    atomic_write_json(root / "report.json", report)
    return stats


def _prefetch(todo: list[str], video_root: Path, pipeline: Any, workers: int) -> Iterator[tuple]:
    """Decode (+ duration + thumbnail) ahead of the encoder on ``workers`` threads, yielding in order.

    PyAV releases the GIL while decoding, so threads overlap decoding with the model's forward pass. At
    most ``2 * workers`` files are in flight, so memory stays bounded on huge folders.
    """

    def work(rel: str) -> tuple:
        full = video_root / rel
        try:
            clip = pipeline.decode(full)
        except Exception as exc:  # noqa: BLE001 - any failure is a property of this file; keep going
            return rel, None, None, None, str(getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}")
        try:
            from clipvip.search.thumbs import thumbnail_jpeg

            jpeg = thumbnail_jpeg(_middle(clip))
        except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not lose the embedding
            log.warning("no thumbnail for %s: %s", rel, exc)
            jpeg = None
        return rel, clip, probe_duration(full), jpeg, None

    if workers <= 1:
        yield from map(work, todo)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        window: deque = deque()
        items = iter(todo)
        for rel in items:
            window.append(pool.submit(work, rel))
            if len(window) >= 2 * workers:
                break
        while window:
            result = window.popleft().result()
            nxt = next(items, None)
            if nxt is not None:
                window.append(pool.submit(work, nxt))
            yield result


def probe_duration(path: Path) -> float | None:
    """Duration in seconds from the container, or ``None`` when it does not say."""
    try:
        from clipvip.data.video import read_info

        info = read_info(str(path))
        value = info.get("duration") if isinstance(info, dict) else getattr(info, "duration", None)
        return None if value is None else round(float(value), 3)
    except Exception:  # noqa: BLE001 - a duration is nice to have, never a reason to fail
        return None


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{exc}; re-create the index with --rebuild") from exc


def _middle(clip: Any) -> np.ndarray:
    arr = clip.numpy() if hasattr(clip, "numpy") else np.asarray(clip)
    return arr[len(arr) // 2]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _clean_thumbs(root: Path, keep: set[str]) -> None:
    """Remove thumbnails of dropped videos and temp files left by a kill."""
    folder = root / "thumbs"
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.name not in keep:
            _unlink(p)
    for p in root.glob(".*.tmp"):
        _unlink(p)


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


def read_json(path: Path) -> Any:
    """Read an index JSON file, raising ``ValueError`` that names the file on bad content."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
