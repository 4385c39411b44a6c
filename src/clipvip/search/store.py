"""The index on disk: SQLite for everything but the vectors, an append-only memory-mapped file for them.

Layout of an index directory::

    index.sqlite            WAL, synchronous=FULL: meta, videos, windows, failures; the commit point
    vectors-<gen>.bin       64-byte header + float32 (or float16) rows, append-only; slot i = row i
    thumbs/<hash>.jpg       one JPEG per window (its middle sampled frame, longer side 160 px)
    report.json             what the last ``clipvip index`` run did
    lock                    ``fcntl.flock`` target: one writer at a time (holds the writer's pid)

Why this shape: the previous format rewrote every embedding and the whole manifest after each batch, so
indexing N videos wrote O(N²) bytes and readers raced the deletion of old files. Here a batch appends its
vectors to the file (``fsync``), and only then one SQLite transaction inserts the rows that point at
them and moves ``meta.slots`` (the committed length of the vector file). A kill before the transaction
leaves unreferenced bytes past ``slots`` that the next writer truncates; a kill after it loses nothing.
Readers take ``meta`` and the rows in one read transaction (a WAL snapshot) and map only the first
``slots`` rows, which are never rewritten, so they never see a half-written state.

A re-encoded or deleted video leaves *dead slots* (rows no window points at) that searches mask. When they
pass ``COMPACT_DEAD_FRACTION`` of the file, the writer copies the live rows to ``vectors-<gen+1>.bin``
(fsync) and re-points every window in one transaction; the old file is deleted afterwards. A reader that
mapped it keeps its pages (POSIX unlink semantics); one that read the old generation but had not opened
the file yet retries once with the new snapshot.

The storage interface that other backends (a vector database server) would implement is
:class:`IndexWriter` (``replace_videos`` = append + replace, ``delete_videos``, ``record_failures``,
``videos``/``failures`` to iterate) and :func:`read_snapshot` (what search needs: vectors, live windows
and their video metadata, to filter and rank).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import fsync_dir

FORMAT = 2
DB_NAME = "index.sqlite"
LOCK_NAME = "lock"
MAGIC = b"CLIPVIPVEC"
HEADER = 64
_HEAD = struct.Struct("<10sHBxI")  # magic, version, dtype code, pad, dim
DTYPES = {"float32": (1, np.float32), "float16": (2, np.float16)}
COMPACT_DEAD_FRACTION = 0.25
COMPACT_MIN_DEAD = 64
LEGACY_FILES = ("manifest.json", "index.json")
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,          -- relative to the video root, raw bytes, '/'-separated
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    duration REAL,
    model_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    slot INTEGER NOT NULL UNIQUE,       -- row of the vector file
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    thumb TEXT,
    model_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_video ON windows(video_id);
CREATE TABLE IF NOT EXISTS failures (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


class IndexFormatError(ValueError):
    """An index directory that cannot be used as asked (wrong model, wrong folder, damaged files)."""


class ModelMismatchError(IndexFormatError):
    """The index holds embeddings of another model; mixing them would make scores meaningless."""


class IndexLockedError(RuntimeError):
    """Another process is writing this index (one writer at a time)."""


# ---------------------------------------------------------------------- paths
def escape_path(raw: bytes | str) -> str:
    """A printable, JSON-safe rendering of a file name: undecodable bytes as ``\\xNN``, controls escaped.

    ``"a\\nb.mp4"`` (a real newline) becomes ``a\\\\nb.mp4`` and ``b"caf\\xe9.mp4"`` (Latin-1) becomes
    ``caf\\\\xe9.mp4``; valid UTF-8 (accents, CJK, emoji) is kept as is. A literal backslash is doubled
    so that the escaping cannot be forged by a name that spells ``\\x..`` itself.
    """
    if isinstance(raw, str):
        raw = os.fsencode(raw)
    if _PLAIN.fullmatch(raw):  # the common case: printable ASCII without a backslash
        return raw.decode("ascii")
    text = raw.decode("utf-8", errors="surrogateescape")
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0 or o in (0x2028, 0x2029):
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def relpath_bytes(path: str | bytes | os.PathLike) -> bytes:
    """A relative path as the raw bytes the file system uses (``os.fsencode``), ``/``-separated."""
    raw = os.fsencode(path)
    return raw.replace(os.sep.encode(), b"/") if os.sep != "/" else raw


# ---------------------------------------------------------------------- vector file
def vectors_name(generation: int) -> str:
    return f"vectors-{generation:06d}.bin"


def _write_header(fh: Any, dim: int, dtype: str) -> None:
    head = _HEAD.pack(MAGIC, FORMAT, DTYPES[dtype][0], dim)
    fh.write(head + b"\0" * (HEADER - len(head)))


def _check_header(path: Path, dim: int, dtype: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read the vector file ({exc.strerror or exc})") from exc
    if len(head) < HEADER:
        raise IndexFormatError(f"{path}: truncated vector file ({len(head)} bytes, no complete header)")
    magic, version, code, file_dim = _HEAD.unpack(head[: _HEAD.size])
    if magic != MAGIC or version != FORMAT:
        raise IndexFormatError(f"{path}: not a clipvip vector file of format {FORMAT}")
    if code != DTYPES[dtype][0] or file_dim != dim:
        raise IndexFormatError(f"{path}: header says dtype code {code}, dim {file_dim}; the index says {dtype}, {dim}")


# ---------------------------------------------------------------------- SQLite
def _connect(db: Path, *, create: bool = False) -> sqlite3.Connection:
    if not create and not db.is_file():
        raise IndexFormatError(f"{db}: missing")
    try:
        con = sqlite3.connect(str(db), timeout=60.0, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA busy_timeout=60000")
        if create:
            con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise IndexFormatError(f"{db}: not a usable SQLite database ({exc})") from exc
    return con


def _read_meta(con: sqlite3.Connection, db: Path) -> dict[str, Any]:
    try:
        rows = con.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise IndexFormatError(f"{db}: damaged or not a clipvip index ({exc}); rebuild it with "
                               f"`clipvip index VIDEO_DIR --model SPEC --index DIR --rebuild`") from exc
    meta = {k: v for k, v in rows}
    for key in ("format", "model_id", "dim", "dtype", "video_root", "generation", "slots"):
        if key not in meta:
            raise IndexFormatError(f"{db}: meta has no {key!r}; the index is damaged; rebuild it with --rebuild")
    if meta["format"] != FORMAT:
        raise IndexFormatError(f"{db}: index format {meta['format']!r}, this clipvip reads {FORMAT}; rebuild "
                               f"it with `clipvip index VIDEO_DIR --model SPEC --index DIR --rebuild`")
    for key in ("dim", "generation", "slots"):
        if not isinstance(meta[key], int) or meta[key] < 0:
            raise IndexFormatError(f"{db}: meta {key} = {meta[key]!r} is not a non-negative integer (damaged)")
    if meta["dtype"] not in DTYPES:
        raise IndexFormatError(f"{db}: meta dtype {meta['dtype']!r} is not one of {sorted(DTYPES)}")
    if not isinstance(meta["video_root"], bytes):
        raise IndexFormatError(f"{db}: meta video_root is not a path (damaged)")
    return meta


def legacy_error(root: Path) -> IndexFormatError:
    """The message for a directory built by clipvip's previous index format (manifest.json + .npy)."""
    spec = root_dir = "..."
    try:
        old = json.loads((root / "index.json").read_text())
        spec, root_dir = old.get("model_spec", spec), old.get("video_root", root_dir)
    except (OSError, ValueError, AttributeError):
        pass
    return IndexFormatError(
        f"{root} holds an index of the previous format (manifest.json + embeddings .npy), which this clipvip "
        f"no longer reads. Rebuild it (re-encodes every video): clipvip index {root_dir} --model {spec} "
        f"--index {root} --rebuild"
    )


def check_index_dir(root: Path) -> Path:
    """The SQLite file of an index directory, or an ``IndexFormatError`` saying what the directory is."""
    db = root / DB_NAME
    if db.is_file():
        return db
    if (root / "manifest.json").is_file() or (root / "index.json").is_file():
        raise legacy_error(root)
    if not root.exists():
        raise IndexFormatError(f"{root}: no such index directory; build one with `clipvip index`")
    raise IndexFormatError(f"{root}: not a clipvip index (no {DB_NAME}); build one with `clipvip index`")


# ---------------------------------------------------------------------- reading
@dataclass(frozen=True)
class VideoRow:
    id: int
    path: bytes
    size: int
    mtime_ns: int
    mode: int
    duration: float | None
    model_id: str


@dataclass(frozen=True)
class FailureRow:
    path: bytes
    size: int
    mtime_ns: int
    mode: int
    reason: str


class _Videos:
    """The videos of a snapshot as a sequence of :class:`VideoRow`, built on access from column arrays
    (a million-video snapshot would spend seconds creating objects nobody looks at)."""

    def __init__(self, ids: np.ndarray, paths: list[bytes], sizes: np.ndarray, mtimes: np.ndarray,
                 modes: np.ndarray, durations: np.ndarray, model_id: str):
        self.ids, self.paths, self.sizes, self.mtimes = ids, paths, sizes, mtimes
        self.modes, self.durations, self.model_id = modes, durations, model_id

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> VideoRow:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        d = float(self.durations[i])
        return VideoRow(int(self.ids[i]), self.paths[i], int(self.sizes[i]), int(self.mtimes[i]), int(self.modes[i]),
                        None if d != d else d, self.model_id)

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    def position(self, video_id: int) -> int:
        """Index of ``video_id`` (ids are sorted); ``KeyError`` if absent."""
        i = int(np.searchsorted(self.ids, video_id))
        if i >= len(self.ids) or self.ids[i] != video_id:
            raise KeyError(video_id)
        return i


@dataclass
class Snapshot:
    """A consistent, immutable view of one commit: what a search needs.

    Videos are ordered by id; windows by (video, start). ``video_index[i]`` is the position in ``videos``
    of window ``i``'s video, and the windows of video ``v`` are ``offsets[v]:offsets[v+1]``.
    """

    root: Path
    meta: dict[str, Any]
    generation: int
    vectors: np.ndarray  # [slots, D] memory-mapped (copy-on-write, never written); dead rows included
    videos: _Videos
    window_ids: np.ndarray  # int64 [W]
    slots: np.ndarray  # int64 [W]
    video_index: np.ndarray  # int64 [W]
    starts: np.ndarray  # float64 [W]
    ends: np.ndarray  # float64 [W]
    thumbs: list[str | None]  # [W]
    offsets: np.ndarray  # int64 [V+1]
    data_version: tuple[int, int]

    @property
    def model_id(self) -> str:
        return str(self.meta["model_id"])

    @property
    def video_root(self) -> Path:
        return Path(os.fsdecode(self.meta["video_root"]))

    @property
    def dead(self) -> int:
        return int(self.vectors.shape[0] - len(self.slots))

    def window_position(self, window_id: int) -> int:
        """Index of ``window_id`` among the snapshot's windows; ``KeyError`` if absent."""
        order = self.__dict__.get("_wid_order")
        if order is None:
            order = self.__dict__["_wid_order"] = np.argsort(self.window_ids, kind="stable")
        i = int(np.searchsorted(self.window_ids, window_id, sorter=order))
        if i >= len(order) or self.window_ids[order[i]] != window_id:
            raise KeyError(window_id)
        return int(order[i])


def read_snapshot(index_dir: str | Path, *, retries: int = 3) -> Snapshot:
    """Read the latest commit of an index (see module doc); ``IndexFormatError`` names a damaged file."""
    root = Path(index_dir)
    db = check_index_dir(root)
    con = _connect(db)
    try:
        for attempt in range(retries):
            try:
                return _snapshot(con, root, db)
            except FileNotFoundError as exc:  # compaction replaced the generation we read: read again
                if attempt == retries - 1:
                    raise IndexFormatError(f"{exc.filename}: missing vector file (the index is damaged; "
                                           f"rebuild it with --rebuild)") from exc
                time.sleep(0.01)
    finally:
        con.close()
    raise AssertionError("unreachable")


def _columns(rows: list[tuple], n: int) -> list[tuple]:
    return list(zip(*rows)) if rows else [()] * n


def _snapshot(con: sqlite3.Connection, root: Path, db: Path) -> Snapshot:
    con.execute("BEGIN")
    try:
        meta = _read_meta(con, db)
        model_id = meta["model_id"]
        try:
            vrows = con.execute("SELECT id, path, size, mtime_ns, mode, duration FROM videos ORDER BY id").fetchall()
            wrows = con.execute('SELECT id, slot, video_id, start, "end", thumb FROM windows '
                                'ORDER BY video_id, start, id').fetchall()
            foreign = con.execute("SELECT (SELECT count(*) FROM videos WHERE model_id IS NOT ?) + "
                                  "(SELECT count(*) FROM windows WHERE model_id IS NOT ?)", (model_id, model_id)).fetchone()[0]
            version = con.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(f"{db}: damaged ({exc}); rebuild it with --rebuild") from exc
        gen, n_slots, dim, dtype = meta["generation"], meta["slots"], meta["dim"], meta["dtype"]
        vpath = root / vectors_name(gen)
        fh = open(vpath, "rb")  # FileNotFoundError → caller retries with a newer snapshot
    finally:
        con.execute("COMMIT")
    if foreign:
        raise IndexFormatError(f"{db}: {foreign} rows were embedded by another model than {model_id}: mixed index; "
                               f"rebuild it with --rebuild")
    with fh:
        _check_header(vpath, dim, dtype)
        need = HEADER + n_slots * dim * np.dtype(DTYPES[dtype][1]).itemsize
        size = os.fstat(fh.fileno()).st_size
        if size < need:
            raise IndexFormatError(f"{vpath}: {size} bytes, but the index commits {n_slots} vectors of dim {dim} "
                                   f"({need} bytes): the file was truncated; rebuild with --rebuild")
        if n_slots:
            # copy-on-write map: shares the page cache, never writes the file, and is a writable array so
            # torch.from_numpy takes it without a copy or a warning
            vectors = np.memmap(fh, dtype=DTYPES[dtype][1], mode="c", offset=HEADER, shape=(n_slots, dim))
        else:
            vectors = np.zeros((0, dim), DTYPES[dtype][1])
    try:
        vid, vpaths, vsize, vmtime, vmode, vdur = _columns(vrows, 6)
        if any(type(p) is not bytes for p in vpaths):
            raise TypeError("a video path is not a BLOB")
        videos = _Videos(np.array(vid, np.int64), list(vpaths), np.array(vsize, np.int64), np.array(vmtime, np.int64),
                         np.array(vmode, np.int64), np.array([np.nan if d is None else d for d in vdur], np.float64),
                         model_id)
        wid, wslot, wvid, wstart, wend, wthumb = _columns(wrows, 6)
        window_ids = np.array(wid, np.int64)
        slots = np.array(wslot, np.int64)
        starts = np.array(wstart, np.float64)
        ends = np.array(wend, np.float64)
        wvid_arr = np.array(wvid, np.int64)
        thumbs = list(wthumb)
        if any(t is not None and type(t) is not str for t in thumbs):
            raise TypeError("a thumbnail name is not text")
    except (TypeError, ValueError) as exc:
        raise IndexFormatError(f"{db}: a row has a wrong type ({type(exc).__name__}: {exc}); the index is "
                               f"damaged; rebuild it with --rebuild") from exc
    w = len(wrows)
    video_index = np.searchsorted(videos.ids, wvid_arr).astype(np.int64)
    if w and (video_index.max() >= len(videos.ids) or (videos.ids[np.minimum(video_index, len(videos.ids) - 1)] != wvid_arr).any()):
        raise IndexFormatError(f"{db}: windows belong to no video (damaged)")
    if w and (slots.min() < 0 or slots.max() >= n_slots):
        raise IndexFormatError(f"{db}: a window points at slot {int(slots.max())} outside the {n_slots} committed "
                               f"vectors of {vpath.name} (damaged)")
    if w and len(np.unique(slots)) != w:
        raise IndexFormatError(f"{db}: two windows share a vector slot (damaged)")
    if w and not (np.isfinite(starts).all() and np.isfinite(ends).all() and (ends >= starts).all()):
        raise IndexFormatError(f"{db}: a window has a non-finite or inverted time range (damaged)")
    offsets = np.searchsorted(video_index, np.arange(len(videos) + 1), side="left").astype(np.int64)
    return Snapshot(root, meta, gen, vectors, videos, window_ids, slots, video_index, starts, ends, thumbs,
                    offsets, (gen, int(version)))


def commit_token(index_dir: str | Path) -> tuple[int, int, int]:
    """A cheap value that changes whenever a writer commits: ``(generation, slots, commit counter)``."""
    db = check_index_dir(Path(index_dir))
    con = _connect(db)
    try:
        meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('generation', 'slots', 'commits')"))
    except sqlite3.DatabaseError as exc:
        raise IndexFormatError(f"{db}: damaged ({exc})") from exc
    finally:
        con.close()
    return int(meta.get("generation", 0)), int(meta.get("slots", 0)), int(meta.get("commits", 0))


# ---------------------------------------------------------------------- writing
class IndexWriter:
    """The single writer of an index directory (holds ``fcntl.flock`` on ``DIR/lock`` while open).

    ``meta`` must hold ``model_id``, ``dim``, ``video_root`` (bytes) and may hold ``dtype`` (float32 or
    float16) and any other JSON-able settings (model spec, window, stride, ...). An existing index of
    another model raises ``ModelMismatchError``; of another folder or other settings in ``must_match``,
    ``IndexFormatError`` — unless ``rebuild``, which empties it first. A second writer raises
    ``IndexLockedError`` at once (the CLI turns it into exit status 2).
    """

    def __init__(self, index_dir: str | Path, meta: dict[str, Any], *, rebuild: bool = False,
                 must_match: Sequence[str] = ()):
        self.root = Path(index_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_lock(self.root)
        try:
            self._open(meta, rebuild, must_match)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._mutex = threading.Lock()

    # -- opening
    def _open(self, meta: dict[str, Any], rebuild: bool, must_match: Sequence[str]) -> None:
        db = self.root / DB_NAME
        legacy = [n for n in LEGACY_FILES if (self.root / n).is_file()]
        if legacy and not db.is_file():
            if not rebuild:
                raise legacy_error(self.root)
            for name in (*LEGACY_FILES, "report.json"):
                _unlink(self.root / name)
            for old in self.root.glob("embeddings-*.npy"):
                _unlink(old)
        fresh = not db.is_file()
        self.db = db
        self.con = _connect(db, create=True)
        if not fresh and not _has_meta(self.con):  # killed while creating it: nothing was ever committed
            fresh = True
        if not fresh:
            old = _read_meta(self.con, db)
            if not rebuild:
                if old["model_id"] != meta["model_id"]:
                    raise ModelMismatchError(
                        f"{self.root} holds embeddings of model {old.get('model_spec')!r} (id {old['model_id']}); the "
                        f"model given ({meta.get('model_spec')!r}) has id {meta['model_id']}. Mixing them would make "
                        f"scores meaningless: pass --rebuild to re-encode everything with the new model, or use "
                        f"another --index")
                if old["video_root"] != meta["video_root"]:
                    raise IndexFormatError(
                        f"{self.root} indexes {os.fsdecode(old['video_root'])}, not {os.fsdecode(meta['video_root'])}; "
                        f"use another --index for another folder, or --rebuild to replace it")
                for key in must_match:
                    if key in meta and old.get(key) != meta[key]:
                        raise IndexFormatError(
                            f"{self.root} was built with {key} = {old.get(key)!r}, this run asks for {meta[key]!r}; "
                            f"pass --rebuild to re-encode everything that way, or use another --index")
                meta = {**old, **{k: v for k, v in meta.items() if k not in ("generation", "slots", "commits")}}
                meta["dtype"] = old["dtype"]
            else:
                gen = int(old["generation"]) + 1
                self.con.execute("BEGIN IMMEDIATE")
                self.con.execute("DELETE FROM windows")
                self.con.execute("DELETE FROM videos")
                self.con.execute("DELETE FROM failures")
                meta = {**meta, "generation": gen, "slots": 0, "commits": int(old.get("commits", 0)) + 1}
                self._new_vector_file(gen, meta)
                self._put_meta(meta)
                self.con.execute("COMMIT")
        if fresh:
            meta = {**meta, "format": FORMAT, "generation": 0, "slots": 0, "commits": 0}
            meta.setdefault("dtype", "float32")
            if meta["dtype"] not in DTYPES:
                raise ValueError(f"vector dtype must be one of {sorted(DTYPES)}, got {meta['dtype']!r}")
            self._new_vector_file(0, meta)
            self.con.executescript(SCHEMA)
            self.con.execute("BEGIN IMMEDIATE")
            self._put_meta(meta)
            self.con.execute("COMMIT")
        self.meta = _read_meta(self.con, db)
        self.dim = int(self.meta["dim"])
        self.np_dtype = DTYPES[self.meta["dtype"]][1]
        self.row_bytes = self.dim * np.dtype(self.np_dtype).itemsize
        self._open_vectors()
        self._remove_stale_generations()

    def _new_vector_file(self, gen: int, meta: dict[str, Any]) -> None:
        path = self.root / vectors_name(gen)
        with open(path, "wb") as fh:
            _write_header(fh, int(meta["dim"]), meta.get("dtype", "float32"))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.root)

    def _open_vectors(self) -> None:
        gen, slots = int(self.meta["generation"]), int(self.meta["slots"])
        self.vpath = self.root / vectors_name(gen)
        if not self.vpath.is_file():
            raise IndexFormatError(f"{self.vpath}: missing vector file (the index is damaged; rebuild it with --rebuild)")
        _check_header(self.vpath, self.dim, self.meta["dtype"])
        self.vfh = open(self.vpath, "r+b")
        committed = HEADER + slots * self.row_bytes
        size = os.fstat(self.vfh.fileno()).st_size
        if size < committed:
            raise IndexFormatError(f"{self.vpath}: {size} bytes but {slots} vectors are committed ({committed} bytes): "
                                   f"truncated; rebuild it with --rebuild")
        if size > committed:  # appended by a run killed before its commit: never visible, drop it
            self.vfh.truncate(committed)
            os.fsync(self.vfh.fileno())

    def _remove_stale_generations(self) -> None:
        keep = self.vpath.name
        for p in self.root.glob("vectors-*.bin"):
            if p.name != keep:
                _unlink(p)
        for p in self.root.glob("ivf-*.faiss"):
            if not p.name.startswith(f"ivf-{int(self.meta['generation']):06d}-"):
                _unlink(p)

    def _put_meta(self, meta: dict[str, Any]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))

    # -- iterate
    def videos(self) -> dict[bytes, VideoRow]:
        rows = self.con.execute("SELECT id, path, size, mtime_ns, mode, duration, model_id FROM videos").fetchall()
        return {bytes(r[1]): VideoRow(r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows}

    def failures(self) -> dict[bytes, FailureRow]:
        rows = self.con.execute("SELECT path, size, mtime_ns, mode, reason FROM failures").fetchall()
        return {bytes(r[0]): FailureRow(bytes(r[0]), r[1], r[2], r[3], r[4]) for r in rows}

    def window_thumbs(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT thumb FROM windows WHERE thumb IS NOT NULL")}

    @property
    def slots(self) -> int:
        return int(self.meta["slots"])

    @property
    def live(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM windows").fetchone()[0])

    # -- write
    def replace_videos(self, items: Sequence[dict[str, Any]], failures: Sequence[FailureRow] = (),
                       clear_failures: Iterable[bytes] = ()) -> None:
        """Commit a batch: each item replaces one video (old windows out, new in) atomically.

        ``item``: ``{path: bytes, size, mtime_ns, mode, duration, windows: [(start, end, thumb)],
        vectors: [n_windows, D]}``. The vectors are appended and fsynced *before* the transaction that
        makes them visible; ``failures`` are recorded (and their stale vectors dropped) in the same
        transaction, and ``clear_failures`` forgotten.
        """
        with self._mutex:
            model_id = self.meta["model_id"]
            chunks = []
            for it in items:
                vec = np.asarray(it["vectors"], dtype=np.float32)
                if vec.ndim != 2 or vec.shape != (len(it["windows"]), self.dim):
                    raise ValueError(f"{escape_path(it['path'])}: vectors {vec.shape} for {len(it['windows'])} windows")
                if not np.isfinite(vec).all():
                    raise ValueError(f"{escape_path(it['path'])}: non-finite embedding refused")
                chunks.append(vec.astype(self.np_dtype))
            base = self.slots
            total = sum(len(c) for c in chunks)
            if total:
                self.vfh.seek(HEADER + base * self.row_bytes)
                for c in chunks:
                    self.vfh.write(np.ascontiguousarray(c).tobytes())
                self.vfh.flush()
                os.fsync(self.vfh.fileno())
            con = self.con
            con.execute("BEGIN IMMEDIATE")
            try:
                slot = base
                for it, c in zip(items, chunks):
                    con.execute("DELETE FROM videos WHERE path = ?", (it["path"],))
                    cur = con.execute(
                        "INSERT INTO videos(path, size, mtime_ns, mode, duration, model_id) VALUES (?, ?, ?, ?, ?, ?)",
                        (it["path"], it["size"], it["mtime_ns"], it["mode"], it["duration"], model_id))
                    vid = cur.lastrowid
                    con.executemany(
                        'INSERT INTO windows(video_id, slot, start, "end", thumb, model_id) VALUES (?, ?, ?, ?, ?, ?)',
                        [(vid, slot + i, float(s), float(e), t, model_id) for i, (s, e, t) in enumerate(it["windows"])])
                    slot += len(c)
                    con.execute("DELETE FROM failures WHERE path = ?", (it["path"],))
                for f in failures:
                    con.execute("DELETE FROM videos WHERE path = ?", (f.path,))
                    con.execute("INSERT OR REPLACE INTO failures(path, size, mtime_ns, mode, reason) VALUES (?, ?, ?, ?, ?)",
                                (f.path, f.size, f.mtime_ns, f.mode, f.reason))
                for p in clear_failures:
                    con.execute("DELETE FROM failures WHERE path = ?", (p,))
                self.meta["slots"] = base + total
                self.meta["commits"] = int(self.meta.get("commits", 0)) + 1
                self._put_meta({"slots": self.meta["slots"], "commits": self.meta["commits"]})
                con.execute("COMMIT")
            except BaseException:
                self.meta["slots"] = base
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

    def delete_videos(self, paths: Iterable[bytes]) -> int:
        """Drop videos (their windows become dead slots) and failures of vanished files, in one transaction."""
        paths = list(paths)
        if not paths:
            return 0
        with self._mutex:
            self.con.execute("BEGIN IMMEDIATE")
            n = 0
            for p in paths:
                n += self.con.execute("DELETE FROM videos WHERE path = ?", (p,)).rowcount
                self.con.execute("DELETE FROM failures WHERE path = ?", (p,))
            self.meta["commits"] = int(self.meta.get("commits", 0)) + 1
            self._put_meta({"commits": self.meta["commits"]})
            self.con.execute("COMMIT")
            return n

    def record_failures(self, failures: Sequence[FailureRow]) -> None:
        if failures:
            self.replace_videos([], failures)

    def compact(self, *, force: bool = False) -> bool:
        """Copy the live vectors to a new generation when dead slots pass the threshold; True if it did."""
        with self._mutex:
            slots, live = self.slots, self.live
            dead = slots - live
            if not force and (dead < COMPACT_MIN_DEAD or dead < COMPACT_DEAD_FRACTION * slots):
                return False
            if dead == 0:
                return False
            rows = self.con.execute("SELECT id, slot FROM windows ORDER BY slot").fetchall()
            gen = int(self.meta["generation"]) + 1
            new_path = self.root / vectors_name(gen)
            old = np.memmap(self.vpath, dtype=self.np_dtype, mode="r", offset=HEADER, shape=(slots, self.dim)) \
                if slots else np.zeros((0, self.dim), self.np_dtype)
            with open(new_path, "wb") as fh:
                _write_header(fh, self.dim, self.meta["dtype"])
                step = 65536
                order = np.asarray([r[1] for r in rows], np.int64)
                for i in range(0, len(order), step):
                    fh.write(np.ascontiguousarray(old[order[i : i + step]]).tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            del old
            fsync_dir(self.root)
            con = self.con
            con.execute("BEGIN IMMEDIATE")
            try:
                # ascending old slots map to ascending new slots <= old: no UNIQUE clash mid-update
                con.executemany("UPDATE windows SET slot = ? WHERE id = ?", [(i, r[0]) for i, r in enumerate(rows)])
                self.meta.update(generation=gen, slots=len(rows), commits=int(self.meta.get("commits", 0)) + 1)
                self._put_meta({"generation": gen, "slots": len(rows), "commits": self.meta["commits"]})
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                self.meta.update(generation=gen - 1, slots=slots)
                _unlink(new_path)
                raise
            old_path = self.vpath
            self.vfh.close()
            self.vpath = new_path
            self.vfh = open(new_path, "r+b")
            _unlink(old_path)  # readers that mapped it keep their pages; late ones retry (read_snapshot)
            self._remove_stale_generations()
            return True

    def close(self) -> None:
        try:
            self.vfh.close()
            self.con.close()
        finally:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _has_meta(con: sqlite3.Connection) -> bool:
    try:
        return con.execute("SELECT count(*) FROM meta").fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False


def _take_lock(root: Path) -> int:
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = ""
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            pass
        os.close(fd)
        raise IndexLockedError(
            f"{root} is being written by another `clipvip index`{f' (pid {holder})' if holder else ''}; "
            f"only one writer at a time: wait for it to finish, then run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
