"""`clipvip data synth` and `clipvip data shard` end to end through the command line."""

from __future__ import annotations

import json
import tarfile

import av

from clipvip.cli import main


def _keyframe_flags(data: bytes) -> list[bool]:
    import io

    with av.open(io.BytesIO(data)) as container:
        return [bool(p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]


def test_synth_then_shard_with_gop_and_fast_decode_flags(tmp_path):
    world = tmp_path / "w"
    assert main(["data", "synth", "--out", str(world), "--num-videos", "8"]) == 0
    records = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]
    assert records

    # default: every frame a keyframe (reading a frame decodes only that frame)
    assert main(["data", "shard", str(world / "test.jsonl"), "--out", str(tmp_path / "s1"), "--fps", "4"]) == 0
    # --gop 3 --no-fast-decode: the older, smaller encoding
    assert main(["data", "shard", str(world / "test.jsonl"), "--out", str(tmp_path / "s3"), "--fps", "4",
                 "--gop", "3", "--no-fast-decode"]) == 0
    for name, gop, fast in (("s1", 1, True), ("s3", 3, False)):
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert (manifest["gop"], manifest["fast_decode"]) == (gop, fast)
        assert manifest["num_samples"] == len(records) and manifest["failures"] == []
        with tarfile.open(tmp_path / name / "shard-000000.tar") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
            flags = _keyframe_flags(tar.extractfile(member).read())
        assert len(flags) > 3
        if gop == 1:
            assert all(flags)
        else:
            assert not all(flags) and flags[0]
