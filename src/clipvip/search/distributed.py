"""``torchrun --nproc_per_node N -m clipvip index ...``: every rank decodes and encodes, rank 0 writes.

Rank 0 takes the index lock, scans the folder and decides what to encode exactly as a single process
does (``build_index``), then broadcasts the list; video ``i`` goes to rank ``i % N``. Work proceeds in
rounds of ``batch_size`` videos per rank: each rank decodes (``workers`` threads) and encodes its videos on
its own device, and the finished videos of all ranks are gathered to rank 0
(``torch.distributed.gather_object``, so the gloo backend works on CPU and across hosts), which writes
their thumbnails and commits them in one transaction. Rank 0 is the only writer, so a kill at any moment
leaves the index as a killed single process would, and a re-run (distributed or not) resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipvip.search.index import (
    IndexStats,
    _Chunk,
    _Failed,
    _Producer,
    _bar,
    build_index,
    commit_videos,
    default_threads,
)
from clipvip.search.store import FailureRow, escape_path


def encode_videos(rels: list[bytes], root: bytes, pipeline: Any, window: float, stride: float, batch_size: int,
                  workers: int) -> list[dict[str, Any]]:
    """Decode and encode whole videos → ``[{rel, spans, jpegs, duration, vectors}]`` or ``[{rel, reason}]``."""
    out: dict[bytes, dict[str, Any]] = {}
    producer = _Producer(rels, root, pipeline, window, stride, batch_size, workers)
    try:
        for item in producer.items():
            if isinstance(item, _Chunk):
                d = out.setdefault(item.rel, {"rel": item.rel, "spans": [], "jpegs": [], "duration": item.duration,
                                              "vectors": []})
                if "reason" in d:
                    continue
                d["spans"] += item.spans
                d["jpegs"] += item.jpegs
                d["vectors"].append(pipeline.encode_pixels(item.pixels).numpy())
            elif isinstance(item, _Failed):
                out[item.rel] = {"rel": item.rel, "reason": item.reason}
    finally:
        producer.close()
    for d in out.values():
        if "reason" not in d:
            d["vectors"] = np.concatenate(d["vectors"])
    return [out[r] for r in rels if r in out]


def _rounds(n: int, world: int, per_round: int) -> int:
    share = -(-n // world)
    return -(-share // per_round) if share else 0


def _encoder(dist: Any, world: int):
    """The rank-0 encoder handed to ``build_index``: share the work, gather, commit each round."""

    def encode(writer: Any, root: Path, video_root: bytes, todo: list[bytes], found: dict, pipeline: Any,
               stats: IndexStats, echo: Any, batch_size: int, workers: int, window: float, stride: float,
               progress: bool) -> None:
        job = {"todo": todo, "root": video_root, "window": window, "stride": stride, "batch_size": batch_size,
               "model_id": pipeline.model_id}
        dist.broadcast_object_list([job], src=0)
        bar = _bar(len(todo), progress)
        mine = todo[0::world]
        for r in range(_rounds(len(todo), world, batch_size)):
            part = mine[r * batch_size : (r + 1) * batch_size]
            t = time.perf_counter()
            results = encode_videos(part, video_root, pipeline, window, stride, batch_size, workers)
            stats.model_seconds += time.perf_counter() - t
            gathered: list[Any] = [None] * world
            dist.gather_object({"model_id": pipeline.model_id, "results": results}, gathered, dst=0)
            done, failures = [], []
            for g in gathered:
                if g["model_id"] != pipeline.model_id:
                    raise RuntimeError(f"a rank encoded with model id {g['model_id']}, rank 0 with "
                                       f"{pipeline.model_id}: every rank must load the same model")
                for d in g["results"]:
                    if "reason" in d:
                        st = found[d["rel"]]
                        failures.append(FailureRow(d["rel"], st.st_size, st.st_mtime_ns, st.st_mode, d["reason"]))
                        echo(f"cannot index {escape_path(os.path.join(video_root, d['rel']))}: {d['reason']}")
                    else:
                        done.append(d)
                        stats.windows += len(d["spans"])
            commit_videos(writer, root, found, done, failures, stats)
            bar.update(len(done) + len(failures))
        bar.close()

    return encode


def follow(dist: Any, rank: int, world: int, pipeline: Any, workers: int) -> None:
    """Ranks > 0: receive the job from rank 0, encode this rank's share round by round, send it back."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    job = box[0]
    if job is None:  # rank 0 stopped before encoding (usage error, lock held, nothing to do)
        return
    mine = job["todo"][rank::world]
    per = job["batch_size"]
    for r in range(_rounds(len(job["todo"]), world, per)):
        part = mine[r * per : (r + 1) * per]
        results = encode_videos(part, job["root"], pipeline, job["window"], job["stride"], per, workers)
        dist.gather_object({"model_id": pipeline.model_id, "results": results}, None, dst=0)


def run_distributed(args: argparse.Namespace) -> int:
    """The ``clipvip index`` CLI under torchrun (``WORLD_SIZE`` > 1)."""
    import torch.distributed as dist

    from clipvip.cli import CLIError
    from clipvip.pipeline import load
    from clipvip.search.index import IndexFormatError, IndexLockedError

    backend = "nccl" if torch.cuda.is_available() and args.device in (None, "cuda") else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    workers, threads = default_threads(args.workers, args.threads)
    torch.set_num_threads(threads)
    started = False
    try:
        try:
            pipeline = load(args.model, device=device, tokenizer=args.tokenizer, num_frames=args.num_frames)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            if rank == 0:
                dist.broadcast_object_list([None], src=0)
            raise CLIError(f"rank {rank}: cannot load model {args.model}: {exc}") from exc
        if rank != 0:
            follow(dist, rank, world, pipeline, workers)
            return 0
        print(f"rank 0 of {world}: model {pipeline.spec} (id {pipeline.model_id}); rank 0 writes {args.index}",
              file=sys.stderr)
        encoder = _encoder(dist, world)

        def tracked(*a: Any) -> None:
            nonlocal started
            started = True
            encoder(*a)

        try:
            stats = build_index(args.video_dir, args.index, pipeline, batch_size=args.batch_size,
                                rebuild=args.rebuild, progress=not args.no_progress, workers=workers,
                                window=args.window, stride=args.stride, vector_dtype=args.vectors,
                                encoder=tracked, echo=lambda msg: print(f"warning: {msg}", file=sys.stderr))
        except (IndexFormatError, IndexLockedError, ValueError) as exc:
            if not started:
                dist.broadcast_object_list([None], src=0)
            raise CLIError(str(exc)) from exc
        if not started:  # nothing reached the encoder (cannot happen today: it is always called)
            dist.broadcast_object_list([None], src=0)
        print(f"{os.fsdecode(args.index)}: {stats.total} videos ({stats.total_windows} windows) indexed by {world} "
              f"ranks; this run: {stats.found} found, {stats.new} new, {stats.changed} changed, {stats.deleted} "
              f"deleted, {stats.encoded} encoded ({stats.windows} windows), {stats.failed} unreadable "
              f"({stats.seconds:.1f} s)")
        for f in stats.failures:
            print(f"  unreadable: {f['path']}: {f['reason']}")
        return 1 if stats.failures else 0
    finally:
        dist.destroy_process_group()
