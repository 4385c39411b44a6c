"""WebDataset-format tar shards of low-fps, small videos, and a streaming dataset over them.

Decoding a 30 fps source to pick 12 frames wastes most of the work; CLIP4Clip and CLIP-ViP re-encode
their corpora once at a few fps and a small size (HD-VILA at 3 fps, MSR-VTT at 6 fps). ``write_shards``
does that with PyAV and packs the results into plain tar files (``<key>.mp4`` + ``<key>.json`` per
sample, the WebDataset layout, written with :mod:`tarfile`: no extra dependency). Each shard is written
to a temp file and renamed, with a small ``.info.json`` beside it, so an interrupted run resumes where it
stopped; ``manifest.json`` lists every shard, its sample count and the videos that failed.

Shards are written to be cheap to *read* (issue 3): all-intra h264 (every frame a keyframe, so a wanted
frame is decoded from its own packet and no other), no B-frames, ``tune=fastdecode`` (CAVLC, no deblocking
filter), and each sample's JSON stores its frame count, which the reader checks against the demuxed one.

:class:`ShardDataset` streams the shards: shards are split first by rank (``torch.distributed`` when it
is initialised, else explicit ``rank``/``world_size``) and then by DataLoader worker, so every (rank,
worker) pair reads its own shards and each sample is produced exactly once per epoch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipvip.atomic import atomic_write_bytes
from clipvip.data import VideoDecodeError
from clipvip.data.annotations import Record, record_id
from clipvip.data.datasets import load_records, paragraph_of, record_failure
from clipvip.data.transforms import VideoTransform
from clipvip.data.video import load_clip

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def reencode_video(
    src: str | os.PathLike[str],
    *,
    fps: float = 3.0,
    short_side: int | None = 240,
    start: float | None = None,
    end: float | None = None,
    crf: int = 23,
    gop: int | None = 1,
    fast_decode: bool = True,
) -> bytes:
    """Re-encode ``src`` (optionally only ``[start, end]`` seconds) at ``fps`` with its shorter side at
    ``short_side`` (never upscaled; even sizes for yuv420p) as an h264 mp4, returned as bytes.

    Output frame ``k`` is the last source frame shown at time ``k / fps`` (frame dropping, like ffmpeg's
    ``fps`` filter), so motion keeps its real speed. One keyframe every ``gop`` frames (default 1:
    all-intra; ``None`` = one every 2 s), never B-frames; ``fast_decode`` adds x264's ``tune=fastdecode``.
    All-intra + fastdecode reads about 3x faster than a 2 s GOP for 12 of 45 frames, at about 2.5x the
    bytes (docs/benchmarks.md, "Decoding (issue 3)").
    """
    return reencode_video_counted(src, fps=fps, short_side=short_side, start=start, end=end, crf=crf,
                                  gop=gop, fast_decode=fast_decode)[0]


def reencode_video_counted(
    src: str | os.PathLike[str],
    *,
    fps: float = 3.0,
    short_side: int | None = 240,
    start: float | None = None,
    end: float | None = None,
    crf: int = 23,
    gop: int | None = 1,
    fast_decode: bool = True,
) -> tuple[bytes, int]:
    """:func:`reencode_video` and the number of frames written (stored in the shard's JSON)."""
    import av

    src = str(src)
    out = io.BytesIO()
    try:
        with av.open(src, metadata_errors="ignore") as inp:
            if not inp.streams.video:
                raise VideoDecodeError(src, "no video stream")
            vs = inp.streams.video[0]
            vs.codec_context.thread_count = 1
            w0, h0 = vs.codec_context.width, vs.codec_context.height
            if not w0 or not h0:
                raise VideoDecodeError(src, "video stream has no frame size")
            scale = 1.0 if not short_side or min(w0, h0) <= short_side else short_side / min(w0, h0)
            w, h = _even(w0 * scale), _even(h0 * scale)
            rate = Fraction(fps).limit_denominator(1000)
            with av.open(out, "w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.codec_context.thread_count = 1
                options = {"crf": str(crf), "preset": "veryfast", "g": str(gop or max(1, int(round(2 * fps)))), "bf": "0"}
                if fast_decode:
                    options["tune"] = "fastdecode"
                stream.options = options
                t0: float | None = None
                base = float(start or 0.0)
                k = 0
                last, last_rel = None, 0.0
                for frame in inp.decode(vs):
                    t = float(frame.time) if frame.time is not None else (k / fps)
                    if t0 is None:
                        t0 = t
                    rel = t - t0
                    if start is not None and rel < start - 1e-6:
                        continue
                    if end is not None and rel > end + 1e-6:
                        break
                    # Tick k shows the last source frame whose time is <= base + k / fps.
                    while last is not None and base + k / fps < rel - 1e-6:
                        _emit(container, stream, last, w, h, k, rate)
                        k += 1
                    last, last_rel = frame, rel
                while last is not None and base + k / fps <= last_rel + 1e-6:
                    _emit(container, stream, last, w, h, k, rate)
                    k += 1
                if k == 0:
                    raise VideoDecodeError(src, "video stream has zero frames")
                for packet in stream.encode():
                    container.mux(packet)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(src, f"cannot re-encode ({exc.__class__.__name__}: {exc})") from exc
    return out.getvalue(), k


def _emit(container: Any, stream: Any, frame: Any, w: int, h: int, k: int, rate: Fraction) -> None:
    out = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
    out.pts = k
    out.time_base = 1 / rate
    for packet in stream.encode(out):
        container.mux(packet)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    records: Sequence[Record] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    video_root: str | os.PathLike[str] | None = None,
    fps: float = 3.0,
    short_side: int | None = 240,
    shard_size: int = 1000,
    crf: int = 23,
    gop: int | None = 1,
    fast_decode: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-encode every record's video into tar shards under ``out_dir``; returns the manifest.

    Sample ``i`` (its position in ``records``) has key ``%09d`` and lands in shard ``i // shard_size``.
    Its JSON is the record, with ``video`` kept as the source path, ``start``/``end`` removed (the clip
    window is cut during re-encoding; the original window is kept as ``source_window``), ``index`` and
    ``num_frames`` (frames written, checked on reading) added. ``gop``/``fast_decode``: see
    :func:`reencode_video`. Videos that cannot be read are skipped and listed in the manifest's ``failures``.
    Resumable: shards whose ``.info.json`` exists are kept as they are.
    """
    from tqdm.auto import tqdm

    recs, root = load_records(records, video_root)
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_shards = max(1, math.ceil(len(recs) / shard_size))
    shards_info = []
    bar = tqdm(total=len(recs), desc="sharding", disable=not progress, unit="video")
    for j in range(num_shards):
        name = f"shard-{j:06d}.tar"
        info_path = out / f"shard-{j:06d}.info.json"
        chunk = range(j * shard_size, min((j + 1) * shard_size, len(recs)))
        if (out / name).exists() and info_path.exists():
            shards_info.append(json.loads(info_path.read_text()))
            bar.update(len(chunk))
            continue
        failures: list[list[str]] = []
        keys: list[str] = []
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in chunk:
                rec = recs[i]
                p = Path(rec["video"])
                src = p if p.is_absolute() else root / p
                try:
                    data, count = reencode_video_counted(src, fps=fps, short_side=short_side, start=rec.get("start"),
                                                         end=rec.get("end"), crf=crf, gop=gop, fast_decode=fast_decode)
                except VideoDecodeError as exc:
                    log.warning("shard %s: skipping %s: %s", name, exc.path, exc.reason)
                    failures.append([exc.path, exc.reason])
                    bar.update(1)
                    continue
                key = f"{i:09d}"
                meta = {k: v for k, v in rec.items() if k not in ("start", "end")}
                if rec.get("start") is not None or rec.get("end") is not None:
                    meta["source_window"] = [rec.get("start"), rec.get("end")]
                meta["index"] = i
                meta["num_frames"] = count
                _add_member(tar, f"{key}.mp4", data)
                _add_member(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                keys.append(key)
                bar.update(1)
        atomic_write_bytes(out / name, buf.getvalue())
        info = {"name": name, "num_samples": len(keys), "first_index": chunk.start, "failures": failures}
        atomic_write_bytes(info_path, json.dumps(info).encode("utf-8"))
        shards_info.append(info)
    bar.close()
    manifest = {
        "format": "webdataset-tar",
        "fps": fps,
        "short_side": short_side,
        "gop": gop,
        "fast_decode": fast_decode,
        "num_records": len(recs),
        "num_samples": sum(s["num_samples"] for s in shards_info),
        "shards": shards_info,
        "failures": [f for s in shards_info for f in s["failures"]],
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    return manifest


def iter_tar_samples(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a WebDataset tar (members grouped by key)."""
    current: str | None = None
    sample: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            key, _, ext = base.partition(".")
            fh = tar.extractfile(member)
            data = fh.read() if fh else b""
            if key != current and current is not None:
                yield current, sample
                sample = {}
            current = key
            sample[ext] = data
    if current is not None:
        yield current, sample


def list_shards(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Shard paths from a directory (its manifest, else every ``*.tar``) or an explicit list."""
    if isinstance(source, (str, os.PathLike)):
        d = Path(source)
        if d.is_dir():
            man = d / MANIFEST
            if man.is_file():
                return [d / s["name"] for s in json.loads(man.read_text())["shards"]]
            return sorted(d.glob("*.tar"))
        return [d]
    return [Path(s) for s in source]


class ShardDataset(IterableDataset):
    """Stream samples from WebDataset tar shards, split by rank then by DataLoader worker.

    ``task`` chooses the item: ``"retrieval"`` (``pixel_values``, ``text`` sampled per access,
    ``video_id``, ``index``), ``"pretrain"`` (adds ``frame_pixel_values``, ``subtitle``, ``caption``) or
    ``"eval"`` (``pixel_values``, ``video_id``, ``index``). ``index`` is the sample's position in the
    source JSONL. Undecodable members yield ``None`` (recorded like the map-style datasets, reported by
    the collator). With ``shuffle``, the shard order is permuted per epoch (same permutation on every
    rank) before splitting.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        task: str = "retrieval",
        num_frames: int = 12,
        image_size: int = 224,
        sampling: str | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        paragraph: bool | None = None,
        transform: Any = None,
    ) -> None:
        if task not in ("retrieval", "pretrain", "eval"):
            raise ValueError(f"task must be 'retrieval', 'pretrain' or 'eval', got {task!r}")
        self.shards = list_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shards found in {shards}")
        self.task = task
        self.num_frames = int(num_frames)
        self.sampling = sampling or ("uniform" if task == "eval" else "jitter")
        self.seed = int(seed)
        self.epoch = 0
        self.shuffle = shuffle
        self.paragraph = bool(paragraph)
        self.transform = transform or VideoTransform(size=image_size)
        if rank is None or world_size is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world_size = 0, 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.failures: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def my_shards(self, worker_id: int = 0, num_workers: int = 1) -> list[Path]:
        """The shards this (rank, worker) reads: ``order[rank::world][worker::workers]``."""
        order = list(self.shards)
        if self.shuffle:
            perm = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        mine = order[self.rank :: self.world_size][worker_id::num_workers]
        total = self.world_size * num_workers
        if len(order) < total and worker_id == 0:
            log.warning("%d shards for %d (rank, worker) readers: some readers idle; write smaller shards",
                        len(order), total)
        return mine

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard in self.my_shards(wid, nw):
            for key, sample in iter_tar_samples(shard):
                yield self._item(shard, key, sample)

    def _item(self, shard: Path, key: str, sample: dict[str, bytes]) -> dict[str, Any] | None:
        name = f"{shard}#{key}"
        try:
            meta = json.loads(sample["json"].decode("utf-8"))
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._fail(name, f"bad or missing json member ({exc})")
        if "mp4" not in sample:
            return self._fail(name, "missing mp4 member")
        index = int(meta.get("index", -1))
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, index & 0xFFFFFFFF])
        buf = io.BytesIO(sample["mp4"])
        buf.name = f"{name}.mp4"
        try:
            frames, middle = load_clip(buf, self.num_frames, self.sampling, rng=rng, with_middle=self.task == "pretrain",
                                       expected_frames=meta.get("num_frames"))
        except VideoDecodeError as exc:
            return self._fail(exc.path, exc.reason)
        item: dict[str, Any] = {"pixel_values": self.transform(frames), "video_id": record_id(meta), "index": index}
        texts = meta.get("texts") or []
        if self.task == "retrieval":
            if not texts:
                return self._fail(name, "record has no text")
            item["text"] = paragraph_of(texts) if (self.paragraph or meta.get("paragraph")) else texts[int(rng.integers(0, len(texts)))]
        elif self.task == "pretrain":
            item["frame_pixel_values"] = self.transform(middle)
            sub = meta.get("subtitle")
            item["subtitle"] = sub if sub is not None else (texts[int(rng.integers(0, len(texts)))] if texts else "")
            item["caption"] = meta.get("caption") or None
        return item

    def _fail(self, path: str, reason: str) -> None:
        self.failures.append((path, reason))
        record_failure(path, reason)
        log.warning("skipping %s: %s", path, reason)
        return None
