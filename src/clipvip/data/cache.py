"""Decoded-clip cache: decode each clip once, then read frames instead of video files.

Training repeats epochs over the same clips (MSR-VTT fine-tuning: 9k clips, many epochs); with
deterministic frame sampling every epoch decodes exactly the same frames again, so decoding dominates a
small model's step. A cache keeps the **decoded uint8 frames** (what :func:`clipvip.data.video.load_clip`
returns, before resizing and normalisation), so the transform applied after it is unchanged and a cached
item is bit-for-bit the item a fresh decode gives (tested).

Two stores, one interface (:class:`ClipCache`):

* :class:`MemoryClipCache`: a dict in this process, bounded in bytes (least recently used clips leave
  first). For small sets: the demo's world, tests. Caches opened by name (``open_cache("memory")``) are
  shared by every dataset of the process, so the successive runs of one program decode a clip once.
  With DataLoader workers each worker holds its own copy.
* :class:`DiskClipCache`: one ``.npy`` file (uint8, no pickled objects) per clip under a folder, written
  atomically (:mod:`clipvip.atomic`), so a killed run never leaves a torn entry and several processes
  (DDP ranks, DataLoader workers) can fill the same folder. A file that cannot be read back is treated as
  a miss and rewritten.

**Key**: the resolved file path, its size and modification time (ns), the number of frames, the sampling,
the ``[start, end]`` window, whether the middle frame is included and the backend. Editing or replacing a
video changes its size or mtime, so a stale entry is never served; the image size is not part of the key
because the cache holds the frames before the resize.

**Sampling**: only deterministic sampling (``uniform``) can be cached. ``jitter`` and ``random`` draw new
frames every epoch; caching one draw would silently freeze the augmentation, so datasets refuse the
combination (:func:`check_cacheable`).

Storage is at the decoded resolution: MSR-VTT's 320x240 clips at 12 frames are ~2.8 MB each, ~25 GB for
the 9k training clips; 32x32 synthetic clips at 8 frames are 24 KB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from clipvip.atomic import atomic_save_npy

log = logging.getLogger(__name__)

__all__ = [
    "CACHEABLE_SAMPLINGS",
    "ClipCache",
    "DiskClipCache",
    "MemoryClipCache",
    "cached_load_clip",
    "check_cacheable",
    "clip_key",
    "open_cache",
]

#: Samplings whose frames depend only on the file (so a cached decode equals a fresh one).
CACHEABLE_SAMPLINGS = ("uniform",)

Frames = tuple[torch.Tensor, "torch.Tensor | None"]


class ClipCache(Protocol):
    """What a dataset needs from a cache: ``get`` a decoded clip by key (None on a miss), ``put`` one."""

    def get(self, key: str) -> Frames | None: ...

    def put(self, key: str, frames: torch.Tensor, middle: torch.Tensor | None) -> None: ...


def check_cacheable(sampling: str) -> None:
    """Refuse a random sampling with a cache (see the module docstring), naming the remedy."""
    if sampling not in CACHEABLE_SAMPLINGS:
        raise ValueError(
            f"a decoded-clip cache needs deterministic frame sampling ({', '.join(CACHEABLE_SAMPLINGS)}); "
            f"sampling={sampling!r} draws new frames every epoch and a cache would freeze them. "
            f"Use sampling 'uniform' (data.sampling=uniform) or no cache (data.cache=null)"
        )


def clip_key(path: str | os.PathLike[str], num_frames: int, sampling: str, start: float | None = None,
             end: float | None = None, *, with_middle: bool = False, backend: str = "pyav") -> str:
    """A hex digest naming one decoded clip of one version of a file.

    Raises ``OSError`` when the file cannot be stat'ed (the caller decodes, which reports the real error).
    """
    p = Path(path).resolve()
    st = p.stat()
    fields = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frames": int(num_frames),
              "sampling": sampling, "start": start, "end": end, "middle": bool(with_middle), "backend": backend}
    # surrogateescape: non-UTF-8 file names hash by their bytes instead of failing
    raw = json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()


def _nbytes(frames: torch.Tensor, middle: torch.Tensor | None) -> int:
    return frames.numel() * frames.element_size() + (0 if middle is None else middle.numel() * middle.element_size())


class MemoryClipCache:
    """Decoded clips in a dict, at most ``max_bytes`` in total (least recently used evicted first)."""

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Frames] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Frames | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, frames: torch.Tensor, middle: torch.Tensor | None) -> None:
        size = _nbytes(frames, middle)
        if size > self.max_bytes:
            return  # one clip larger than the whole budget: not worth evicting everything for
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= _nbytes(*old)
            self._items[key] = (frames, middle)
            self.nbytes += size
            while self.nbytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= _nbytes(*dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


class DiskClipCache:
    """Decoded clips as uint8 ``.npy`` files under ``root`` (``root/ab/abcdef....npy``), written atomically.

    A clip with its middle frame is stored as ``num_frames + 1`` frames, the middle one last (the
    file name says which: ``.m.npy``). Files follow the umask; folders are created on first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"clip cache {self.root}: exists and is not a directory")
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str, with_middle: bool = False) -> Path:
        """The entry's file; a clip stored with its middle frame ends in ``.m.npy``."""
        return self.root / key[:2] / (f"{key}.m.npy" if with_middle else f"{key}.npy")

    def get(self, key: str) -> Frames | None:
        for with_middle in (False, True):  # a key names one layout; at most one of the two files exists
            path = self.path_for(key, with_middle)
            try:
                arr = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, EOFError) as exc:
                log.warning("clip cache %s: unreadable entry (%s); decoding the clip again", path, exc)
                break
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 + with_middle:
                log.warning("clip cache %s: unexpected entry %s %s; decoding the clip again", path, arr.dtype,
                            arr.shape)
                break
            self.hits += 1
            frames = torch.from_numpy(arr)
            return (frames[:-1], frames[-1:]) if with_middle else (frames, None)
        self.misses += 1
        return None

    def put(self, key: str, frames: torch.Tensor, middle: torch.Tensor | None) -> None:
        data = frames if middle is None else torch.cat([frames, middle])
        atomic_save_npy(self.path_for(key, middle is not None), data.contiguous().numpy())


_SHARED: dict[str, MemoryClipCache] = {}


def open_cache(spec: str | None) -> ClipCache | None:
    """A cache from a recipe string: ``None``/``"none"`` (no cache), ``"memory"`` (the process-wide shared
    memory cache, 4 GiB), ``"memory:SIZE_MB"``, or ``"disk:DIR"`` (``DIR`` relative to the working
    directory unless absolute)."""
    if spec is None:
        return None
    spec = str(spec).strip()
    if spec.lower() in ("", "none", "null", "off", "false"):
        return None
    kind, _, arg = spec.partition(":")
    if kind == "memory":
        if arg:
            try:
                max_bytes = int(float(arg) * (1 << 20))
            except ValueError:
                raise ValueError(f"clip cache {spec!r}: memory size must be a number of MB, got {arg!r}") from None
        else:
            max_bytes = 4 << 30
        key = f"memory:{max_bytes}"
        if key not in _SHARED:
            _SHARED[key] = MemoryClipCache(max_bytes)
        return _SHARED[key]
    if kind == "disk":
        if not arg:
            raise ValueError(f"clip cache {spec!r}: give a folder, e.g. disk:/data/clip-cache")
        return DiskClipCache(arg)
    raise ValueError(f"clip cache {spec!r}: expected 'memory', 'memory:SIZE_MB' or 'disk:DIR'")


def cached_load_clip(cache: ClipCache | None, path: str | os.PathLike[str], num_frames: int, sampling: str,
                     start: float | None = None, end: float | None = None, *, backend: str = "pyav",
                     rng: object = None, with_middle: bool = False) -> Frames:
    """:func:`clipvip.data.video.load_clip` through ``cache`` (decoding and storing on a miss).

    Decode errors propagate unchanged (nothing is cached for a bad file). Without a cache, or with a
    random sampling, this is ``load_clip`` itself.
    """
    from clipvip.data.video import load_clip

    if cache is None or sampling not in CACHEABLE_SAMPLINGS:
        return load_clip(path, num_frames, sampling, start, end, backend=backend, rng=rng, with_middle=with_middle)
    try:
        key = clip_key(path, num_frames, sampling, start, end, with_middle=with_middle, backend=backend)
    except OSError:
        # Missing/unreadable file: let the decoder raise its VideoDecodeError naming the file and reason.
        return load_clip(path, num_frames, sampling, start, end, backend=backend, rng=rng, with_middle=with_middle)
    hit = cache.get(key)
    if hit is not None and hit[0].shape[0] == num_frames and (hit[1] is not None) == with_middle:
        return hit
    frames, middle = load_clip(path, num_frames, sampling, start, end, backend=backend, rng=rng,
                               with_middle=with_middle)
    try:
        cache.put(key, frames, middle)
    except OSError as exc:
        # A full or read-only cache folder costs speed, not correctness: keep training on decoded frames.
        global _PUT_FAILURES
        _PUT_FAILURES += 1
        if _PUT_FAILURES == 1 or _PUT_FAILURES % 1000 == 0:
            log.warning("clip cache: cannot store %s (%s); continuing without caching it (%d such failures)",
                        path, exc, _PUT_FAILURES)
    return frames, middle


_PUT_FAILURES = 0
