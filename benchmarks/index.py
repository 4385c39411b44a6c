"""Index storage: cost per commit as the index grows, open time, exact vs FAISS IVF search — old design vs new.

Usage::

    python benchmarks/index.py                          # 100k and 1M vectors of dim 512 (2 KB each)
    python benchmarks/index.py --sizes 10000 100000 --commits 20
    python benchmarks/index.py --videos ../shared/assets/videos --model clipvip-b32 \\
        --tokenizer ../shared/assets/clip/bpe_simple_vocab_16e6.txt.gz      # the indexer itself (issue 12)

For each size N the store is first filled to N vectors (one window per video, clustered unit vectors),
then ``--commits`` durable commits of a batch of 8 and of 256 vectors are timed, with the bytes the
process wrote (``/proc/self/io`` ``wchar``: every byte handed to ``write``, SQLite's WAL included). The
*old design* (every commit rewrites the whole ``.npy`` and a JSON manifest of every entry, fsync +
rename, as clipvip did before issue 10) is re-implemented here and timed on the same machine in the same
run. Then: time to open a snapshot (what ``clipvip search``/``serve`` pay at start), latency of an exact
search (one matmul over the mapped file, one hit per video) and of the cached FAISS IVF index for 1 and 32
queries, and IVF's recall@10 against exact on the clustered data.

With ``--videos`` it measures the indexer instead: videos/s, CPU seconds per video and the share of the
wall time the model thread spends inside the model, with 1 decode worker + 1 torch thread and with the
default split of the cores, for fp32 and (when ``clipvip.load`` takes ``dtype=``) bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from clipvip.atomic import atomic_save_npy, atomic_write_json  # noqa: E402
from clipvip.search.engine import SearchEngine, faiss_available  # noqa: E402
from clipvip.search.store import IndexWriter, read_snapshot  # noqa: E402


def wchar() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def clustered(rng: np.random.Generator, n: int, d: int, centers: np.ndarray, noise: float = 0.35) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d) * 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def items(start: int, vecs: np.ndarray) -> list[dict]:
    return [{"path": b"v%09d.mp4" % (start + i), "size": 1, "mtime_ns": 1, "mode": 0o100644, "duration": 10.0,
             "windows": [(0.0, 10.0, None)], "vectors": vecs[i : i + 1]} for i in range(len(vecs))]


def fill(d: Path, n: int, dim: int, rng: np.random.Generator, centers: np.ndarray) -> None:
    meta = {"model_id": "bench", "dim": dim, "video_root": b"/videos", "dtype": "float32"}
    with IndexWriter(d, meta) as w:
        step = 50_000
        for s in range(0, n, step):
            w.replace_videos(items(s, clustered(rng, min(step, n - s), dim, centers)))


def time_commits(d: Path, n: int, batch: int, commits: int, dim: int, rng: np.random.Generator,
                 centers: np.ndarray) -> dict:
    meta = {"model_id": "bench", "dim": dim, "video_root": b"/videos", "dtype": "float32"}
    with IndexWriter(d, meta) as w:
        base = n + 10_000_000 + batch * 100_000  # new paths: appends, not replacements
        batches = [items(base + c * batch, clustered(rng, batch, dim, centers)) for c in range(commits)]
        times = []
        b0 = wchar()
        for its in batches:
            t = time.perf_counter()
            w.replace_videos(its)
            times.append(time.perf_counter() - t)
        written = wchar() - b0
    return {"ms_per_commit": 1000 * statistics.median(times), "vectors_per_s": batch * commits / sum(times),
            "bytes_per_vector": written / (batch * commits)}


def time_old(tmp: Path, n: int, batch: int, commits: int, dim: int) -> dict:
    """The previous format's commit: the whole matrix + a manifest of every entry, atomically, each time."""
    d = tmp / f"old-{n}"
    d.mkdir()
    emb = np.zeros((n, dim), np.float32)
    entries = [{"path": f"v{i:09d}.mp4", "size": 1, "mtime_ns": 1, "duration": 10.0, "model_id": "bench", "row": i,
                "thumb": None} for i in range(n)]
    times = []
    b0 = wchar()
    for c in range(commits):
        t = time.perf_counter()
        emb = np.concatenate([emb, np.zeros((batch, dim), np.float32)])
        entries += [{"path": f"n{c}-{j}.mp4", "size": 1, "mtime_ns": 1, "duration": 10.0, "model_id": "bench",
                     "row": len(entries) + j, "thumb": None} for j in range(batch)]
        name = f"embeddings-{c + 1:06d}.npy"
        atomic_save_npy(d / name, emb)
        atomic_write_json(d / "manifest.json", {"generation": c + 1, "embeddings": name, "count": len(entries),
                                                "entries": entries, "failures": []})
        if c:
            (d / f"embeddings-{c:06d}.npy").unlink()
        times.append(time.perf_counter() - t)
    written = wchar() - b0
    shutil.rmtree(d)
    return {"ms_per_commit": 1000 * statistics.median(times), "vectors_per_s": batch * commits / sum(times),
            "bytes_per_vector": written / (batch * commits)}


def latency(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def indexer(videos: str, model: str, tokenizer: str | None, runs: list[tuple[int | None, int | None]], batch: int,
            dtypes: list[str]) -> None:
    """Issue 12 item 4: the indexer on real clips — videos/s, CPU-s per video, share of the model thread in the model."""
    import inspect

    import clipvip
    from clipvip.search.index import build_index, default_threads

    print(f"# indexer on {videos} with {model}, batch {batch}", flush=True)
    print("| dtype | decode workers | torch threads | videos | windows | wall s | videos/s | CPU-s / video | model share of the model thread |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        kw = {"dtype": dtype} if dtype != "fp32" and "dtype" in inspect.signature(clipvip.load).parameters else {}
        if dtype != "fp32" and not kw:
            print(f"| {dtype} | - | - | - | - | - | - | - | load() has no dtype= in this clipvip |")
            continue
        pipe = clipvip.load(model, device="cpu", tokenizer=tokenizer, **kw)
        for workers, threads in runs:
            w, t = default_threads(workers, threads)
            torch.set_num_threads(t)
            out = Path(tempfile.mkdtemp(prefix="clipvip-bench-indexer-"))
            try:
                c0, t0 = time.process_time(), time.perf_counter()
                st = build_index(videos, out, pipe, batch_size=batch, progress=False, workers=w, echo=lambda m: None)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            finally:
                shutil.rmtree(out, ignore_errors=True)
            # the model thread's loop = the run minus scanning/committing; model_seconds is its time in the model
            print(f"| {dtype} | {w} | {t} | {st.encoded} | {st.windows} | {wall:.1f} | {st.encoded / wall:.2f} | "
                  f"{cpu / max(1, st.encoded):.2f} | {100 * st.model_seconds / wall:.0f}% |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default=None, help="instead of the storage benchmark: index this folder of real "
                                                   "clips and report the indexer's throughput (issue 12)")
    ap.add_argument("--model", default="clipvip-b32", help="model for --videos (default: B/32, random weights)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer for a registry --model")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--commits", type=int, default=20, help="timed commits per batch size (new design)")
    ap.add_argument("--old-commits", type=int, default=2, help="timed commits of the old design per size")
    ap.add_argument("--old-max", type=int, default=1_000_000, help="largest size to time the old design at")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    if args.videos:
        indexer(args.videos, args.model, args.tokenizer, [(1, 1), (None, None)], args.batch, args.dtypes)
        return
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="clipvip-bench-index-"))
    fake = SimpleNamespace(model_id="bench", spec="bench")
    rows = []
    print(f"# benchmarks/index.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, dim {args.dim} "
          f"({args.dim * 4} B/vector)", flush=True)
    try:
        for n in args.sizes:
            d = tmp / f"new-{n}"
            t = time.perf_counter()
            fill(d, n, args.dim, rng, centers)
            fill_s = time.perf_counter() - t
            row = {"N": n, "fill_s": round(fill_s, 1)}
            for batch in (8, 256):
                row[f"new_b{batch}"] = time_commits(d, n, batch, args.commits, args.dim, rng, centers)
                if n <= args.old_max:
                    row[f"old_b{batch}"] = time_old(tmp, n, batch, args.old_commits if batch == 8 else 1, args.dim)
                print(json.dumps({k: v for k, v in row.items() if k.endswith(f"b{batch}")}), flush=True)
            t = time.perf_counter()
            read_snapshot(d)
            row["open_snapshot_s"] = time.perf_counter() - t
            t = time.perf_counter()
            eng = SearchEngine(d, fake, backend="exact")
            row["open_engine_s"] = time.perf_counter() - t
            snap = eng.snapshot
            pick = rng.integers(0, len(snap.slots), 32)
            q = np.asarray(snap.vectors[snap.slots[pick]], np.float32) + 0.05 * rng.standard_normal((32, args.dim)).astype(np.float32) / np.sqrt(args.dim) * 4
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            row["exact_1_ms"] = latency(lambda: eng.search_vectors(q[:1], 10), args.repeats)
            row["exact_32_ms"] = latency(lambda: eng.search_vectors(q, 10), max(2, args.repeats // 3))
            if faiss_available():
                ivf = SearchEngine(d, fake, backend="faiss")
                t = time.perf_counter()
                ivf.search_vectors(q[:1], 10)
                row["ivf_build_s"] = time.perf_counter() - t
                row["ivf_1_ms"] = latency(lambda: ivf.search_vectors(q[:1], 10), args.repeats)
                row["ivf_32_ms"] = latency(lambda: ivf.search_vectors(q, 10), max(2, args.repeats // 3))
                ex = eng.search_vectors(q, 10, all_windows=True)
                ap_ = ivf.search_vectors(q, 10, all_windows=True)
                row["ivf_recall10"] = float(np.mean([len({h.window_id for h in a} & {h.window_id for h in b}) / max(1, len(a))
                                                     for a, b in zip(ex, ap_)]))
                del ivf
            del eng, snap
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if not isinstance(v, dict)}), flush=True)
            rows.append(row)
            shutil.rmtree(d)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n| N | design | batch | ms / commit | vectors / s | bytes written / vector |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for batch in (8, 256):
            for design in ("old", "new"):
                m = r.get(f"{design}_b{batch}")
                if m:
                    print(f"| {r['N']:,} | {design} | {batch} | {m['ms_per_commit']:.1f} | {m['vectors_per_s']:,.0f} | "
                          f"{m['bytes_per_vector']:,.0f} |")
    print("\n| N | open snapshot s | open engine s | exact 1 q ms | exact 32 q ms | IVF build s | IVF 1 q ms | IVF 32 q ms | IVF recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['N']:,} | {r['open_snapshot_s']:.2f} | {r['open_engine_s']:.2f} | {r['exact_1_ms']:.1f} | "
              f"{r['exact_32_ms']:.1f} | {r.get('ivf_build_s', float('nan')):.1f} | {r.get('ivf_1_ms', float('nan')):.2f} | "
              f"{r.get('ivf_32_ms', float('nan')):.2f} | {r.get('ivf_recall10', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
