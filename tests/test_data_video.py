"""Decoding: exact counts, seeking == sequential decode, sampling protocol, bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clipvip.data import VideoDecodeError
from clipvip.data.video import decode_all, load_clip, load_frames, open_video, read_info, sample_indices, window_range
from conftest import asset


def _encode(path: Path, fmt: str, codec: str, n: int = 24, w: int = 48, h: int = 32, rate: int = 12,
            pix: str = "yuv420p", opts: dict | None = None) -> Path:
    """A clip whose frames differ (moving bar + per-frame colour) so index mix-ups are visible."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix
        if opts:
            s.options = opts
        for i in range(n):
            a = np.full((h, w, 3), 40, np.uint8)
            a[..., 0] = (i * 9) % 256
            a[:, (i * 2) % w] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        # h264 with B-frames and a keyframe every 5 frames: seeking has work to do.
        "h264.mp4": _encode(d / "h264.mp4", "mp4", "libx264", opts={"g": "5", "bf": "2"}),
        "mpeg4.avi": _encode(d / "mpeg4.avi", "avi", "mpeg4", opts={"g": "6"}),
        # Matroska stores no frame count: read_info must count.
        "vp9.webm": _encode(d / "vp9.webm", "webm", "libvpx-vp9", n=14, opts={"g": "4"}),
        "mjpeg.mkv": _encode(d / "mjpeg.mkv", "matroska", "mjpeg", pix="yuvj420p"),
    }


@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.avi", "vp9.webm", "mjpeg.mkv"])
def test_seeking_fetch_equals_sequential_decode(clips, name):
    path = clips[name]
    full = decode_all(path)
    info = read_info(path)
    assert info.num_frames == len(full)
    assert (info.width, info.height) == (48, 32)
    reader = open_video(path)
    try:
        order = list(range(len(full)))[::-1] + [3, 3, 0]  # backwards, repeats: every frame by seeking
        assert np.array_equal(reader.get_frames(order), full[order].numpy())
    finally:
        reader.close()
    for t, sampling, seed in [(12, "uniform", None), (5, "jitter", 1), (7, "jitter", 2)]:
        got = load_frames(path, t, sampling, rng=np.random.default_rng(seed) if seed else None)
        idx = sample_indices(len(full), t, sampling, np.random.default_rng(seed) if seed else None)
        assert got.dtype == torch.uint8 and got.shape == (t, 32, 48, 3)
        assert torch.equal(got, full[idx])


def test_container_without_frame_count_is_counted(clips):
    with av.open(str(clips["vp9.webm"])) as c:
        assert c.streams.video[0].frames == 0  # the container does not know
    info = read_info(clips["vp9.webm"])
    assert info.num_frames == 14 and info.fps == pytest.approx(12.0)
    assert info.duration == pytest.approx(14 / 12, abs=1e-3)


REAL = [("videos/video9770.mp4", 330), ("videos/video9771.mp4", 419), ("videos/parakeet-ladder.mp4", 245),
        ("videos/more/vid1.mp4", 56), ("videos/more/example1.mp4", 40), ("videos/more/video7500.mp4", 50)]


@pytest.mark.parametrize("rel,count", REAL)
def test_real_files_count_and_seek(rel, count):
    path = asset(rel)
    info = read_info(path)
    assert info.num_frames == count  # vid1 claims 74 (edit list), parakeet claims none
    full = decode_all(path)
    assert len(full) == count
    got = load_frames(path, 12, "jitter", rng=np.random.default_rng(3))
    assert torch.equal(got, full[sample_indices(count, 12, "jitter", np.random.default_rng(3))])


def test_real_file_fps_duration():
    info = read_info(asset("videos/video9771.mp4"))
    assert info.fps == pytest.approx(30000 / 1001)
    assert info.duration == pytest.approx(419 / (30000 / 1001), abs=0.01)
    assert (info.width, info.height) == (320, 240)


def test_uniform_sampling_is_truncated_linspace():
    # Hand-worked: linspace(0, 329, 12) = 0, 29.9, 59.8, ..., 329 -> truncated.
    assert sample_indices(330, 12).tolist() == [0, 29, 59, 89, 119, 149, 179, 209, 239, 269, 299, 329]
    assert sample_indices(5, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]  # N < T repeats
    assert sample_indices(9, 1).tolist() == [4]  # T = 1: middle frame


def test_jitter_sampling_ranges_and_determinism():
    n, t = 100, 12
    interval = int(n / (t - 1))  # 9
    starts, ends = set(), set()
    for seed in range(200):
        idx = sample_indices(n, t, "jitter", np.random.default_rng(seed))
        assert len(idx) == t and np.all(np.diff(idx) >= 0)
        assert 0 <= idx[0] <= interval and n - 1 - interval <= idx[-1] <= n - 1
        starts.add(int(idx[0]))
        ends.add(int(idx[-1]))
    assert len(starts) > 5 and len(ends) > 5
    a = sample_indices(n, t, "jitter", np.random.default_rng(7))
    b = sample_indices(n, t, "jitter", np.random.default_rng(7))
    assert np.array_equal(a, b)
    for n in (1, 2, 3):  # tiny videos never index out of range
        for seed in range(20):
            idx = sample_indices(n, 2, "jitter", np.random.default_rng(seed))
            assert idx.min() >= 0 and idx.max() < n


def test_clip_window(clips):
    path = clips["h264.mp4"]  # 24 frames at 12 fps: frame i at i/12 s
    full = decode_all(path)
    times = [i / 12 for i in range(24)]
    assert window_range(times, 0.5, 1.0) == (6, 13)
    got = load_frames(path, 4, "uniform", start=0.5, end=1.0)
    assert torch.equal(got, full[[6, 8, 10, 12]])
    assert window_range(times, 5.0, 6.0) == (23, 24)  # past the end: nearest frame, never empty
    frames, middle = load_clip(path, 3, start=0.5, end=1.0, with_middle=True)
    assert torch.equal(middle, full[[6 + 7 // 2]])


def test_middle_frame_is_n_half_of_the_clip(clips):
    full = decode_all(clips["mjpeg.mkv"])
    frames, middle = load_clip(clips["mjpeg.mkv"], 5, "jitter", rng=0, with_middle=True)
    assert middle.shape == (1, 32, 48, 3)
    assert torch.equal(middle[0], full[len(full) // 2])


def test_image_is_one_frame_video(tmp_path):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    info = read_info(tmp_path / "x.png")
    assert (info.num_frames, info.width, info.height) == (1, 30, 20)
    got = load_frames(tmp_path / "x.png", num_frames=3)
    assert got.shape == (3, 20, 30, 3) and all(torch.equal(g, torch.from_numpy(arr)) for g in got)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, clips) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    data = clips["h264.mp4"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) is lost
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    with av.open(str(d / "audio.m4a"), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {"truncated": d / "truncated.mp4", "empty": d / "empty.mp4", "text": d / "text.mp4",
            "audio": d / "audio.m4a", "missing": d / "missing.mp4", "folder": d}


@pytest.mark.parametrize("kind,reason", [("truncated", "not a readable media file"), ("empty", "empty file"),
                                         ("text", "not a readable media file"), ("audio", "no video stream"),
                                         ("missing", "file not found"), ("folder", "directory")])
def test_bad_input_raises_video_decode_error(bad_files, kind, reason):
    path = bad_files[kind]
    for fn in (read_info, load_frames):
        with pytest.raises(VideoDecodeError) as err:
            fn(path)
        assert err.value.path == str(path)
        assert reason in err.value.reason
        assert str(path) in str(err.value) and isinstance(err.value, RuntimeError)


def test_truncated_faststart_file_raises(tmp_path):
    """moov first, media data cut: the index promises frames the file no longer holds."""
    src = _encode(tmp_path / "fs.mp4", "mp4", "libx264", n=40, w=64, h=64,
                  opts={"g": "5", "movflags": "+faststart", "crf": "0"})
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(VideoDecodeError) as err:
        load_frames(cut, 8)
    assert err.value.path == str(cut)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video("x.mp4", backend="nope")


@pytest.mark.skipif(importlib.util.find_spec("decord") is None, reason="decord not installed (optional extra)")
def test_decord_backend_matches_pyav():
    # decord 0.6 fails on odd widths such as 48 px ("size must exactly match"), so use a real clip.
    path = asset("videos/video9770.mp4")
    info = read_info(path, backend="decord")
    assert info.num_frames == 330
    a = load_frames(path, 6, backend="decord").int()
    b = load_frames(path, 6).int()
    # Same frames; the two libraries' YUV->RGB conversions may differ by a few levels.
    assert (a - b).abs().float().mean() < 3.0


# ------------------------------------------------------------------------------------------------------
# Truncation (issue 11 item 5): a file cut exactly at a packet boundary demuxes cleanly into fewer frames;
# only the container's promise (its duration header) tells that something is missing.
def _cut_at_packet(src: Path, dst: Path, k: int) -> Path:
    """``dst`` = the bytes of ``src`` up to (not including) its ``k``-th video packet."""
    with av.open(str(src)) as c:
        pos = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
    dst.write_bytes(src.read_bytes()[: pos[k]])
    return dst


def _encode_faststart(path: Path, n: int) -> Path:
    """An mp4 whose index (moov) comes first, so a cut file still opens and promises every frame."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 32, 32, "yuv420p", {"g": "30"}
        for i in range(n):
            a = np.full((32, 32, 3), 40, np.uint8)
            a[..., 0] = (i * 9) % 256
            a[:, i % 32] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_truncated_at_a_packet_boundary_is_reported_and_the_readable_part_used(tmp_path, caplog, ext):
    # mkv: the segment header keeps the duration, clusters after the cut are simply absent;
    # mp4 with the index first (faststart): the index promises 330 samples, the data of 220 is gone.
    full = (_encode(tmp_path / "full.mkv", "matroska", "libx264", n=330, w=32, h=32, rate=30, opts={"g": "30"})
            if ext == "mkv" else _encode_faststart(tmp_path / "full.mp4", 330))
    cut = _cut_at_packet(full, tmp_path / f"cut.{ext}", 110)
    whole = read_info(full)
    assert (whole.num_frames, whole.truncated, whole.promised_frames) == (330, False, 330)
    info = read_info(cut)
    assert info.num_frames == 110 and info.truncated
    assert info.promised_duration == pytest.approx(11.0) and info.promised_frames == 330
    assert info.duration == pytest.approx(110 / 30, abs=1e-3)
    with caplog.at_level("WARNING", logger="clipvip.data.video"):
        frames = load_frames(cut, 4)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and str(cut) in warnings[0]
    assert "330 frames / 11.00 s" in warnings[0] and "110 frames / 3.67 s" in warnings[0]
    # The readable part is sampled: uniform indices over its 110 frames, the same pixels as the full file.
    reference = decode_all(full)
    idx = sample_indices(110, 4, "uniform")
    assert torch.equal(frames, reference[torch.as_tensor(idx)])


def test_truncated_before_the_first_packet_raises(tmp_path):
    full = _encode(tmp_path / "full.mkv", "matroska", "libx264", n=30, w=32, h=32, rate=30)
    cut = _cut_at_packet(full, tmp_path / "cut.mkv", 0)
    for fn in (read_info, load_frames):
        with pytest.raises(VideoDecodeError) as err:
            fn(cut)
        assert err.value.path == str(cut)


def test_real_files_are_not_truncated():
    from conftest import ASSETS

    files = sorted((ASSETS / "videos").rglob("*.mp4"))
    if not files:
        pytest.skip("no real videos under ../shared/assets/videos")
    for f in files:  # includes vid1.mp4 (an edit list hides 18 of 74 samples) and fragmented parakeet-ladder
        info = read_info(f)
        assert not info.truncated and info.promised_frames == info.num_frames, f.name
