"""Decoded-clip cache: a cached clip is exactly the decoded clip; keys follow the file; writes are atomic."""

from __future__ import annotations

import os
import time

import av
import numpy as np
import pytest
import torch

from clipvip.data import cache as C
from clipvip.data.datasets import PretrainDataset, RetrievalEvalDataset
from clipvip.data.video import load_clip


def _write_clip(path, seed: int, frames: int = 10, size: int = 24) -> None:
    """A small lossless (ffv1) clip of random frames, generated here with PyAV."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "bgr0"
        for _ in range(frames):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture()
def clips(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"clip{i}.mkv"
        _write_clip(p, seed=i)
        paths.append(p)
    return paths


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_cached_items_equal_decoded_items(clips, tmp_path, kind):
    records = [{"video": str(p), "id": p.stem, "texts": ["a"], "subtitle": "s", "caption": None} for p in clips]
    cache = C.MemoryClipCache() if kind == "memory" else C.DiskClipCache(tmp_path / "cache")
    for cls in (RetrievalEvalDataset, PretrainDataset):
        plain = cls(records, num_frames=4, image_size=16, sampling="uniform")
        cached = cls(records, num_frames=4, image_size=16, sampling="uniform", cache=cache)
        for _ in range(2):  # first pass fills the cache, second reads it
            for i in range(len(records)):
                a, b = plain[i], cached[i]
                for key in ("pixel_values", "frame_pixel_values"):
                    if key in a:
                        assert torch.equal(a[key], b[key]), (cls.__name__, key)
    assert cache.hits >= 2 * len(records) and cache.misses >= 2 * len(records)
    # the cached uint8 frames are exactly load_clip's
    frames, middle = C.cached_load_clip(cache, clips[0], 4, "uniform", with_middle=True)
    ref_frames, ref_middle = load_clip(clips[0], 4, "uniform", with_middle=True)
    assert frames.dtype == torch.uint8 and torch.equal(frames, ref_frames) and torch.equal(middle, ref_middle)


def test_key_changes_with_file_and_request(clips):
    k = C.clip_key(clips[0], 4, "uniform")
    assert k == C.clip_key(str(clips[0]), 4, "uniform")
    assert len({k, C.clip_key(clips[0], 5, "uniform"), C.clip_key(clips[0], 4, "uniform", with_middle=True),
                C.clip_key(clips[0], 4, "uniform", 0.0, 0.5), C.clip_key(clips[1], 4, "uniform")}) == 5
    st = os.stat(clips[0])
    os.utime(clips[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert C.clip_key(clips[0], 4, "uniform") != k


def test_replaced_file_is_decoded_again(clips, tmp_path):
    cache = C.DiskClipCache(tmp_path / "cache")
    first, _ = C.cached_load_clip(cache, clips[0], 4, "uniform")
    time.sleep(0.01)
    _write_clip(clips[0], seed=99)  # same name, new content (new mtime)
    second, _ = C.cached_load_clip(cache, clips[0], 4, "uniform")
    assert torch.equal(second, load_clip(clips[0], 4, "uniform")[0])
    assert not torch.equal(first, second)


def test_disk_entries_are_npy_and_torn_entries_are_redecoded(clips, tmp_path):
    root = tmp_path / "cache"
    cache = C.DiskClipCache(root)
    C.cached_load_clip(cache, clips[0], 4, "uniform")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy" and not any(p.name.startswith(".") for p in files)
    arr = np.load(files[0], allow_pickle=False)
    assert arr.dtype == np.uint8 and arr.shape == (4, 24, 24, 3)
    files[0].write_bytes(files[0].read_bytes()[:40])  # torn / truncated entry
    frames, _ = C.cached_load_clip(cache, clips[0], 4, "uniform")
    assert torch.equal(frames, load_clip(clips[0], 4, "uniform")[0])
    assert np.load(files[0], allow_pickle=False).shape == (4, 24, 24, 3)  # rewritten


def test_bad_file_is_not_cached_and_raises_named_error(tmp_path):
    from clipvip.data import VideoDecodeError

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    cache = C.MemoryClipCache()
    for _ in range(2):
        with pytest.raises(VideoDecodeError, match="bad.mp4"):
            C.cached_load_clip(cache, bad, 4, "uniform")
    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        C.cached_load_clip(cache, tmp_path / "missing.mp4", 4, "uniform")
    assert len(cache) == 0


def test_random_sampling_refused_and_specs(clips, tmp_path):
    records = [{"video": str(clips[0]), "texts": ["a"]}]
    with pytest.raises(ValueError, match="uniform"):
        RetrievalEvalDataset(records, num_frames=4, image_size=16, sampling="jitter", cache=C.MemoryClipCache())
    assert C.open_cache(None) is None and C.open_cache("none") is None
    assert C.open_cache("memory") is C.open_cache("memory")  # shared within the process
    assert isinstance(C.open_cache(f"disk:{tmp_path / 'c'}"), C.DiskClipCache)
    with pytest.raises(ValueError, match="disk:DIR"):
        C.open_cache("redis://x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        C.DiskClipCache(tmp_path / "file")


def test_memory_cache_evicts_least_recently_used():
    cache = C.MemoryClipCache(max_bytes=3 * 48)
    clip = lambda v: torch.full((1, 4, 4, 3), v, dtype=torch.uint8)  # noqa: E731 - 48 bytes each
    for k in "abc":
        cache.put(k, clip(1), None)
    cache.get("a")
    cache.put("d", clip(2), None)
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 3 and cache.nbytes == 144


def test_failed_cache_write_does_not_stop_loading(clips, tmp_path, monkeypatch, caplog):
    """A full disk (ENOSPC) while storing an entry is a warning; the decoded frames are still returned."""
    import errno

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "atomic_save_npy", full)
    cache = C.DiskClipCache(tmp_path / "cache")
    frames, _ = C.cached_load_clip(cache, clips[0], 4, "uniform")
    assert torch.equal(frames, load_clip(clips[0], 4, "uniform")[0])
    assert "No space left" in caplog.text
