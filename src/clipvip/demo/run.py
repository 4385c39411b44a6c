"""``run_demo``: the whole method on a synthetic world, offline, in minutes on a CPU.

Every training stage is a run of the library's trainer (:func:`clipvip.train.loop.train`, the code behind
``clipvip train``) from a recipe built here, reading the world's JSONL files through the library's datasets
with the decoded-clip cache (``data.cache: memory``: each clip is decoded once per process) and the twin
group sampler (``data.group_by: twin``). What stays in the demo is orchestration:

0. generate the synthetic world (twin clips that are exact time reversals of each other);
1. stage 0: train a tiny image-text CLIP (a CLIP-ViP with one proxy, ``data.task: image_text`` on single
   middle frames and their captions): the "image-text model" the paper starts from;
2. stage 1: inflate it to CLIP-ViP (:func:`clipvip.weights.inflate`: proxies, temporal table) and
   post-pretrain with the omnisource loss (OCL, variant d) on videos + noisy subtitles + auxiliary captions;
3. stage 2 and the attention ablation: fine-tune on downstream captions with frame mean pooling, full and
   proxy attention, from the same post-pretrained weights, once per seed; evaluate on test (t2v / v2t,
   plain and DSL, twin-pair order accuracy, order-blind pair R@1). The model is the last step's (no
   selection on the small validation split; validation is evaluated for the curves only);
4. OCL variants a/b/c/d, with vs without auxiliary captions, NMI language domain gap;
5. ``results.json``, ``report.md``, plots and ``model/``; index the test videos and query them.

Stages 1-4's training runs are independent once stage 0 is done (stage 2 needs stage 1's weights); they
run as jobs in worker processes (:mod:`clipvip.demo.jobs`, ``--jobs``), with the same results as in one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from clipvip.atomic import check_replaceable, mark_owned, remove_owned
from clipvip.demo.jobs import PREVIOUS, RunPool, RunSpec, default_jobs, drain
from clipvip.demo.settings import DemoSettings, preset

Echo = Callable[[str], None]

#: How the demo picks the model of a run (results.json ``attention.selection``, docs/demo.md).
SELECTION = "last step (no selection on validation; validation is evaluated for the curves only)"


class Stopwatch:
    """Wall time per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    def record(self, name: str, since: float) -> float:
        seconds = time.perf_counter() - since
        self.stages[name] = round(self.stages.get(name, 0.0) + seconds, 2)
        return seconds

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def model_config(settings: DemoSettings, tokenizer: Any, num_proxies: int, attention: str = "proxy") -> Any:
    """The demo architecture: ``clipvip-tiny`` resized to the world (frames, image size, the tokenizer's
    vocabulary and special tokens)."""
    from clipvip.config import CLIPViPConfig

    specials = {f"{k}_token_id": int(getattr(tokenizer, f"{k}_token_id")) for k in ("bos", "eos", "pad")}
    return CLIPViPConfig.from_name(
        "clipvip-tiny",
        num_proxies=num_proxies,
        temporal_size=settings.num_frames,
        attention=attention,
        projection_dim=settings.projection_dim,
        vision={"hidden_size": settings.vision_width, "intermediate_size": 2 * settings.vision_width,
                "num_hidden_layers": settings.layers, "image_size": settings.image_size,
                "patch_size": settings.patch_size},
        text={"hidden_size": settings.text_width, "intermediate_size": 2 * settings.text_width,
              "num_hidden_layers": settings.layers, "vocab_size": len(tokenizer),
              "max_position_embeddings": settings.max_length, **specials},
    )


def _header(echo: Echo, clock: Stopwatch, title: str) -> float:
    echo(f"\n== [{clock.total:6.1f}s] {title}")
    return time.perf_counter()


def _brief(metrics: dict[str, Any]) -> str:
    parts = []
    for key in ("t2v", "v2t", "t2v_dsl"):
        if key in metrics:
            parts.append(f"{key} R@1 {metrics[key]['R1']:.1f}")
    if "order" in metrics:
        parts.append(f"order acc {metrics['order']['acc']:.1f}")
    if "pair" in metrics:
        parts.append(f"pair R@1 {metrics['pair']['R1']:.1f}")
    if "fair" in metrics:
        parts.append(f"R@1 ties 1/k {metrics['fair']['R1']:.1f}")
    return ", ".join(parts)


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "-"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


class Runner:
    """Builds the recipes of the demo's runs and evaluates their models; one per demo run."""

    def __init__(self, out: Path, settings: DemoSettings, world: Any, progress: bool) -> None:
        self.out = out
        self.settings = settings
        self.world = world
        self.progress = progress
        self.runs = out / "runs"
        self.video_config = model_config(settings, world.tokenizer, settings.num_proxies)

    def recipe(self, name: str, *, init: Path, task: str, train: Path, steps: int, lr: float, seed: int,
               attention: str | None = None, val: Path | None = None, variant: str = "d",
               lr_mult: dict[str, float] | None = None, group: bool = True) -> Any:
        """A ``clipvip.train`` recipe (the same fields as ``configs/*.yaml``) for one demo run."""
        from clipvip.train.config import load_config

        s = self.settings
        eval_every = s.eval_every if val is not None else steps  # without val: one save, at the end
        return load_config({
            "model": {"init": f"pretrained:{init}", "attention": attention, "num_frames": s.num_frames,
                      "tokenizer": str(self.world.tokenizer_dir), "max_length": s.max_length},
            "data": {"task": task, "train": str(train), "val": str(val) if val else None, "test": None,
                     "sampling": "uniform", "cache": "memory", "group_by": "twin" if group else None,
                     "eval_batch_size": 64},
            "optim": {"lr": lr, "weight_decay": s.weight_decay, "warmup_ratio": s.warmup_ratio,
                      "grad_clip": s.grad_clip, "max_steps": steps, "lr_mult": dict(lr_mult or {})},
            "run": {"global_batch_size": s.batch_size, "seed": seed, "output_dir": str(self.runs / name),
                    "eval_every": eval_every, "log_every": 10, "select_on": "val", "select_metric": "t2v.R1",
                    "ocl_variant": variant, "resume": "never", "progress": self.progress},
        })

    def train(self, cfg: Any) -> tuple[Any, dict[str, Any]]:
        """Run the library trainer; return the **last** model (see :data:`SELECTION`) and its result."""
        from clipvip.model.clipvip import CLIPViP
        from clipvip.train.loop import train

        out_dir = Path(cfg.run.output_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # the demo created it (runs/ is the demo's own folder)
        # The trainer's warnings about the demo's deliberate choices (no val split in the short runs) are
        # noise here; errors still surface as exceptions.
        logger = logging.getLogger("clipvip.train")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            result = train(cfg)
        finally:
            logger.setLevel(level)
        model = CLIPViP.from_pretrained(out_dir / "last")
        if cfg.model.attention:
            model.set_attention(cfg.model.attention)
        model.eval()
        return model, result

    def save_init(self, name: str, model: Any) -> Path:
        """Write a starting model (random stage-0 model, inflated stage-1 model) for ``model.init``."""
        path = self.runs / "init" / name
        if path.exists():
            shutil.rmtree(path)
        model.save_pretrained(path, tokenizer=self.world.tokenizer)
        return path

    def evaluate(self, model: Any, split: str = "test") -> dict[str, Any]:
        """Retrieval tables (plain and DSL), twin-pair order accuracy and order-blind pair R@1 on a split."""
        from clipvip.analysis.order import order_accuracy, pair_recall_at_1
        from clipvip.data.annotations import record_id
        from clipvip.data.cache import open_cache
        from clipvip.train.evaluate import evaluate_retrieval

        s = self.settings
        res = evaluate_retrieval(model, self.world.tokenizer, self.world.paths[split], num_frames=s.num_frames,
                                 image_size=s.image_size, max_length=s.max_length, batch_size=64,
                                 cache=open_cache("memory"), keep_similarity=True, dsl=True)
        assert res is not None
        sim = res.pop("similarity")
        t2v = res.pop("text_to_video")
        if res["failures"]:
            raise RuntimeError(f"{split}: generated clips failed to decode: {res['failures'][:3]}")
        recs = self.world.split_records[split]
        from clipvip.analysis.order import twin_columns

        twin = twin_columns([record_id(r) for r in recs], [r.get("twin") for r in recs])
        out = {k: v for k, v in res.items() if isinstance(v, dict)}
        out["order"] = {"acc": order_accuracy(sim, t2v, twin)}
        out["pair"] = {"R1": pair_recall_at_1(sim, t2v, twin)}
        try:  # R@1 with ties at the top counted 1/k (frame mean pooling ties twins exactly)
            from clipvip.analysis.order import fair_recall_at_1
        except ImportError:  # pragma: no cover - older analysis package
            return out
        out["fair"] = {"R1": fair_recall_at_1(sim, t2v)}
        return out


def _curve(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h["metrics"]["t2v"]["R1"])) for h in history if h.get("metrics")]


DEMO_OWNER = "clipvip demo"
#: The sub-folders of ``--out`` the demo writes; each carries the demo's marker and only such are replaced.
DEMO_FOLDERS = ("world", "runs", "model", "test_videos", "index")


def _fresh_owned(folder: Path) -> None:
    """Replace ``folder`` (absent, empty or the demo's own) by an empty folder carrying the demo's marker."""
    remove_owned(folder, DEMO_OWNER)
    folder.mkdir(parents=True)
    mark_owned(folder, DEMO_OWNER)


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    settings: DemoSettings | None = None,
    echo: Echo | None = None,
    threads: int | None = 1,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run the whole demo into ``out_dir`` and return the results (also written to ``results.json``).

    ``seed`` seeds the world and every run; the attention ablation uses seeds ``seed, seed + 1, ...``
    (``settings.attention_seeds`` of them). ``settings`` overrides the preset picked by ``quick`` (tests use
    smaller ones). ``threads`` sets torch's intra-op threads for the run (default 1: the tiny model's ops
    are too small to gain from more; None keeps torch's). ``jobs`` is the number of worker processes the
    training runs after stage 0 share (:mod:`clipvip.demo.jobs`; default: the usable CPUs divided by
    ``threads``, at most 8; 1 runs them in this process). The results do not depend on it.
    """
    from clipvip.demo.world import build_world
    from clipvip.weights import inflate

    echo = echo or (lambda msg: print(msg, flush=True))
    settings = settings or preset(quick)
    out = Path(out_dir).resolve()
    workers = default_jobs(int(threads or 1)) if jobs is None else int(jobs)
    if workers < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    for name in DEMO_FOLDERS:  # refuse before any work: only folders an earlier demo wrote are replaced
        check_replaceable(out / name, DEMO_OWNER)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    clock = Stopwatch()
    cpu0 = time.process_time()
    results: dict[str, Any] = {
        "demo": {"preset": settings.name, "seed": seed, "settings": settings.to_dict(), "selection": SELECTION,
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "platform": platform.platform(), "cpus": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "jobs": workers}},
    }
    pool = RunPool(workers, int(threads or 1))  # workers start now, while the world and stage 0 are made
    try:
        echo(f"clipvip demo ({settings.name}, seed {seed}): output in {out}")

        # ------------------------------------------------------------------ world
        t = _header(echo, clock, f"Generating the synthetic world ({settings.num_videos} videos, "
                                 f"{settings.image_size}x{settings.image_size}, {settings.num_frames} frames)")
        for name in ("world", "runs"):
            _fresh_owned(out / name)
        world = build_world(out / "world", settings, seed, progress)
        results["world"] = world.info
        echo("   " + ", ".join(f"{k} {v}" for k, v in world.info.items() if k != "root"))
        runner = Runner(out, settings, world, progress)
        paths = world.paths
        chance = 100.0 / max(1, len(world.split_records["test"]))
        results["chance_R1"] = round(chance, 2)
        clock.record("world", t)

        # ------------------------------------------------------------------ stage 0
        t = _header(echo, clock, "Stage 0: image-text CLIP on single frames and their captions")
        torch.manual_seed(seed)
        from clipvip.model.clipvip import CLIPViP

        init0 = runner.save_init("stage0", CLIPViP(model_config(settings, world.tokenizer, num_proxies=1)))
        image_model, _ = runner.train(runner.recipe(
            "stage0_image_text", init=init0, task="image_text", train=paths["images"],
            steps=settings.image_steps, lr=settings.image_lr, seed=seed, group=False))
        image_model.set_attention("frame")
        zs_image = runner.evaluate(image_model)
        echo(f"   zero-shot on test videos (frame mean pooling): {_brief(zs_image)}")
        image_state = {k: v.clone() for k, v in image_model.state_dict().items()}
        clock.record("stage0_image_text", t)

        # ------------------------------------------------------------------ training runs (jobs)
        # Stage 1, the attention ablation and the OCL ablation are independent runs once stage 0 is done
        # (stage 2 waits for stage 1's weights): they run side by side as jobs (clipvip.demo.jobs).
        init1 = runner.save_init("stage1", inflate(image_state, runner.video_config,
                                                   generator=torch.Generator().manual_seed(seed),
                                                   source="the stage-0 image model"))
        seeds = [seed + k for k in range(settings.attention_seeds)]
        if "proxy" not in settings.attention_modes:
            raise ValueError("settings.attention_modes must include 'proxy' (the main model)")
        variants = list(dict.fromkeys([*settings.ablation_variants, "vs", settings.ocl_variant]))
        shares_main = settings.ocl_pretrain_steps == settings.pretrain_steps  # the d row reuses stage 1
        n_runs = 1 + len(seeds) * len(settings.attention_modes) + 2 * len(variants) - int(shares_main)
        t = _header(echo, clock, f"Training runs ({n_runs}) in {workers} worker process"
                                 f"{'es' if workers > 1 else ''} ({threads or 'default'} torch thread each): "
                                 f"stage 1 post-pretraining (OCL {settings.ocl_variant}); stage 2 fine-tuning with "
                                 f"{', '.join(settings.attention_modes)} attention, seeds {seeds}; OCL variants "
                                 f"{'/'.join(variants)} ({settings.ocl_pretrain_steps} post-pretraining + "
                                 f"{settings.ocl_finetune_steps} fine-tuning steps each)")

        main_name = f"stage1_ocl_{settings.ocl_variant}"
        stage1: dict[str, Any] = {}
        att_runs: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in settings.attention_modes}
        ocl_rows: dict[str, Any] = {}
        run_seconds: dict[str, float] = {}  # one entry per finished run
        stage2_last: dict[tuple[str, int], str] = {}  # (mode, seed) -> the run's last checkpoint

        def ocl_row(variant: str, pre: dict[str, Any], fine: dict[str, Any], tag: str) -> None:
            ocl_rows[variant] = {"steps": pre["steps"], "final_loss": pre["final_loss"],
                                 "zero_shot_test": pre["test"], "finetuned_test": fine["test"]}
            echo(f"{tag} OCL {variant:>2}: zero-shot {_brief(pre['test'])}; fine-tuned {_brief(fine['test'])}")

        futures: dict[Any, Any] = {}

        def submit(key: Any, *specs: RunSpec) -> None:
            futures[pool.submit(runner, tuple(specs))] = key

        def handle(key: Any, runs: list[dict[str, Any]]) -> None:
            for r in runs:
                run_seconds[r["name"]] = r["seconds"]
            tag = f"   [{len(run_seconds)}/{n_runs} runs, {clock.total:5.0f}s]"
            kind = key[0]
            if kind == "stage1":
                stage1.update(runs[0])
                echo(f"{tag} stage 1 post-pretrained; zero-shot on test: {_brief(runs[0]['test'])}")
                for run_seed in seeds:  # stage 2 starts from stage 1's weights
                    for mode in settings.attention_modes:
                        submit(("stage2", mode, run_seed), finetune_spec(
                            settings, runs[0]["last"], mode, settings.finetune_steps,
                            f"stage2_{mode}_seed{run_seed}", run_seed))
                if shares_main:
                    submit(("ocl_finetune", settings.ocl_variant), finetune_spec(
                        settings, runs[0]["last"], "proxy", settings.ocl_finetune_steps,
                        f"ablation_ocl_{settings.ocl_variant}_finetune", seed, with_val=False))
            elif kind == "stage2":
                _, mode, run_seed = key
                r = runs[0]
                att_runs[mode][run_seed] = {"test": r["test"], "curve": _curve(r["history"]), "steps": r["steps"]}
                stage2_last[(mode, run_seed)] = r["last"]
                echo(f"{tag} stage 2, seed {run_seed} {mode:>5}: {_brief(r['test'])}")
            elif kind == "ocl":
                ocl_row(key[1], runs[0], runs[1], tag)
            elif kind == "ocl_finetune":
                ocl_row(key[1], stage1, runs[0], tag)

        submit(("stage1",), pretrain_spec(settings, init1, settings.ocl_variant, settings.pretrain_steps, main_name,
                                          seed))
        for variant in variants:
            if variant == settings.ocl_variant and shares_main:
                continue
            submit(("ocl", variant), *ocl_job(settings, init1, variant, seed))
        drain(futures, handle)
        worker_cpu = pool.close()
        zs_video = stage1["test"]

        attention = {"seeds": seeds, "selection": SELECTION, "modes": {}}
        for mode, per_seed in att_runs.items():
            ms = [per_seed[s_]["test"] for s_ in seeds]
            attention["modes"][mode] = {
                "t2v_R1": [m["t2v"]["R1"] for m in ms], "v2t_R1": [m["v2t"]["R1"] for m in ms],
                "order_acc": [m["order"]["acc"] for m in ms], "pair_R1": [m["pair"]["R1"] for m in ms],
            }
            if all("fair" in m for m in ms):
                attention["modes"][mode]["t2v_R1_fair"] = [m["fair"]["R1"] for m in ms]
            a = attention["modes"][mode]
            echo(f"   {mode:>5} over {len(seeds)} seeds: t2v R@1 {_mean_std(a['t2v_R1'])}, "
                 f"order acc {_mean_std(a['order_acc'])}, pair R@1 {_mean_std(a['pair_R1'])}")
        results["attention"] = attention
        first = seeds[0]
        results["attention_ablation"] = {
            mode: {"test": per_seed[first]["test"], "curve": per_seed[first]["curve"],
                   "seeds": {str(s_): r for s_, r in per_seed.items()}}
            for mode, per_seed in att_runs.items()}
        final_test = att_runs["proxy"][first]["test"]
        results["main"] = {
            "rows": {
                "stage 0 image-text CLIP, zero-shot (frame mean pooling)": zs_image,
                f"stage 1 CLIP-ViP post-pretrained (OCL {settings.ocl_variant}), zero-shot": zs_video,
                f"stage 2 CLIP-ViP fine-tuned (proxy attention, seed {first})": final_test,
            },
            "final": final_test,
            "selection": SELECTION,
            "curves": {f"{mode} (seed {s_})": r["curve"] for mode, per_seed in att_runs.items()
                       for s_, r in per_seed.items()},
        }
        results["ocl_ablation"] = {v: ocl_rows[v] for v in variants if v != "vs"}
        results["aux_caption_ablation"] = {
            "without auxiliary captions (vs)": ocl_rows["vs"],
            f"with auxiliary captions ({settings.ocl_variant})": ocl_rows[settings.ocl_variant],
        }
        clock.record("training_runs", t)

        # ------------------------------------------------------------------ model out
        final_model = CLIPViP.from_pretrained(Path(stage2_last[("proxy", first)]))  # the main model
        final_model.set_attention("proxy")
        final_model.eval()
        model_dir = out / "model"
        remove_owned(model_dir, DEMO_OWNER)
        final_model.save_pretrained(model_dir, tokenizer=world.tokenizer)
        mark_owned(model_dir, DEMO_OWNER)
        results["model_dir"] = str(model_dir)

        # ------------------------------------------------------------------ NMI domain gap
        t = _header(echo, clock, "Language domain gap (NMI of K-means clusters vs corpus)")
        image_model.set_attention("proxy")
        results["domain_gap"] = domain_gap(world, {"stage 0 image-text model": image_model,
                                                   "final CLIP-ViP": final_model}, seed, settings.max_length)
        for name, entry in results["domain_gap"].items():
            echo(f"   {name}: " + ", ".join(f"{p} {v:.3f}" for p, v in entry["pairs"].items()))
        clock.record("domain_gap", t)

        # ------------------------------------------------------------------ search
        t = _header(echo, clock, "Indexing the test videos with the saved model and querying them")
        results["search"] = search_demo(out, model_dir, world, settings, echo, progress)
        clock.record("search", t)

        # ------------------------------------------------------------------ report
        t = _header(echo, clock, "Writing results.json, report.md and plots")
        results["timings"] = timings(clock, cpu0, worker_cpu, run_seconds, workers)
        from clipvip.demo.report import write_outputs

        results["files"] = write_outputs(out, results, world, echo)
        clock.record("report", t)
        # CPU time next to wall time: on a shared machine wall time mostly measures the neighbours.
        results["timings"] = timings(clock, cpu0, worker_cpu, run_seconds, workers)
        from clipvip.demo.report import write_json

        write_json(out / "results.json", results)
        echo(f"\nDone in {clock.total:.1f}s wall ({results['timings']['cpu_s']:.0f}s CPU). "
             f"Report: {out / 'report.md'}; model: {model_dir}")
        return results
    finally:
        pool.close(cancel=True)
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------------------------------------- helpers
def pretrain_spec(settings: DemoSettings, init: str | Path, variant: str, steps: int, name: str,
                  seed: int) -> RunSpec:
    """A post-pretraining run (OCL ``variant``) from ``init``."""
    return RunSpec(name, init=str(init), task="pretrain", train="pretrain", steps=steps, lr=settings.pretrain_lr,
                   seed=seed, variant=variant, lr_mult=dict(settings.pretrain_lr_mult))


def finetune_spec(settings: DemoSettings, start: str | Path, attention: str, steps: int, name: str, seed: int,
                  with_val: bool = True) -> RunSpec:
    """A fine-tuning run on the downstream captions from ``start`` (a folder or :data:`PREVIOUS`)."""
    return RunSpec(name, init=str(start), task="retrieval", train="train", val="val" if with_val else None,
                   steps=steps, lr=settings.finetune_lr, seed=seed, attention=attention,
                   lr_mult=dict(settings.lr_mult))


def ocl_job(settings: DemoSettings, init: str | Path, variant: str, seed: int,
            prefix: str = "ablation_ocl") -> tuple[RunSpec, RunSpec]:
    """The OCL ablation's job for one variant: a short post-pretraining from the inflated stage-0 model
    (``init``), then a short fine-tune of its result (proxy attention, no validation split)."""
    return (pretrain_spec(settings, init, variant, settings.ocl_pretrain_steps, f"{prefix}_{variant}", seed),
            finetune_spec(settings, PREVIOUS, "proxy", settings.ocl_finetune_steps, f"{prefix}_{variant}_finetune",
                          seed, with_val=False))


def timings(clock: Stopwatch, cpu0: float, worker_cpu: float, run_seconds: dict[str, float],
            workers: int) -> dict[str, Any]:
    """``results.json`` ``timings``: wall seconds per stage, total wall, CPU seconds of this process plus
    its worker processes, and each training run's own wall seconds (runs overlap when ``workers`` > 1)."""
    return {"stages_s": dict(clock.stages), "total_s": round(clock.total, 2),
            "cpu_s": round(time.process_time() - cpu0 + worker_cpu, 2), "jobs": workers,
            "runs_s": dict(sorted(run_seconds.items()))}


def domain_gap(world: Any, models: dict[str, Any], seed: int, max_length: int) -> dict[str, Any]:
    """NMI matrix between subtitles, auxiliary captions and downstream captions, per text encoder."""
    import random

    from clipvip.analysis.domain_gap import nmi_matrix
    from clipvip.data.annotations import read_jsonl
    from clipvip.demo.world import record_texts
    from clipvip.train.evaluate import encode_texts

    pre = read_jsonl(world.paths["pretrain"])
    corpora = {
        "subtitles": [str(r.get("subtitle") or "") for r in pre],
        "auxiliary captions": [str(r["caption"]) for r in pre if r.get("caption")],
        "downstream captions": [t for r in world.split_records["train"] for t in record_texts(r)],
    }
    n = min(len(v) for v in corpora.values())
    out: dict[str, Any] = {}
    for name, model in models.items():
        feats = {}
        for corpus, texts in corpora.items():
            pick = random.Random(seed).sample(range(len(texts)), n)
            feats[corpus] = encode_texts(model, world.tokenizer, [texts[i] for i in pick],
                                         max_length=max_length).numpy()
        names, matrix = nmi_matrix(feats, seed=seed)
        pairs = {f"{names[i]} | {names[j]}": float(matrix[i, j])
                 for i in range(len(names)) for j in range(i + 1, len(names))}
        out[name] = {"names": names, "matrix": [[None if v != v else float(v) for v in r] for r in matrix],
                     "pairs": pairs, "texts_per_corpus": n}
    return out


def search_demo(out: Path, model_dir: Path, world: Any, settings: DemoSettings, echo: Echo,
                progress: bool) -> dict[str, Any]:
    """Index the test videos with ``clipvip.load(model_dir)`` and answer a few captions as text queries.

    The test videos are copied into ``out/test_videos`` so the index covers exactly the test split (the
    world's video folder holds every split).
    """
    from clipvip.pipeline import load
    from clipvip.search.index import build_index
    from clipvip.search.service import SearchService

    videos = out / "test_videos"
    _fresh_owned(videos)
    for rec in world.split_records["test"]:
        shutil.copy2(rec["video"], videos / Path(rec["video"]).name)
    index_dir = out / "index"
    _fresh_owned(index_dir)
    pipeline = load(str(model_dir), device="cpu")
    stats = build_index(videos, index_dir, pipeline, batch_size=16, progress=progress, echo=echo)
    service = SearchService(index_dir, pipeline)
    # Queries: the first captions of the first test videos, in file order (not chosen by the model's results).
    queries = []
    for rec in world.split_records["test"][: settings.search_queries]:
        queries.append({"query": world_record_text(rec), "expected": Path(rec["video"]).name})
    answers = []
    hits = 0
    for q in queries:
        top = service.search(q["query"], k=min(5, len(service)))
        first = top[0]["path"] if top else None
        hits += int(first == q["expected"])
        answers.append({**q, "results": top, "top1_correct": first == q["expected"]})
        echo(f'   query: "{q["query"]}"  (expected {q["expected"]})')
        for r in top[:3]:
            mark = "*" if r["path"] == q["expected"] else " "
            echo(f"     {mark} #{r['rank']} {r['path']}  score {r['score']:.3f}")
    # Every test caption through the index: the file-based path (decode -> transform -> encode) must agree
    # with the in-memory evaluation of the same model.
    all_top1 = 0
    from clipvip.demo.world import record_texts

    texts, names = [], []
    for rec in world.split_records["test"]:
        for text in record_texts(rec):
            texts.append(text)
            names.append(Path(rec["video"]).name)
    for text, name in zip(texts, names):
        top = service.search(text, k=1)
        all_top1 += int(bool(top) and top[0]["path"] == name)
    return {
        "index_dir": str(index_dir),
        "indexed": len(service),
        "failures": stats.failures,
        "index_seconds": round(stats.seconds, 2),
        "queries": answers,
        "queries_top1": hits,
        "all_captions_top1_percent": round(100.0 * all_top1 / max(1, len(texts)), 2),
    }


def world_record_text(rec: dict[str, Any]) -> str:
    from clipvip.demo.world import record_texts

    return record_texts(rec)[0]
