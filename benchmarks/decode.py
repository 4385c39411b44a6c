"""Decoding throughput: videos/s per core for 12-frame sampling from 320x240, 30 fps, 15 s clips.

Compares, side by side in one run: seeking vs full sequential decode (PyAV), PyAV vs decord (when
installed), and original clips vs their 3 fps shard re-encodes. Clips are generated with PyAV (h264,
keyframe every 2 s = 60 frames, B-frames on: a typical web encode). One thread everywhere, so the
number is per core.

    python benchmarks/decode.py [--clips 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from clipvip.data.shards import reencode_video  # noqa: E402
from clipvip.data.video import load_frames, sample_indices  # noqa: E402


def make_clip(path: Path, seed: int, seconds: int = 15, fps: int = 30, w: int = 320, h: int = 240) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"g": str(2 * fps), "bf": "2", "crf": "23", "preset": "veryfast"}
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        for i in range(seconds * fps):
            frame = np.roll(base, i * 2, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def full_decode_sample(path: Path, num_frames: int = 12) -> np.ndarray:
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.thread_count = 1
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)])


def rate(fn, paths, repeats: int) -> float:
    fn(paths[0])  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        for p in paths:
            fn(p)
    return repeats * len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="number of 15 s clips to generate")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the clips per measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        orig, shard = [], []
        for i in range(args.clips):
            make_clip(d / f"c{i}.mp4", i)
            orig.append(d / f"c{i}.mp4")
            (d / f"s{i}.mp4").write_bytes(reencode_video(orig[-1], fps=3, short_side=240))
            shard.append(d / f"s{i}.mp4")
        rows = [
            ("pyav seek, original 30 fps", rate(lambda p: load_frames(p, 12), orig, args.repeats)),
            ("pyav full decode, original 30 fps", rate(full_decode_sample, orig, args.repeats)),
            ("pyav seek, 3 fps shard", rate(lambda p: load_frames(p, 12), shard, args.repeats)),
        ]
        if importlib.util.find_spec("decord"):
            rows.append(("decord get_batch, original 30 fps", rate(lambda p: load_frames(p, 12, backend="decord"), orig, args.repeats)))
            rows.append(("decord get_batch, 3 fps shard", rate(lambda p: load_frames(p, 12, backend="decord"), shard, args.repeats)))
        else:
            rows.append(("decord", float("nan")))
    print(f"{'setting':40s} videos/s/core")
    for name, r in rows:
        print(f"{name:40s} {r:8.2f}")
    r = dict(rows)
    print(f"seek / full decode: {r['pyav seek, original 30 fps'] / r['pyav full decode, original 30 fps']:.1f}x; "
          f"shard / original (seek): {r['pyav seek, 3 fps shard'] / r['pyav seek, original 30 fps']:.1f}x")


if __name__ == "__main__":
    main()
