"""Small JPEG thumbnails (the middle sampled frame) so the web page can show results without decoding video."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import atomic_write_bytes

THUMB_MAX_SIDE = 160


def thumbnail_jpeg(frame: Any, max_side: int = THUMB_MAX_SIDE, quality: int = 80) -> bytes:
    """Encode one uint8 ``[H, W, 3]`` frame as a JPEG whose longer side is at most ``max_side``."""
    from PIL import Image

    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"a thumbnail frame must be [H, W, 3], got shape {arr.shape}")
    image = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), mode="RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_thumbnail(path: str | Path, frame: Any, max_side: int = THUMB_MAX_SIDE) -> None:
    """Write the thumbnail atomically, so a crash never leaves a half-written JPEG behind."""
    atomic_write_bytes(Path(path), thumbnail_jpeg(frame, max_side))
