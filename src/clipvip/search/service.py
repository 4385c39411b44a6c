"""What the HTTP server asks of an index, without HTTP: searches as JSON-ready dicts, and video files re-checked.

:class:`SearchService` sits between :class:`clipvip.search.engine.SearchEngine` (the one search API) and
``clipvip.search.serve`` (the web stack). It exists so that the two jobs a server adds on top of the
engine can be tested without a socket:

* **Follow the index.** ``clipvip index`` may commit while the server runs; :meth:`SearchService.refresh`
  calls the engine's cheap ``refresh()`` at most once per ``refresh_interval`` seconds, so a new video
  becomes searchable without a restart.
* **Never trust a path twice.** A video folder can change after indexing: a symlink re-pointed at
  ``/etc/passwd``, a file replaced by a bigger one. :meth:`SearchService.open_video` resolves the file
  *now*, refuses it unless its real path lies inside the video folder's real path (404) and its size and
  modification time are the indexed ones (409), and opens it without following a last-moment symlink.
  On Linux it re-reads the opened descriptor's path from ``/proc/self/fd`` so that a directory swapped
  between the check and the ``open`` is caught too.
"""

from __future__ import annotations

import math
import mimetypes
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_QUERY_CHARS = 1000

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = Path("/proc/self/fd")


class Unavailable(Exception):
    """A file the index names cannot be served; ``status`` is the HTTP status that says why (404 or 409)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class OpenedVideo:
    """A verified, open video file. ``read_path`` reopens *the same file* (``/proc/self/fd/N`` on Linux);
    the caller owns ``fd`` and must close it (:meth:`close`)."""

    fd: int
    stat: os.stat_result
    read_path: str
    media_type: str
    display: str

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class SearchService:
    """An engine plus the re-checks and refreshes a long-running server needs (thread-safe).

    Give either ``engine`` (anything with the ``SearchEngine`` interface, e.g. for tests) or ``index_dir``
    (then ``pipeline``, ``backend``, ``device`` and ``tokenizer`` go to ``SearchEngine``).
    """

    def __init__(self, index_dir: str | Path | None = None, pipeline: Any = None, *, engine: Any = None,
                 backend: str = "auto", device: str | None = None, tokenizer: Any = None,
                 refresh_interval: float = 1.0):
        if engine is None:
            if index_dir is None:
                raise ValueError("SearchService needs an index directory or an engine")
            from clipvip.search.engine import SearchEngine

            engine = SearchEngine(index_dir, pipeline, backend=backend, device=device, tokenizer=tokenizer)
        self.engine = engine
        self.refresh_interval = float(refresh_interval)
        self._refresh_lock = threading.Lock()
        self._last_refresh = time.monotonic()

    def __len__(self) -> int:
        return len(self.engine)

    # ------------------------------------------------------------------ index snapshot
    def refresh(self, force: bool = False) -> bool:
        """Follow a newer commit of the index (at most once per ``refresh_interval``); True if it moved.

        A failing refresh (an index being rebuilt by hand, a damaged file) keeps the current snapshot and
        re-raises: the caller decides whether that request fails.
        """
        now = time.monotonic()
        if not force and now - self._last_refresh < self.refresh_interval:
            return False
        if not self._refresh_lock.acquire(blocking=False):
            return False  # another request is refreshing right now; this one uses the current snapshot
        try:
            self._last_refresh = now
            return bool(self.engine.refresh())
        finally:
            self._refresh_lock.release()

    def health(self) -> dict[str, Any]:
        eng = self.engine
        meta = eng.meta or {}
        return {"status": "ok", "videos": len(eng), "windows": eng.num_windows, "model_id": eng.model_id,
                "model_spec": meta.get("model_spec"), "dim": meta.get("dim")}

    # ------------------------------------------------------------------ search
    def search(self, text: str, k: int = 10, **filters: Any) -> list[dict[str, Any]]:
        """Top-``k`` hits for ``text`` as JSON-ready dicts (``Hit.to_dict()``), best first.

        ``filters``: ``all_windows``, ``under``, ``min_duration``, ``max_duration`` (see ``SearchEngine``).
        Raises ``ValueError`` for a bad query, ``k`` or filter.
        """
        return self.search_many([text], k, **filters)[0]

    def search_many(self, texts: list[str], k: int = 10, **filters: Any) -> list[list[dict[str, Any]]]:
        """:meth:`search` for several texts (one encoder batch)."""
        hits = self.engine.search(list(texts), k, **filters)
        return [[finite(h.to_dict()) for h in per_query] for per_query in hits]

    # ------------------------------------------------------------------ files
    def thumb(self, window_id: int) -> Path:
        """The thumbnail file of a window; :class:`Unavailable` (404) when there is none."""
        try:
            path = self.engine.thumb_file(window_id)
        except (KeyError, IndexError, OverflowError):
            raise Unavailable(404, f"no window {window_id} in the index") from None
        if path is None or not Path(path).is_file():
            raise Unavailable(404, f"window {window_id} has no thumbnail")
        return Path(path)

    def open_video(self, video_id: int) -> OpenedVideo:
        """Open the file of ``video_id`` after re-checking it (see the module docstring).

        Raises :class:`Unavailable`: 404 (not in the index, gone, not a regular file, or its real path is
        outside the video folder now), 409 (size or modification time differ from the indexed ones).
        """
        try:
            vf = self.engine.video_file(video_id)
        except (KeyError, IndexError, OverflowError):
            raise Unavailable(404, f"no video {video_id} in the index") from None
        root = os.path.realpath(os.fsencode(vf.root))
        link = os.fsencode(vf.root) + b"/" + bytes(vf.relpath)
        real = os.path.realpath(link)
        if not _inside(real, root):
            raise Unavailable(404, f"video {video_id} ({vf.display}) now resolves outside the video folder")
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise Unavailable(404, f"video {video_id} ({vf.display}) is no longer on disk") from None
        except OSError as exc:  # ELOOP: the last component became a symlink after realpath; EACCES; ...
            raise Unavailable(404, f"video {video_id} ({vf.display}) cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unavailable(404, f"video {video_id} ({vf.display}) is not a regular file any more")
            read_path = real.decode("utf-8", "surrogateescape") if isinstance(real, bytes) else real
            proc = _PROC_FD / str(fd)
            if _PROC_FD.is_dir():
                opened = os.readlink(os.fsencode(proc))
                if not _inside(opened, root):  # a directory was swapped between realpath() and open()
                    raise Unavailable(404, f"video {video_id} ({vf.display}) now resolves outside the video folder")
                read_path = str(proc)
            if st.st_size != vf.size or st.st_mtime_ns != vf.mtime_ns:
                raise Unavailable(409, f"video {video_id} ({vf.display}) changed since it was indexed "
                                       f"(size {st.st_size} vs {vf.size}, mtime_ns {st.st_mtime_ns} vs "
                                       f"{vf.mtime_ns}); re-run `clipvip index`")
        except BaseException:
            os.close(fd)
            raise
        media_type = mimetypes.guess_type(vf.display)[0] or "application/octet-stream"
        return OpenedVideo(fd=fd, stat=st, read_path=read_path, media_type=media_type, display=vf.display)


def _inside(path: bytes, root: bytes) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both already resolved, bytes)."""
    root = root.rstrip(b"/") or b"/"
    return path == root or path.startswith(root + b"/") or root == b"/"


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``, so ``json.dumps`` always
    produces valid JSON (the JSON grammar has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
