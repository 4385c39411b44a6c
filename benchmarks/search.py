"""Search latency: exact matmul (float32 / float16 storage) vs FAISS IndexFlatIP on random unit vectors.

Usage::

    python benchmarks/search.py                 # 10k, 100k, 1M vectors of dim 512
    python benchmarks/search.py --sizes 10000 100000 --queries 50 --batch 64

Prints one markdown table: per size and backend, the median latency of a single query, the time per query
when ``--batch`` queries are searched together, and the single-query time normalised to 100k vectors (the
issue's aim: about 1 ms per query per 100k videos). All backends run side by side in one process on the
same data and also check that they return the same top-10 rows.

``--clock cpu`` times process CPU time instead of wall time: on a machine shared with other jobs it counts
the work done rather than the waiting. With one thread (``--threads 1``) that is the latency an idle core
would give; with more threads it is the CPU time summed over them (the work, not the latency).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from clipvip.search.engine import ExactSearch, FaissSearch, faiss_available  # noqa: E402


def _unit(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin so that load from other processes on a
    shared machine hits every backend alike (one warm-up call each first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                    help="numbers of indexed vectors")
    ap.add_argument("--dim", type=int, default=512, help="embedding size (CLIP-ViP B: 512)")
    ap.add_argument("--queries", type=int, default=20, help="single queries timed per setting (median)")
    ap.add_argument("--batch", type=int, default=64, help="queries per batched search")
    ap.add_argument("-k", type=int, default=10, help="results per query")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and FAISS threads (default: torch's default, the number of cores)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time (latency) or process CPU time (work; steadier on a shared machine)")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
        if faiss_available():
            import faiss

            faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    print(f"# search benchmark: dim {args.dim}, k {args.k}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {'yes' if faiss_available() else 'not installed'}, {args.clock} clock, "
          f"load average {os.getloadavg()[0]:.1f}")
    big = np.ones(100_000_000 // 4 * 2, np.float32)  # 200 MB = 100k float32 vectors of dim 512
    read = _interleaved({"sum": lambda: big.sum()}, 5)["sum"]
    print(f"# memory read (numpy sum, 1 thread): {big.nbytes / read / 1e9:.1f} GB/s, so one float32 query over 100k vectors of dim "
          f"512 cannot take less than about {read * 1e3:.0f} ms here; batching queries amortises the read")
    del big
    print()
    print("| vectors | backend | storage | 1 query (ms) | batched, per query (ms) | 1 query per 100k (ms) | same top-10 |")
    print("|---:|---|---|---:|---:|---:|---|")
    for n in args.sizes:
        emb = _unit(rng, n, args.dim)
        queries = _unit(rng, args.batch, args.dim)
        one = queries[:1]
        engines = {"exact float32": ExactSearch(emb), "exact float16": ExactSearch(emb.astype(np.float16))}
        if faiss_available():
            engines["faiss float32"] = FaissSearch(emb)
        single = _interleaved({n_: (lambda e=e: e.search(one, args.k)) for n_, e in engines.items()},
                              args.queries)
        batched = _interleaved({n_: (lambda e=e: e.search(queries, args.k)) for n_, e in engines.items()},
                               max(3, args.queries // 5))
        _, ref_rows = engines["exact float32"].search(queries, args.k)
        for label, engine in engines.items():
            name, storage = label.split()
            _, rows = engine.search(queries, args.k)
            same = ("reference" if label == "exact float32"
                    else f"{(rows == ref_rows).all(axis=1).mean() * 100:.0f}% of queries")
            print(f"| {n:,} | {name} | {storage} | {single[label] * 1e3:.2f} | "
                  f"{batched[label] * 1e3 / args.batch:.3f} | {single[label] * 1e3 * 100_000 / n:.2f} | {same} |",
                  flush=True)
        del engines
        del emb
    return 0


if __name__ == "__main__":
    sys.exit(main())
