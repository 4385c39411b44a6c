"""Fast shard reading (issue 3): packet-selective decoding, all-intra shards, stored frame counts.

References are independent of the code under test: a plain sequential PyAV decode with
``frame.to_ndarray(format="rgb24")`` (``decode_all``) and the packets' own flags as demuxed by PyAV.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clipvip.data import VideoDecodeError
from clipvip.data.annotations import write_jsonl
from clipvip.data.shards import ShardDataset, iter_tar_samples, reencode_video, write_shards
from clipvip.data.video import decode_all, load_clip, load_frames, open_video, sample_indices


def _encode(path: Path, n: int, opts: dict, w: int = 64, h: int = 48, rate: int = 30) -> Path:
    """h264 clip whose frames all differ (moving bar, per-frame colour), so index mix-ups show."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = opts
        for i in range(n):
            a = np.full((h, w, 3), 30, np.uint8)
            a[..., 1] = (i * 7) % 256
            a[:, (i * 3) % w] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    # 4 s at 30 fps with B-frames and a 2 s GOP: a typical web encode.
    return _encode(tmp_path_factory.mktemp("src") / "src.mp4", 120, {"g": "60", "bf": "2"})


def _packet_flags(data: bytes) -> tuple[list[bool], list[int]]:
    with av.open(io.BytesIO(data)) as c:
        pk = [p for p in c.demux(video=0) if p.size]
        return [bool(p.is_keyframe) for p in pk], [int(p.pts) for p in pk]


def test_shard_encode_is_all_intra_without_reordering(source):
    data = reencode_video(source, fps=3, short_side=None)
    keys, pts = _packet_flags(data)
    assert len(keys) == 12 and all(keys)  # 4 s at 3 fps, every frame a keyframe
    assert pts == sorted(pts)  # decode order == presentation order: no B-frames
    old = reencode_video(source, fps=3, short_side=None, gop=None, fast_decode=False)
    keys, pts = _packet_flags(old)
    assert keys[0] and not all(keys) and pts == sorted(pts)  # 2 s GOP (plus x264 scene cuts)


@pytest.mark.parametrize("opts", [{"g": "1"}, {"g": "4", "bf": "0"}, {"g": "1", "tune": "fastdecode"}])
def test_packet_selective_decoding_equals_full_decode(tmp_path, opts):
    path = _encode(tmp_path / "c.mp4", 30, opts)
    full = decode_all(path)
    buf = io.BytesIO(path.read_bytes())
    reader = open_video(buf)
    try:
        assert reader.frame_times() and reader._packets is not None  # the packet path is taken
        order = list(range(len(full)))[::-1] + [5, 5, 0, 29]
        assert np.array_equal(reader.get_frames(order), full[order].numpy())
        assert np.array_equal(reader.get_frames([7, 2]), full[[7, 2]].numpy())  # a second call works too
    finally:
        reader.close()
    for seed in range(3):
        got = load_frames(io.BytesIO(path.read_bytes()), 12, "jitter", rng=np.random.default_rng(seed))
        assert torch.equal(got, full[sample_indices(len(full), 12, "jitter", np.random.default_rng(seed))])


def test_b_frame_files_keep_the_seeking_path(source):
    reader = open_video(source)
    try:
        reader.frame_times()
        assert reader._packets is None
    finally:
        reader.close()


def test_expected_frames_is_checked(tmp_path):
    path = _encode(tmp_path / "c.mp4", 10, {"g": "1"})
    frames, _ = load_clip(path, 4, expected_frames=10)
    assert frames.shape == (4, 48, 64, 3)
    with pytest.raises(VideoDecodeError, match="10 frames but its metadata says 11"):
        load_clip(path, 4, expected_frames=11)


def test_shard_frames_equal_full_decode_of_member_and_count_is_stored(source, tmp_path):
    records = write_jsonl([{"video": str(source), "texts": ["a"], "split": "test"},
                           {"video": str(source), "texts": ["b"], "split": "test", "start": 1.0, "end": 2.5}],
                          tmp_path / "r.jsonl")
    manifest = write_shards(records, tmp_path / "shards", fps=3, short_side=None, shard_size=2, progress=False)
    assert manifest["gop"] == 1 and manifest["fast_decode"] is True
    tar = tmp_path / "shards" / "shard-000000.tar"
    samples = list(iter_tar_samples(tar))
    for key, sample in samples:
        meta = json.loads(sample["json"])
        (tmp_path / f"{key}.mp4").write_bytes(sample["mp4"])
        full = decode_all(tmp_path / f"{key}.mp4")
        assert meta["num_frames"] == len(full)  # the stored count is the real one
        got, _ = load_clip(io.BytesIO(sample["mp4"]), 12, expected_frames=meta["num_frames"])
        assert torch.equal(got, full[sample_indices(len(full), 12)])
    assert [json.loads(s["json"])["num_frames"] for _, s in samples] == [12, 5]  # 4 s and a 1.5 s window
    # The dataset checks the stored count: a wrong one is reported as a failure naming the member.
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w", format=tarfile.USTAR_FORMAT) as out:
        for key, sample in samples[:1]:
            meta = json.loads(sample["json"])
            meta["num_frames"] += 1
            for ext, data in (("mp4", sample["mp4"]), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    ds = ShardDataset([bad], task="eval", num_frames=4, image_size=8)
    assert list(ds) == [None]
    assert "metadata says 13" in ds.failures[0][1] and "bad.tar#" in ds.failures[0][0]


def test_real_reorder_free_h264_uses_packets_and_matches_full_decode():
    from conftest import asset

    path = asset("videos/bigbuckbunny.mp4")  # 1280x720 h264 without B-frames
    full = decode_all(path)
    reader = open_video(path)
    try:
        assert len(reader.frame_times()) == len(full) and reader._packets is not None
        order = list(range(0, len(full), 7))[::-1]
        assert np.array_equal(reader.get_frames(order), full[order].numpy())
    finally:
        reader.close()
