"""The training run: post-pretraining (OCL) and fine-tuning (InfoNCE), one process or many.

One code path serves a single CPU process and ``torchrun`` + DDP (gloo on CPU, nccl on GPU):

* the global batch is fixed by the recipe; each rank draws its slice of the same global batch
  (:class:`~clipvip.train.sampler.ResumableBatchSampler`) and the features are gathered **with gradient**
  before the loss, so every rank computes the loss of the global batch (reference §3, ``if_gather``);
* the log temperature is clamped to ``[0, ln 200]`` after every optimiser step;
* evaluation runs on the unwrapped model with the videos sharded across the ranks; rank 0 scores the
  tables, selects and writes (see ``evaluate.py``);
* ``last/`` is saved atomically at every evaluation, every ``run.save_every`` steps and at the end;
  ``best/`` follows the selection metric on the validation split (or, explicitly and labelled, on test);
* with ``run.keep_every: N``, ``last/`` is also published (hard links, model only) as ``step_{step:08d}/``
  at step 0 and every N steps, the points of the post-pretraining curves; a resume re-creates a kept folder
  that an interruption missed and removes kept folders of a later point of another history;
* resuming from ``last/`` restores model, optimiser, scheduler, scaler, every RNG and the data position
  (epoch and batch within the epoch), so an interrupted run continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from clipvip.train import checkpoint as ckpt
from clipvip.train.config import ConfigError, TrainConfig
from clipvip.train.logging import JsonlLog, Scalars, flatten_metrics, write_json
from clipvip.train.sampler import GroupBatchSampler, ResumableBatchSampler, groups_from_field
from clipvip.train.wrapper import FeatureModel, move_to

log = logging.getLogger("clipvip.train")

TEST_SELECTION_LABEL = "test split (reproduces the reference's test-set selection; optimistic)"


# ------------------------------------------------------------------------------------------ building
def build_model(cfg: TrainConfig) -> Any:
    """The ``CLIPViP`` named by ``model.init``, with the attention override applied."""
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP

    kind, _, ref = cfg.model.init.partition(":")
    try:
        if kind == "config":
            overrides: dict[str, Any] = {}
            if cfg.model.image_size:
                overrides["vision"] = {"image_size": cfg.model.image_size}
            model = CLIPViP(CLIPViPConfig.from_name(ref, **overrides))
        elif kind == "clip":
            model = CLIPViP.from_clip(ref)
        elif kind == "official":
            model = CLIPViP.from_official_checkpoint(ref)
        elif kind == "pretrained":
            model = CLIPViP.from_pretrained(ref)
        else:  # validated in the config; kept for direct callers
            raise ConfigError(f"model.init={cfg.model.init!r}: unknown kind {kind!r}")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a damaged or foreign file raises: one line naming it
        known = isinstance(exc, (KeyError, ValueError, OSError))  # CheckpointError is a ValueError
        raise ConfigError(f"model.init={cfg.model.init!r}: {'' if known else type(exc).__name__ + ': '}"
                          f"{one_line(exc)}") from None
    if cfg.model.attention:
        model.set_attention(cfg.model.attention)
    if cfg.model.image_size and model.config.vision.image_size != cfg.model.image_size:
        raise ConfigError(f"model.image_size={cfg.model.image_size} differs from the weights' image size "
                          f"{model.config.vision.image_size} ({cfg.model.init})")
    return model


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line loader reports joined with '; ')."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or type(exc).__name__


def record_frames(model: Any, cfg: TrainConfig) -> None:
    """Record in the model's config the frames it is trained and validated with, so a saved checkpoint
    is evaluated the same way by ``clipvip.load``/``eval``/``index``/``curve`` (``config.json`` ``frames``)."""
    from clipvip.config import FrameRecord

    model.config.frames = FrameRecord(train_num_frames=cfg.model.num_frames, train_sampling=cfg.data.sampling,
                                      eval_num_frames=cfg.model.eval_num_frames or cfg.model.num_frames,
                                      eval_sampling="uniform")


def tokenizer_spec(cfg: TrainConfig) -> str:
    """Where the tokenizer comes from: ``model.tokenizer`` (a path relative to ``data.root`` when it exists
    there, else as given, e.g. a hub name), else the init source when it carries one; official checkpoints
    use OpenAI's vocabulary bundled with the package (offline, no hub)."""
    if cfg.model.tokenizer:
        under_root = cfg.data.resolve(cfg.model.tokenizer)
        if under_root and Path(under_root).exists():
            return under_root
        return cfg.model.tokenizer
    kind, _, ref = cfg.model.init.partition(":")
    if kind in ("clip", "pretrained"):
        return ref
    if kind == "official":
        from clipvip.tokenizer import BUNDLED_BPE

        return str(BUNDLED_BPE)
    raise ConfigError(f"model.tokenizer is required with model.init={cfg.model.init!r} (random weights carry no "
                      f"tokenizer): give a tokenizer directory or CLIP's bpe_simple_vocab_16e6.txt.gz")


def build_datasets(cfg: TrainConfig, tokenizer: Any, image_size: int) -> dict[str, Any]:
    """Training dataset (+ optional image-text dataset) and the collators, from the data package."""
    from clipvip.data import datasets as D

    d = cfg.data
    train_path = d.resolve(d.train)
    if train_path is None or not Path(train_path).is_file():
        raise ConfigError(f"data.train: annotation file {train_path} not found")
    from clipvip.data.cache import open_cache

    try:
        cache = open_cache(d.cache)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data.cache={d.cache!r}: {exc}") from None
    common = dict(num_frames=cfg.model.num_frames, image_size=image_size, video_root=d.resolve(d.video_root),
                  sampling=d.sampling, seed=cfg.run.seed, cache=cache)
    if cache is not None and d.sampling not in ("uniform",):
        raise ConfigError(f"data.cache={d.cache!r} needs data.sampling=uniform (data.sampling={d.sampling!r} "
                          f"draws new frames every epoch; a cache would freeze them)")
    if d.task == "pretrain":
        train = D.PretrainDataset(train_path, **common)
    elif d.task == "image_text":
        # Stage 0 of the paper: an image-text CLIP; images (or a video's middle frame) are one-frame videos.
        train = D.ImageTextDataset(train_path, image_size=image_size, video_root=d.resolve(d.video_root),
                                   seed=cfg.run.seed, cache=cache)
    else:
        train = D.RetrievalTrainDataset(train_path, paragraph=d.paragraph, **common)
    out = {"train": train, "collate": D.Collator(tokenizer, cfg.model.max_length)}
    if d.image_text:
        path = d.resolve(d.image_text)
        if path is None or not Path(path).is_file():
            raise ConfigError(f"data.image_text: annotation file {path} not found")
        out["image_text"] = D.ImageTextDataset(path, image_size=image_size, video_root=d.resolve(d.video_root),
                                               seed=cfg.run.seed, cache=cache)
    out["cache"] = cache
    return out


SYNTHETIC_OWNER = "clipvip synthetic world"
#: The annotation files the synthetic world writes (a ``data.train`` naming anything else is a typo).
SYNTHETIC_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "pretrain.jsonl", "images.jsonl")


def maybe_generate_synthetic(cfg: TrainConfig) -> None:
    """Generate the synthetic world at ``data.root`` when asked to and when it is not there yet.

    Never into a folder holding anything it did not create: only into a new or empty ``data.root`` or one
    carrying the world's marker (written first, so an interrupted generation is finished by the next run).
    A ``data.train`` the world does not write is a typo, reported with the key and the path.
    """
    from clipvip.atomic import check_replaceable, mark_owned

    d = cfg.data
    if not d.generate_synthetic:
        return
    if not d.root:
        raise ConfigError("data.generate_synthetic needs data.root (where the world is written)")
    train = d.resolve(d.train)
    if train and Path(train).is_file():
        return
    root = Path(os.path.expanduser(d.root))
    if train is None or Path(train).parent.resolve() != root.resolve() or Path(train).name not in SYNTHETIC_FILES:
        raise ConfigError(f"data.train={d.train!r}: {train} not found (the synthetic world writes "
                          f"{', '.join(SYNTHETIC_FILES)} in data.root={d.root}); fix data.train")
    try:
        check_replaceable(root, SYNTHETIC_OWNER)
    except FileExistsError:
        raise ConfigError(f"data.train={d.train!r}: {train} not found, and data.root={d.root} holds files the "
                          f"synthetic world did not create: refusing to generate into it (fix data.train, or "
                          f"point data.root at a new or empty folder)") from None
    from clipvip.data.synthetic import generate_world

    root.mkdir(parents=True, exist_ok=True)
    mark_owned(root, SYNTHETIC_OWNER)
    log.info("generating the synthetic world in %s", d.root)
    generate_world(d.root)


# ------------------------------------------------------------------------------------------ helpers
def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to ``dtype`` on ``device``; a plain no-op context for fp32 (CUDA autocast rejects fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _metric(results: dict[str, Any], name: str) -> float:
    table, _, key = name.partition(".")
    try:
        return float(results[table][key])
    except (KeyError, TypeError):
        raise ConfigError(f"run.select_metric={name!r} is not in the evaluation results "
                          f"(tables: {sorted(k for k, v in results.items() if isinstance(v, dict))})") from None


def _better(name: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    lower_is_better = name.split(".")[-1] in ("MdR", "MnR")
    return new < old if lower_is_better else new > old


def compute_loss(cfg: TrainConfig, feats: dict[str, Tensor], logit_scale: Tensor,
                 batch: dict[str, Any], image_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The global-batch loss from already-gathered features (fp32)."""
    from clipvip import losses

    f = {k: v.float() for k, v in feats.items()}
    if cfg.data.task == "pretrain":
        has_caption = batch.get("has_caption")
        total, terms = losses.ocl_loss(cfg.run.ocl_variant, video=f["video"], frame=f.get("frame"),
                                       subtitle=f["subtitle"], caption=f.get("caption"),
                                       logit_scale=logit_scale, has_caption=has_caption)
        terms = dict(terms)
    else:
        total = losses.info_nce(f["video"], f["text"], logit_scale)
        terms = {"it" if cfg.data.task == "image_text" else "vt": total}
    if "image" in f:
        it = losses.info_nce(f["image"], f["image_text"], logit_scale)
        terms["image_text"] = it
        total = total + image_weight * it
    return total, terms


def _cycle(loader: torch.utils.data.DataLoader, sampler: ResumableBatchSampler, dataset: Any,
           epoch: int, start: int) -> Iterator[tuple[int, int, Any]]:
    """Endless (epoch, batch-in-epoch, batch) over the image-text loader, resumable at (epoch, start)."""
    while True:
        sampler.set_epoch(epoch, start)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for j, b in enumerate(loader, start=start):
            yield epoch, j + 1, b
        epoch, start = epoch + 1, 0


# ------------------------------------------------------------------------------------------ train
def train(cfg: TrainConfig, *, stop_after_steps: int | None = None,
          allow_config_change: bool = False) -> dict[str, Any]:
    """Run (or resume) the training run described by ``cfg``; see the module docstring.

    ``stop_after_steps`` ends the process's work after that many *global* steps as if killed right after the
    step (after its checkpoint if one was due); tests use it to simulate an interruption.
    ``allow_config_change`` lets a resume go on with keys changed that are not in
    :data:`~clipvip.train.config.SAFE_TO_CHANGE` (they are logged); otherwise such a resume is refused.

    Returns ``{"output_dir", "best", "history", "test", "selected_on", "steps", "final_loss"}`` (``final_loss``:
    mean loss of the last 10 steps of this call, None when it ran no step).
    """
    from clipvip.train import distributed as dist_utils

    cfg.check_runtime()
    was_distributed = dist_utils.is_distributed()
    rank, world, _local, device = dist_utils.setup()
    if cfg.run.device:
        device = torch.device(cfg.run.device)
    try:
        return _train(cfg, rank, world, device, stop_after_steps, allow_config_change)
    finally:
        if not was_distributed:
            dist_utils.cleanup()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device,
           stop_after_steps: int | None, allow_config_change: bool = False) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from clipvip import losses
    from clipvip.tokenizer import load_tokenizer
    from clipvip.train import distributed as dist_utils
    from clipvip.train.evaluate import evaluate_retrieval
    from clipvip.train.optim import build_optimizer, build_scheduler, steps_for, warmup_steps_for

    main = rank == 0
    out_dir = Path(cfg.run.output_dir)
    per_device = cfg.per_device_batch(world)
    amp_dtype = _autocast_dtype(cfg.run.precision, device)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True)
    # Everything that can refuse the run is checked before the run folder is created or touched.
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run.output_dir={cfg.run.output_dir}: exists and is not a folder")
    resume_dir = _resume_dir(cfg, out_dir)
    if resume_dir is None:
        for name in ("last", "best"):  # what a fresh start replaces must be a checkpoint this trainer wrote
            if os.path.lexists(out_dir / name) and not ckpt.is_complete(out_dir / name):
                raise ConfigError(f"run.output_dir={cfg.run.output_dir}: {out_dir / name} exists and is not a "
                                  f"checkpoint written by clipvip train; refusing to replace it (move it away or "
                                  f"choose another run.output_dir)")
    resume_state = ckpt.load_trainer_state(resume_dir) if resume_dir is not None else None
    if main and resume_dir is not None:
        _check_resume_config(cfg, resume_state, out_dir, allow_config_change)
    dist_utils.barrier()

    # Model: identical initialisation on every rank (DDP also broadcasts rank 0's weights).
    _seed_all(cfg.run.seed)
    model = build_model(cfg)
    record_frames(model, cfg)
    if main:  # after the model is known to load: a bad model.init must not cost a world generation first
        maybe_generate_synthetic(cfg)
    dist_utils.barrier()
    try:
        tokenizer = load_tokenizer(tokenizer_spec(cfg), max_length=cfg.model.max_length)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.tokenizer={tokenizer_spec(cfg)!r}: {one_line(exc)}") from None
    image_size = model.config.vision.image_size
    if cfg.run.freeze_text:
        for name, p in model.named_parameters():
            if name.startswith(("text_model.", "text_projection.")):
                p.requires_grad_(False)
    if cfg.run.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    model.to(device)

    try:
        data = build_datasets(cfg, tokenizer, image_size)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:  # unreadable or invalid annotations: the message names the file
        raise ConfigError(f"data.train={cfg.data.train!r}: {one_line(exc)}") from None
    train_ds = data["train"]
    sampler: ResumableBatchSampler | GroupBatchSampler
    if cfg.data.group_by:
        # Rows linked by data.group_by (e.g. twin clips) share a batch; every row once per epoch.
        try:
            groups = groups_from_field(train_ds.records, cfg.data.group_by)
        except ValueError as exc:
            raise ConfigError(f"data.group_by={cfg.data.group_by!r} on {cfg.data.resolve(cfg.data.train)}: "
                              f"{exc}") from None
        sampler = GroupBatchSampler(groups, per_device, rank=rank, world_size=world, seed=cfg.run.seed)
    else:
        sampler = ResumableBatchSampler(len(train_ds), per_device, rank=rank, world_size=world,
                                        seed=cfg.run.seed, shuffle=True, drop_last=True)
    # Private generators: creating a loader iterator draws a worker base seed, which must not disturb
    # the global RNG streams that a resume restores.
    loader_kw: dict[str, Any] = dict(collate_fn=data["collate"], num_workers=cfg.data.num_workers,
                                     pin_memory=device.type == "cuda")
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler,
                                         generator=torch.Generator().manual_seed(cfg.run.seed), **loader_kw)
    it_ds = data.get("image_text")
    it_sampler = it_loader = None
    if it_ds is not None:
        it_sampler = ResumableBatchSampler(len(it_ds), per_device, rank=rank, world_size=world,
                                           seed=cfg.run.seed + 1, shuffle=True, drop_last=True)
        it_loader = torch.utils.data.DataLoader(it_ds, batch_sampler=it_sampler,
                                                generator=torch.Generator().manual_seed(cfg.run.seed + 1),
                                                **loader_kw)

    if cfg.optim.max_steps:
        total_steps = int(cfg.optim.max_steps)
    else:
        total_steps = steps_for(cfg.optim.epochs, len(train_ds), cfg.run.global_batch_size)
    warmup = warmup_steps_for(total_steps, cfg.optim.warmup_ratio)
    optimizer = build_optimizer(model, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, lr_mul=cfg.optim.lr_mul,
                                lr_mul_prefix=cfg.optim.lr_mul_prefix, lr_mult=cfg.optim.lr_mult)
    scheduler = build_scheduler(optimizer, warmup, total_steps, cfg.optim.schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # Run state; overwritten by a resume.
    state: dict[str, Any] = {"epoch": 0, "step": 0, "step_in_epoch": 0, "best_metric": None, "best_step": None,
                             "it_epoch": 0, "it_step_in_epoch": 0, "history": []}
    if resume_dir is not None:
        ts = resume_state
        ckpt.load_model_weights_(model, resume_dir)
        fresh = [{k: g[k] for k in ("weight_decay", "betas", "eps") if k in g} for g in optimizer.param_groups]
        fresh_base = list(scheduler.base_lrs)
        try:
            optimizer.load_state_dict(ts["optimizer"])
            scheduler.load_state_dict(ts["scheduler"])
            if ts.get("scaler"):
                scaler.load_state_dict(ts["scaler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ckpt.CheckpointStateError(f"{resume_dir / ckpt.STATE_FILE}: optimiser/scheduler state does not "
                                            f"fit this model ({one_line(exc)}); use run.resume=never or another "
                                            f"run.output_dir") from None
        if allow_config_change and len(fresh_base) == len(scheduler.base_lrs):
            # The run goes on with the *new* optimiser settings (what config.yaml now says): the restored
            # moments and step count stay, the learning rates and decay follow the changed recipe.
            scheduler.base_lrs = fresh_base
            for group, settings, base, fn in zip(optimizer.param_groups, fresh, fresh_base, scheduler.lr_lambdas):
                group.update(settings)
                group["initial_lr"] = base
                group["lr"] = base * fn(scheduler.last_epoch)
        state.update(ts["run"])
        rng = ts["rng"][rank] if rank < len(ts["rng"]) else ts["rng"][0]
        ckpt.restore_rng_state(rng)
        if main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state["step"],
                     state["epoch"], state["step_in_epoch"])
    else:
        _seed_all(cfg.run.seed + rank)  # per-rank streams for anything random in the step
    keep_every = cfg.run.keep_every
    if main:  # validated: now the run folder may be created and written
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.yaml")
        if resume_dir is not None:
            _repair_after_kill(out_dir, resume_dir, state)
        else:  # a fresh start in a used folder: an earlier attempt's temporary folders are garbage too
            ckpt.remove_leftovers(out_dir)
        _reconcile_kept(out_dir, resume_dir, state["step"] if resume_dir is not None else -1, keep_every)

    net: torch.nn.Module = FeatureModel(model, cfg.data.task)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.attention == "frame")

    eval_log = JsonlLog(out_dir / "eval_log.jsonl" if main else None)
    scalars = Scalars(out_dir / "tb" if main else None)
    selected_on = "val" if cfg.run.select_on == "val" else TEST_SELECTION_LABEL
    select_split = cfg.data.val if cfg.run.select_on == "val" else cfg.data.test
    if main and cfg.run.select_on == "test":
        log.warning("run.select_on=test: best/ is selected on the TEST split to reproduce the reference; "
                    "numbers selected this way are optimistic")
    if main and select_split is None:
        log.warning("no %s split configured: best/ is the last checkpoint", cfg.run.select_on)

    def evaluate(split_path: str, split: str) -> dict[str, Any]:
        return evaluate_retrieval(model, tokenizer, cfg.data.resolve(split_path), num_frames=(
            cfg.model.eval_num_frames or cfg.model.num_frames), image_size=image_size,
            max_length=cfg.model.max_length, batch_size=cfg.data.eval_batch_size, device=device,
            video_root=cfg.data.resolve(cfg.data.video_root), paragraph=cfg.data.paragraph, dsl=True,
            num_workers=cfg.data.num_workers, progress=cfg.run.progress, autocast_dtype=amp_dtype,
            distributed=world > 1, cache=data.get("cache"))

    epoch_failures: list[tuple[str, str]] = list(state.get("epoch_failures", []))

    def save_last() -> Path:
        trainer_state = {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "run": {**{k: v for k, v in state.items()}, "epoch_failures": [list(f) for f in epoch_failures]},
            "rng": _all_rng_states(world),
            "world_size": world,
            "config": cfg.to_dict(),  # what a resume compares its own config with
        }
        if main:
            return ckpt.save_checkpoint(out_dir, "last", model, tokenizer, trainer_state,
                                        summary={"step": state["step"], "epoch": state["epoch"],
                                                 "step_in_epoch": state["step_in_epoch"],
                                                 "best_metric": state["best_metric"]})
        return out_dir / "last"

    def keep(last: Path) -> None:
        """Publish ``last/`` as the kept ``step_*`` folder of the current step (rank 0 only)."""
        if main:
            ckpt.keep_checkpoint(last, out_dir, state["step"])

    def evaluate_and_checkpoint(reason: str, keep_it: bool = False) -> None:
        record: dict[str, Any] | None = None
        # Every rank encodes its shard of the videos; rank 0 gets the tables.
        res = evaluate(select_split, cfg.run.select_on) if select_split else None
        if main:
            record = {"step": state["step"], "epoch": state["epoch"], "reason": reason,
                      "train_failures_epoch": len(epoch_failures),
                      "train_failures_examples": [list(f) for f in epoch_failures[:5]]}
            if select_split:
                assert res is not None
                record["split"] = cfg.run.select_on
                record["selected_on"] = selected_on
                record["metrics"] = res
                value = _metric(res, cfg.run.select_metric)
                record["select_metric"] = cfg.run.select_metric
                record["select_value"] = value
                improved = _better(cfg.run.select_metric, value, state["best_metric"])
                if improved:
                    state["best_metric"], state["best_step"] = value, state["step"]
                record["is_best"] = improved
                scalars.add_many(f"{cfg.run.select_on}", flatten_metrics(
                    {k: v for k, v in res.items() if isinstance(v, dict)}), state["step"])
                log.info("step %d %s %s=%.2f%s", state["step"], cfg.run.select_on, cfg.run.select_metric,
                         value, " (best)" if improved else "")
            else:
                improved = True
                record["is_best"] = True
            state["history"].append({k: v for k, v in record.items() if k != "train_failures_examples"})
        # Every rank takes part in saving (RNG states are gathered); only rank 0 writes.
        improved_flag = _broadcast_flag(bool(record and record.get("is_best")))
        last = save_last()
        if main:
            if improved_flag:
                publish_best(last, out_dir, selected_on, cfg.run.select_metric, state["best_metric"])
            if keep_it:
                keep(last)
            eval_log.write(record or {})
            scalars.flush()
        dist_utils.barrier()

    # ----------------------------------------------------------------------------------- the loop
    bar = tqdm(total=total_steps, initial=state["step"], desc="train", disable=not (main and cfg.run.progress),
               dynamic_ncols=True)
    it_iter = None
    if it_loader is not None:
        it_iter = _cycle(it_loader, it_sampler, it_ds, state["it_epoch"], state["it_step_in_epoch"])
    logit_scale = model.logit_scale
    image_weight = cfg.data.image_text_weight
    if state["step"] == 0 and resume_dir is None:
        # The starting weights are the first point of a post-pretraining curve (e.g. CLIP itself).
        if cfg.run.eval_at_start:
            evaluate_and_checkpoint("start", keep_it=keep_every > 0)
        elif keep_every > 0:
            keep(save_last())
            dist_utils.barrier()
    t_start, seen = time.time(), 0
    recent_losses: list[float] = []  # the last 10 step losses (this process), for the result's final_loss
    stopped = False
    while state["step"] < total_steps and not stopped:
        epoch = state["epoch"]
        sampler.set_epoch(epoch, state["step_in_epoch"])
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        net.train()
        for batch in loader:
            fails = batch.pop("failures", None) or []
            epoch_failures.extend((str(p), str(r)) for p, r in fails)
            if not batch.get("batch_size"):
                # Every item of this batch failed to decode: nothing to learn from. One process skips the
                # batch (the data position still advances); under DDP the ranks must stay in lock-step.
                if world > 1:
                    raise RuntimeError(f"rank {rank}: every item of a training batch failed to load "
                                       f"({fails[:3]}); fix or drop the bad videos")
                state["step_in_epoch"] += 1
                if state["step_in_epoch"] >= sampler.num_batches:
                    state["epoch"] += 1
                    state["step_in_epoch"] = 0
                    break
                continue
            batch = move_to(batch, device, non_blocking=True)
            image_batch = None
            if it_iter is not None:
                state["it_epoch"], state["it_step_in_epoch"], image_batch = next(it_iter)
                image_batch.pop("failures", None)
                image_batch = move_to(image_batch, device, non_blocking=True)
            with _autocast(device, amp_dtype):
                feats = net(batch, image_batch)
            gathered = {k: dist_utils.gather_with_grad(v.float()) for k, v in feats.items()}
            gbatch = dict(batch)
            if "has_caption" in batch:
                gbatch["has_caption"] = dist_utils.gather(batch["has_caption"])
            loss, terms = compute_loss(cfg, gathered, logit_scale, gbatch, image_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            grad_norm = None
            if cfg.optim.grad_clip and cfg.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.clamp_logit_scale_(model.logit_scale)
            state["step"] += 1
            state["step_in_epoch"] += 1
            seen += cfg.run.global_batch_size
            loss_value = float(loss.detach())
            recent_losses = (recent_losses + [loss_value])[-10:]
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {state['step']}; lower optim.lr or "
                                         f"use run.precision=fp32")
            if main:
                bar.update(1)
                if state["step"] % max(1, cfg.run.log_every) == 0 or state["step"] == 1:
                    lr = optimizer.param_groups[-1]["lr"]
                    scalars.add("train/loss", loss_value, state["step"])
                    scalars.add("train/lr", lr, state["step"])
                    scalars.add("train/temperature", float(model.logit_scale.detach().exp()), state["step"])
                    if grad_norm is not None:
                        scalars.add("train/grad_norm", float(grad_norm), state["step"])
                    for name, value in terms.items():
                        scalars.add(f"train/loss_{name}", float(value.detach()), state["step"])
                    rate = seen / max(1e-9, time.time() - t_start)
                    scalars.add("train/pairs_per_s", rate, state["step"])
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", pairs_s=f"{rate:.1f}")
            end_of_epoch = state["step_in_epoch"] >= sampler.num_batches
            if end_of_epoch:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            done = state["step"] >= total_steps
            due_eval = (cfg.run.eval_every > 0 and state["step"] % cfg.run.eval_every == 0) or \
                (cfg.run.eval_every <= 0 and end_of_epoch) or done
            due_save = cfg.run.save_every > 0 and state["step"] % cfg.run.save_every == 0
            due_keep = keep_every > 0 and state["step"] % keep_every == 0
            if due_eval:
                evaluate_and_checkpoint("end" if done else ("epoch" if end_of_epoch else "step"),
                                        keep_it=due_keep)
            elif due_save or due_keep:
                last = save_last()
                if due_keep:
                    keep(last)
                dist_utils.barrier()
            if end_of_epoch:
                if main and epoch_failures:
                    log.warning("epoch %d: %d training item(s) failed to load, e.g. %s", epoch,
                                len(epoch_failures), epoch_failures[:3])
                epoch_failures = []
            if stop_after_steps is not None and state["step"] >= stop_after_steps and not done:
                stopped = True
                break
            if done or end_of_epoch:
                break
    bar.close()
    scalars.close()
    result: dict[str, Any] = {"output_dir": str(out_dir), "history": state["history"], "steps": state["step"],
                              "selected_on": selected_on, "best": None, "test": None,
                              "final_loss": sum(recent_losses) / len(recent_losses) if recent_losses else None}
    if stopped:
        result["stopped"] = True
        return result
    dist_utils.barrier()  # best/ is complete on disk before any rank reads it
    # What best/ holds is read from best/ itself (its checkpoint.json is published with it, in one rename),
    # never from the in-memory history, so results.json cannot claim a best/ that is not on disk.
    best_dir = ckpt.find_checkpoint(out_dir, "best")
    used = describe_checkpoint(best_dir, "best") if best_dir is not None else None
    if main:
        result["best"] = None
        if used is not None:
            result["best_step"] = used["step"]
            result["best_value"] = used.get("select_value")
            match = [h for h in state["history"] if h.get("step") == used["step"] and "metrics" in h]
            result["best"] = match[-1]["metrics"] if match else None
    if cfg.data.test:
        if best_dir is None:
            best_dir = ckpt.find_checkpoint(out_dir, "last")
            used = describe_checkpoint(best_dir, "last") if best_dir is not None else None
            if main:
                log.warning("no complete best/ checkpoint in %s: the final test uses %s", out_dir,
                            used["label"] if used else "the weights in memory")
        if best_dir is not None:
            ckpt.load_model_weights_(model, best_dir)
        res = evaluate(cfg.data.test, "test")
    if cfg.data.test and main:
        label = used["label"] if used else f"weights in memory at step {state['step']}"
        record = {"step": state["step"], "split": "test", "checkpoint": str(best_dir), "selected_on": selected_on,
                  "metrics": res, "reason": f"final test of {label}"}
        eval_log.write(record)
        result["test"] = res
        result["test_checkpoint"] = used or {"name": None, "label": label}
        from clipvip.metrics import format_table

        log.info("test of %s (selected on %s):\n%s", label, selected_on,
                 format_table({k: v for k, v in res.items() if isinstance(v, dict)}))
    if main:
        write_json(out_dir / "results.json", result)
    dist_utils.barrier()
    return result


def publish_best(last: Path, out_dir: Path, selected_on: str, select_metric: str, value: float | None) -> Path:
    """Publish ``last/`` as ``best/`` with its selection metadata inside it (one atomic rename: the folder
    and the metric it was selected with can never disagree)."""
    return ckpt.copy_checkpoint(last, out_dir, "best", summary={"selected_on": selected_on,
                                                               "select_metric": select_metric,
                                                               "select_value": value})


def describe_checkpoint(path: Path, name: str) -> dict[str, Any]:
    """``{"name", "path", "step", "select_value", "label"}`` of a checkpoint folder, from its checkpoint.json."""
    try:
        marker = json.loads((path / ckpt.MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = {}
    step = marker.get("step") if isinstance(marker, dict) else None
    info = {"name": name, "path": str(path), "step": step,
            "select_value": marker.get("select_value") if isinstance(marker, dict) else None}
    info["label"] = (f"best checkpoint (best/, step {step})" if name == "best"
                     else f"LAST checkpoint (last/, step {step}; there is no best/)")
    return info


def _check_resume_config(cfg: TrainConfig, ts: dict[str, Any], out_dir: Path, allow: bool) -> None:
    """Refuse to resume with a config that differs from the run's, except in :data:`SAFE_TO_CHANGE` keys."""
    from clipvip.train.config import config_changes, load_config

    old = ts.get("config")
    source = "trainer_state.pt"
    if old is None:  # checkpoints written before the config was stored in them: the run folder's copy
        try:
            old = load_config(out_dir / "config.yaml").to_dict()
            source = str(out_dir / "config.yaml")
        except ConfigError:
            log.warning("cannot compare the resumed run's config (no config in the checkpoint, no readable "
                        "%s); resuming with the given one", out_dir / "config.yaml")
            return
    unsafe, safe = config_changes(old, cfg)
    if safe:
        log.info("resuming with changed key(s) that are safe to change: %s", "; ".join(safe))
    if unsafe and not allow:
        raise ConfigError(f"refusing to resume {out_dir} with a changed config ({source}): {'; '.join(unsafe)}. "
                          f"Undo the change, start over with run.resume=never or another run.output_dir, or "
                          f"pass --allow-config-change")
    if unsafe:
        log.warning("--allow-config-change: resuming with changed key(s): %s (the optimiser's moments and step "
                    "count are restored; learning rates and decay follow the new recipe)", "; ".join(unsafe))


def _repair_after_kill(out_dir: Path, resume_dir: Path, state: dict[str, Any]) -> None:
    """Finish what a kill interrupted: re-publish a best/ that the recorded best metric says should be the
    resume point, and remove the trainer's leftover temporary folders."""
    removed = ckpt.remove_leftovers(out_dir)
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted checkpoint write (e.g. %s)",
                 len(removed), removed[0].name)
    best_step = state.get("best_step")
    if best_step is None:
        return
    best = ckpt.find_checkpoint(out_dir, "best")
    best_info = describe_checkpoint(best, "best") if best is not None else None
    if best_info is not None and best_info["step"] == best_step:
        return
    if best_step == state["step"]:
        # Killed between publishing last/ and best/: last/ *is* the best checkpoint.
        marker = json.loads((resume_dir / ckpt.MARKER_FILE).read_text(encoding="utf-8"))
        history = [h for h in state.get("history", []) if h.get("step") == best_step]
        selected_on = history[-1].get("selected_on", "val") if history else marker.get("selected_on", "val")
        metric = history[-1].get("select_metric") if history else None
        publish_best(resume_dir, out_dir, selected_on, metric or "", state.get("best_metric"))
        log.warning("re-published best/ (step %d) from %s: an interruption came between the two", best_step,
                    resume_dir)
        return
    # best/ cannot be rebuilt: make the recorded best agree with what is on disk.
    log.warning("best/ is %s but the run recorded its best at step %d; keeping best/ as it is and its metric",
                f"at step {best_info['step']}" if best_info else "missing", best_step)
    state["best_step"] = best_info["step"] if best_info else None
    state["best_metric"] = best_info["select_value"] if best_info else None


def _resume_dir(cfg: TrainConfig, out_dir: Path) -> Path | None:
    mode = cfg.run.resume
    if mode in ("never", "no", "false", "none", ""):
        return None
    if mode == "auto":
        return ckpt.find_checkpoint(out_dir, "last")
    path = Path(mode)
    if not ckpt.is_complete(path):
        raise ConfigError(f"run.resume={mode!r}: not a complete checkpoint folder (no {ckpt.MARKER_FILE})")
    return path


def _reconcile_kept(out_dir: Path, resume_dir: Path | None, step: int, keep_every: int) -> None:
    """Make the kept ``step_*`` folders those of this run's history up to ``step`` (-1: a fresh start).

    Kept folders beyond ``step`` come from an earlier attempt (a fresh start in a used folder, or a resume
    from an older checkpoint) and are removed: the steps ahead re-create them. A kept folder due at exactly
    ``step`` is re-created from the resume checkpoint when an interruption came between saving ``last/`` and
    publishing it, so a resume neither duplicates nor loses kept checkpoints.
    """
    removed = ckpt.prune_kept(out_dir, step)
    if removed:
        log.warning("removed %d kept checkpoint(s) of an earlier attempt beyond step %d (e.g. %s); this run "
                    "re-creates them", len(removed), max(step, 0), removed[0].name)
    due = resume_dir is not None and keep_every > 0 and step % keep_every == 0
    if due and not ckpt.is_complete(out_dir / ckpt.kept_name(step)):
        ckpt.keep_checkpoint(resume_dir, out_dir, step)
        log.info("re-created the kept checkpoint %s from %s", ckpt.kept_name(step), resume_dir)


def _all_rng_states(world: int) -> list[dict[str, Any]]:
    """Every rank's RNG state (gathered onto rank 0 as objects; a list of one in a single process)."""
    mine = ckpt.capture_rng_state()
    if world == 1:
        return [mine]
    import torch.distributed as dist

    states: list[Any] = [None] * world
    dist.all_gather_object(states, mine)
    return states


def _broadcast_flag(flag: bool) -> bool:
    from clipvip.train import distributed as dist_utils

    if not dist_utils.is_distributed():
        return flag
    import torch.distributed as dist

    obj = [flag]
    dist.broadcast_object_list(obj, src=0)
    return bool(obj[0])

