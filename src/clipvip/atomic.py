"""Atomic file writes: files that matter (checkpoints' metadata, indexes, manifests, tables, plots) must
never be seen half-written, even if the process is killed at any instant.

Every write goes to a temporary file in the destination's folder (same file system), is flushed and
fsynced, then moved over the old file with ``os.replace``, which is atomic on POSIX and Windows. Readers
see the old or the new version, never a torn one; a failed write leaves the old file and no temporary.
This is the one implementation the package uses.

File modes follow the umask: ``mkstemp``/``mkdtemp`` create 0600 files and 0700 folders whatever the umask,
so every temporary made here is given the mode a plain ``open``/``mkdir`` would have had (0666/0777 less
the umask) before it is published; outputs shared on a team disk stay readable by the team.

Ownership markers: commands that replace a folder (``clipvip demo --out``, ``clipvip convert --overwrite``,
the synthetic world of a recipe) only ever replace folders they wrote themselves, recognised by a small
marker file (:func:`mark_owned`), never a folder a user made or filled.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


_UMASK_LOCK = threading.Lock()
OWNER_FILE = ".clipvip-owner.json"


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; best effort where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without leaving it changed (``os.umask`` can only be read by setting it).

    Linux exposes it in ``/proc/self/status``; elsewhere it is set and restored under a lock so that
    threads of this package never create a file in the instant it is 0.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~current_umask()


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the umask's folder mode instead of 0700 (see the module doc)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, dir_mode())
    return path


def follow_umask(folder: str | Path) -> None:
    """Give ``folder`` and everything under it the umask's modes (for trees written by libraries such as
    safetensors, which create 0600 files whatever the umask). Symlinks are left alone."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), dmode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), fmode)


# ------------------------------------------------------------------------------------------ ownership
def mark_owned(folder: str | Path, kind: str) -> None:
    """Record that ``folder`` was written by ``kind`` (e.g. ``"clipvip demo"``) and may be replaced by it."""
    atomic_write_json(Path(folder) / OWNER_FILE, {"written_by": kind})


def is_owned(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` carries the marker of ``kind`` (an unreadable or foreign marker counts as no)."""
    try:
        data = json.loads((Path(folder) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == kind


def check_replaceable(folder: str | Path, kind: str) -> None:
    """Raise ``FileExistsError`` unless ``folder`` is absent, empty, or carries ``kind``'s marker.

    Called *before* a command starts work that ends by replacing ``folder``, so a refusal costs nothing.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder written by {kind}; refusing to replace it "
                              f"(move it away or choose another output folder)")
    if any(True for _ in folder.iterdir()) and not is_owned(folder, kind):
        raise FileExistsError(f"{folder} exists and was not written by {kind} (no {OWNER_FILE} marker); "
                              f"refusing to replace it (move it away or choose another output folder)")


def remove_owned(folder: str | Path, kind: str) -> None:
    """Delete ``folder`` if :func:`check_replaceable` allows it (absent: nothing to do)."""
    import shutil

    folder = Path(folder)
    check_replaceable(folder, kind)
    if folder.exists():
        shutil.rmtree(folder)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"`` (bytes). On an exception the temporary file is
    removed and ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp made it 0600 whatever the umask
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """Replace ``path`` with ``obj`` as indented JSON (UTF-8, non-ASCII kept), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def atomic_save_npy(path: str | Path, array: Any) -> None:
    """Replace ``path`` with a ``.npy`` of ``array`` atomically (no pickled objects)."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
