"""The demo's OCL ablation over several training seeds, on the world of an existing demo run.

``clipvip demo`` runs the OCL ablation (variants a/b/c/d and "vs", subtitles only) with one seed, so its
table cannot say whether a gap between variants is larger than run-to-run noise. This script re-runs that
ablation's jobs (the same :func:`clipvip.demo.run.ocl_job` recipes: short post-pretraining from the demo's
inflated stage-0 model, then a short fine-tune) with seeds ``--seeds``, in the demo's worker pool, and
prints per variant the mean ± std over seeds of the fine-tuned t→v R@1 and of the zero-shot and fine-tuned
twin-pair order accuracy.

    clipvip demo --out /tmp/demo --no-progress
    python benchmarks/demo_ocl_seeds.py /tmp/demo --seeds 0 1 2 [--quick]

The runs are written under ``/tmp/demo/runs/ocl_seeds_*`` (the demo's own ``runs/`` folder).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_out", type=Path, help="the --out folder of a finished clipvip demo run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds [0 1 2]")
    ap.add_argument("--quick", action="store_true", help="the demo run used --quick")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes [usable CPUs]")
    args = ap.parse_args()

    from clipvip.demo.jobs import RunPool, default_jobs, drain
    from clipvip.demo.run import Runner, ocl_job
    from clipvip.demo.settings import preset
    from clipvip.demo.world import open_world, world_at

    settings = preset(args.quick)
    init = args.demo_out / "runs" / "init" / "stage1"
    if not (init / "config.json").is_file():
        raise SystemExit(f"{init}: missing; run `clipvip demo --out {args.demo_out}` first")
    runner = Runner(args.demo_out.resolve(), settings, open_world(world_at(args.demo_out / "world"), settings),
                    progress=False)
    variants = list(dict.fromkeys([*settings.ablation_variants, "vs"]))
    rows: dict[str, dict[str, list[float]]] = {v: {"ft_R1": [], "zs_order": [], "ft_order": []} for v in variants}
    t0 = time.perf_counter()
    with RunPool(args.jobs or default_jobs(1)) as pool:
        futures = {pool.submit(runner, ocl_job(settings, init, v, s, prefix=f"ocl_seeds_s{s}")): (v, s)
                   for s in args.seeds for v in variants}

        def handle(key: tuple[str, int], runs: list[dict]) -> None:
            v, s = key
            pre, fine = runs
            rows[v]["ft_R1"].append(fine["test"]["t2v"]["R1"])
            rows[v]["zs_order"].append(pre["test"]["order"]["acc"])
            rows[v]["ft_order"].append(fine["test"]["order"]["acc"])
            print(f"  {v:>2} seed {s}: fine-tuned t2v R@1 {fine['test']['t2v']['R1']:.1f}, order acc zero-shot "
                  f"{pre['test']['order']['acc']:.1f} / fine-tuned {fine['test']['order']['acc']:.1f}", flush=True)

        drain(futures, handle)

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    print(f"\n{settings.name} preset, {settings.ocl_pretrain_steps} + {settings.ocl_finetune_steps} steps, seeds "
          f"{args.seeds} ({time.perf_counter() - t0:.0f} s)\n")
    print("| variant | fine-tuned t→v R@1 | zero-shot order accuracy | fine-tuned order accuracy |")
    print("|---|---:|---:|---:|")
    for v in variants:
        r = rows[v]
        print(f"| {v} | {ms(r['ft_R1'])} | {ms(r['zs_order'])} | {ms(r['ft_order'])} |")


if __name__ == "__main__":
    main()
