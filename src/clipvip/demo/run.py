"""``run_demo``: the whole method on a synthetic world, offline, in minutes on a CPU.

Stages (each prints a header and shows tqdm bars):

0. generate the synthetic world and decode it once;
1. stage 0: pretrain a tiny image-text CLIP (a CLIP-ViP with one proxy, on single middle frames and their
   captions): the "image-text model" the paper starts from;
2. stage 1: inflate it to CLIP-ViP (proxies, temporal table) and post-pretrain with the omnisource loss
   (OCL, variant d) on videos + noisy subtitles + auxiliary frame captions;
3. stage 2: fine-tune on downstream captions (train split, best on val) and evaluate on test, t2v and v2t,
   plain and with DSL;
4. ablations: attention mode (frame mean pooling / full / proxy), OCL variants, with vs without auxiliary
   captions, and the NMI language domain gap between subtitles, auxiliary and downstream captions;
5. write ``results.json``, ``report.md``, plots and ``model/``; index the test videos and query them.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from clipvip.demo import engine
from clipvip.demo.settings import DemoSettings, preset

Echo = Callable[[str], None]


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


def model_config(settings: DemoSettings, vocab_size: int, num_proxies: int, attention: str = "proxy") -> Any:
    """The demo architecture: ``clipvip-tiny`` resized to the world (frames, image size, vocabulary)."""
    from clipvip.config import CLIPViPConfig

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
              "num_hidden_layers": settings.layers, "vocab_size": vocab_size,
              "max_position_embeddings": settings.max_length},
    )


def _header(echo: Echo, clock: Stopwatch, title: str) -> float:
    echo(f"\n== [{clock.total:6.1f}s] {title}")
    return time.perf_counter()


def _brief(metrics: dict[str, dict[str, float]]) -> str:
    parts = []
    for key in ("t2v", "v2t", "t2v_dsl", "v2t_dsl"):
        if key in metrics:
            parts.append(f"{key} R@1 {metrics[key]['R1']:.1f}")
    if "order" in metrics:
        parts.append(f"order acc {metrics['order']['acc']:.1f}")
    return ", ".join(parts)


def _curve(history: list[dict[str, Any]], key: str = "t2v") -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key]["R1"])) for h in history]


def _strip(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A copy of a history entry for results.json (so later edits of the history do not leak in)."""
    return None if entry is None else dict(entry)


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    settings: DemoSettings | None = None,
    echo: Echo | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run the whole demo into ``out_dir`` and return the results (also written to ``results.json``).

    ``settings`` overrides the preset picked by ``quick`` (tests use smaller ones). ``threads`` sets
    torch's intra-op threads for the run (default 1: the tiny model's ops are too small to
    gain from more, and on a shared machine extra threads only wait for each other; None keeps torch's).
    """
    from clipvip.demo.world import build_world, twin_groups
    from clipvip.weights import inflate

    echo = echo or (lambda msg: print(msg, flush=True))
    settings = settings or preset(quick)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    clock = Stopwatch()
    cpu0 = time.process_time()
    results: dict[str, Any] = {
        "demo": {"preset": settings.name, "seed": seed, "settings": settings.to_dict(),
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "platform": platform.platform(), "cpus": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()}},
    }
    try:
        echo(f"clipvip demo ({settings.name}): output in {out}")

        # ------------------------------------------------------------------ world
        t = _header(echo, clock, f"Generating the synthetic world ({settings.num_videos} videos, "
                                 f"{settings.image_size}x{settings.image_size}, {settings.num_frames} frames)")
        world_dir = out / "world"
        if world_dir.exists():
            shutil.rmtree(world_dir)
        world = build_world(world_dir, settings, seed, progress)
        results["world"] = world.info
        echo("   " + ", ".join(f"{k} {v}" for k, v in world.info.items() if k != "root"))
        clock.record("world", t)
        vocab = len(world.tokenizer)
        test = world.splits["test"]
        # Selection on val; a world too small to have val clips falls back to the last step (said in the log).
        val = world.splits["val"] if len(world.splits["val"].clips) else None
        if val is None:
            echo("   warning: the world has no val clips; fine-tuning keeps the last step")
        train_rows = world.pair_rows("train")
        # Batches hold both clips of a reverse-order twin pair (hard negatives that differ only in order).
        finetune_task = engine.PairTask(clips=world.splits["train"].clips, texts=world.splits["train"].texts,
                                        text_rows=train_rows, groups=twin_groups(world.split_records["train"]))
        chance = 100.0 / max(1, len(test.clips))
        results["chance_R1"] = round(chance, 2)

        # ------------------------------------------------------------------ stage 0
        t = _header(echo, clock, "Stage 0: image-text CLIP on single frames and their captions")
        torch.manual_seed(seed)
        image_model = engine_model(settings, vocab, num_proxies=1, attention="proxy")
        image_task = engine.PairTask(clips=world.images.pixels, texts=world.image_texts,
                                     text_rows=[[i] for i in range(len(world.images))])
        fit0 = engine.fit(image_model, image_task, steps=settings.image_steps, batch_size=settings.batch_size,
                          lr=settings.image_lr, weight_decay=settings.weight_decay, seed=seed,
                          desc="stage 0 image-text", progress=progress)
        image_model.set_attention("frame")
        zs_image = engine.evaluate(image_model, test)
        image_model.set_attention("proxy")
        echo(f"   {fit0.steps} steps in {fit0.seconds:.1f}s, loss {fit0.final_loss:.3f}; zero-shot on test "
             f"videos (frame mean pooling): {_brief(zs_image)}")
        clock.record("stage0_image_text", t)

        # ------------------------------------------------------------------ stage 1
        t = _header(echo, clock, f"Stage 1: post-pretraining CLIP-ViP with OCL (variant {settings.ocl_variant}) on "
                                 f"videos + subtitles + auxiliary captions")
        video_config = model_config(settings, vocab, num_proxies=settings.num_proxies)
        pretrained: dict[str, Any] = {}
        pre_runs: dict[str, dict[str, Any]] = {}

        def post_pretrain(variant: str, steps: int, label: str) -> Any:
            torch.manual_seed(seed)
            model = inflate(image_model.state_dict(), video_config, source="the stage-0 image model")
            task = engine.OCLTask(clips=world.pretrain, subtitles=world.subtitles, captions=world.captions,
                                  has_caption=world.has_caption, variant=variant,
                                  groups=twin_groups(world.pretrain_records))
            fit = engine.fit(model, task, steps=steps, batch_size=settings.batch_size, lr=settings.pretrain_lr,
                             weight_decay=settings.weight_decay, seed=seed, desc=label, progress=progress)
            zs = engine.evaluate(model, test)
            pre_runs[variant] = {"steps": fit.steps, "seconds": round(fit.seconds, 2),
                                 "final_loss": round(fit.final_loss, 4), "zero_shot_test": zs}
            return model

        main_model = post_pretrain(settings.ocl_variant, settings.pretrain_steps, "stage 1 OCL")
        pretrained[settings.ocl_variant] = main_model
        zs_video = pre_runs[settings.ocl_variant]["zero_shot_test"]
        echo(f"   zero-shot on test after post-pretraining: {_brief(zs_video)}")
        stage1_state = copy.deepcopy(main_model.state_dict())
        clock.record("stage1_post_pretrain", t)

        # ------------------------------------------------------------------ stage 2
        t = _header(echo, clock, "Stage 2: fine-tuning on downstream captions (train split, best on val)")

        def finetune(start_state: dict[str, torch.Tensor], attention: str, steps: int, label: str,
                     eval_every: int) -> tuple[Any, engine.FitResult, dict[str, Any]]:
            torch.manual_seed(seed)
            model = engine_from_state(video_config, start_state)
            model.set_attention(attention)
            fit = engine.fit(model, finetune_task, steps=steps, batch_size=settings.batch_size,
                             lr=settings.finetune_lr, weight_decay=settings.weight_decay, seed=seed, val=val,
                             eval_every=eval_every, desc=label, progress=progress)
            return model, fit, engine.evaluate(model, test)

        final_model, fit2, final_test = finetune(stage1_state, "proxy", settings.finetune_steps,
                                                 "stage 2 fine-tune", settings.eval_every)
        echo(f"   best val at step {fit2.best['step'] if fit2.best else '-'}; test: {_brief(final_test)} "
             f"(chance R@1 {chance:.1f})")
        results["main"] = {
            "rows": {
                "stage 0 image-text CLIP, zero-shot (frame mean pooling)": zs_image,
                f"stage 1 CLIP-ViP post-pretrained (OCL {settings.ocl_variant}), zero-shot": zs_video,
                "stage 2 CLIP-ViP fine-tuned": final_test,
            },
            "final": final_test,
            "best_val": _strip(fit2.best),
            "curves": {"proxy": _curve(fit2.history)},
        }
        clock.record("stage2_finetune", t)

        # ------------------------------------------------------------------ model out
        model_dir = out / "model"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        final_model.save_pretrained(model_dir, tokenizer=world.tokenizer)
        results["model_dir"] = str(model_dir)

        # ------------------------------------------------------------------ ablation: attention
        t = _header(echo, clock, "Ablation: attention mode (fine-tuned from the same post-pretrained weights)")
        att_rows: dict[str, Any] = {}
        for mode in settings.attention_modes:
            if mode == "proxy" and settings.ablation_finetune_steps == settings.finetune_steps:
                model, fit, metrics = final_model, fit2, final_test
            else:
                model, fit, metrics = finetune(stage1_state, mode, settings.ablation_finetune_steps,
                                               f"ablation attention={mode}", settings.eval_every)
            row = {"test": metrics, "best_val": _strip(fit.best), "curve": _curve(fit.history),
                   "seconds": round(fit.seconds, 2)}
            att_rows[mode] = row
            echo(f"   {mode:>5}: {_brief(metrics)}")
        results["attention_ablation"] = att_rows
        results["main"]["curves"].update({f"ablation {m}": r["curve"] for m, r in att_rows.items()})
        clock.record("ablation_attention", t)

        # ------------------------------------------------------------------ ablation: OCL variants
        t = _header(echo, clock, "Ablation: OCL variants and auxiliary captions (short post-pretraining runs)")
        variants = list(dict.fromkeys([*settings.ablation_variants, "vs", "d"]))
        for variant in variants:
            if variant == settings.ocl_variant and settings.ablation_pretrain_steps == settings.pretrain_steps:
                continue
            pretrained[variant] = post_pretrain(variant, settings.ablation_pretrain_steps, f"ablation OCL {variant}")
        ocl_rows: dict[str, Any] = {}
        for variant in variants:
            state = copy.deepcopy(pretrained[variant].state_dict())
            _, fit, metrics = finetune(state, "proxy", settings.ocl_finetune_steps,
                                       f"ablation OCL {variant} fine-tune", 0)
            ocl_rows[variant] = {**pre_runs[variant], "finetuned_test": metrics}
            echo(f"   {variant:>2}: zero-shot {_brief(pre_runs[variant]['zero_shot_test'])}; "
                 f"fine-tuned {_brief(metrics)}")
        results["ocl_ablation"] = {v: ocl_rows[v] for v in variants if v != "vs"}
        results["aux_caption_ablation"] = {
            "without auxiliary captions (vs)": ocl_rows["vs"],
            "with auxiliary captions (d)": ocl_rows["d"],
        }
        clock.record("ablation_ocl", t)

        # ------------------------------------------------------------------ NMI domain gap
        t = _header(echo, clock, "Language domain gap (NMI of K-means clusters vs corpus)")
        results["domain_gap"] = domain_gap(world, {"stage 0 image-text model": image_model,
                                                   "final CLIP-ViP": final_model}, seed)
        for name, entry in results["domain_gap"].items():
            echo(f"   {name}: " + ", ".join(f"{p} {v:.3f}" for p, v in entry["pairs"].items()))
        clock.record("domain_gap", t)

        # ------------------------------------------------------------------ search
        t = _header(echo, clock, "Indexing the test videos with the saved model and querying them")
        results["search"] = search_demo(out, model_dir, world, settings, echo, progress)
        clock.record("search", t)

        # ------------------------------------------------------------------ report
        t = _header(echo, clock, "Writing results.json, report.md and plots")
        results["timings"] = {"stages_s": clock.stages, "total_s": round(clock.total, 2),
                              "cpu_s": round(time.process_time() - cpu0, 2)}
        from clipvip.demo.report import write_outputs

        results["files"] = write_outputs(out, results, world, echo)
        clock.record("report", t)
        # CPU time next to wall time: on a shared machine wall time mostly measures the neighbours.
        results["timings"] = {"stages_s": clock.stages, "total_s": round(clock.total, 2),
                              "cpu_s": round(time.process_time() - cpu0, 2)}
        from clipvip.demo.report import write_json

        write_json(out / "results.json", results)
        echo(f"\nDone in {clock.total:.1f}s. Report: {out / 'report.md'}; model: {model_dir}")
        return results
    finally:
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------------------------------------- helpers
def engine_model(settings: DemoSettings, vocab: int, num_proxies: int, attention: str = "proxy") -> Any:
    from clipvip.model.clipvip import CLIPViP

    return CLIPViP(model_config(settings, vocab, num_proxies=num_proxies, attention=attention))


def engine_from_state(config: Any, state: dict[str, torch.Tensor]) -> Any:
    from clipvip.model.clipvip import CLIPViP

    model = CLIPViP(copy.deepcopy(config))
    model.load_state_dict(state)
    return model


def domain_gap(world: Any, models: dict[str, Any], seed: int) -> dict[str, Any]:
    """NMI matrix between subtitles, auxiliary captions and downstream captions, per text encoder."""
    from clipvip.analysis.domain_gap import nmi_matrix

    corpora = {
        "subtitles": world.subtitles,
        "auxiliary captions": _subset(world.captions, world.has_caption),
        "downstream captions": world.splits["train"].texts,
    }
    n = min(len(b.texts) for b in corpora.values())
    out: dict[str, Any] = {}
    for name, model in models.items():
        feats = {}
        for corpus, bank in corpora.items():
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(bank.texts), generator=g)[:n]
            sub = engine.TextBank(bank.input_ids[pick], bank.attention_mask[pick], [bank.texts[i] for i in pick])
            feats[corpus] = engine.encode_text_bank(model, sub).numpy()
        names, matrix = nmi_matrix(feats, seed=seed)
        pairs = {f"{names[i]} | {names[j]}": float(matrix[i, j])
                 for i in range(len(names)) for j in range(i + 1, len(names))}
        out[name] = {"names": names, "matrix": [[None if v != v else float(v) for v in r] for r in matrix],
                     "pairs": pairs, "texts_per_corpus": n}
    return out


def _subset(bank: engine.TextBank, mask: torch.Tensor) -> engine.TextBank:
    index = mask.nonzero().reshape(-1)
    return engine.TextBank(bank.input_ids[index], bank.attention_mask[index], [bank.texts[i] for i in index])


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
    if videos.exists():
        shutil.rmtree(videos)
    videos.mkdir(parents=True)
    for rec in world.split_records["test"]:
        shutil.copy2(rec["video"], videos / Path(rec["video"]).name)
    index_dir = out / "index"
    if index_dir.exists():
        shutil.rmtree(index_dir)
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
    texts = world.splits["test"].texts.texts
    t2v = world.splits["test"].text_to_video
    names = [Path(world.split_records["test"][v]["video"]).name for v in t2v]
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
