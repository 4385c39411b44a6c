"""Sizes and step budgets of the demo: one full preset (about 10 minutes on 2 CPU cores) and a quick one
(about 2 minutes, used by the test suite). They are plain data so the report can print them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's budget depends on.

    Step counts are optimiser steps. ``ablation_*`` runs are the short runs of the ablation tables; the
    main post-pretraining uses ``pretrain_steps`` with OCL variant ``d``, so the ablation row "d" reuses it
    when ``ablation_pretrain_steps == pretrain_steps``.
    """

    name: str
    num_videos: int
    image_size: int = 32
    num_frames: int = 8
    max_length: int = 24
    batch_size: int = 32
    # architecture (on top of clipvip-tiny)
    vision_width: int = 48
    text_width: int = 32
    layers: int = 2
    projection_dim: int = 32
    patch_size: int = 8
    num_proxies: int = 4
    # stage 0: image-text CLIP on middle frames and their captions
    image_steps: int = 300
    image_lr: float = 2e-3
    # stage 1: OCL post-pretraining
    pretrain_steps: int = 300
    pretrain_lr: float = 1e-3
    ocl_variant: str = "d"
    # stage 2: fine-tuning on downstream captions
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    eval_every: int = 50
    # ablations
    ablation_pretrain_steps: int = 300
    ablation_finetune_steps: int = 150
    ocl_finetune_steps: int = 100
    ablation_variants: tuple[str, ...] = ("a", "b", "c", "d")
    attention_modes: tuple[str, ...] = ("frame", "full", "proxy")
    weight_decay: float = 0.05
    search_queries: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FULL = DemoSettings(
    name="full",
    num_videos=480,
    image_steps=400,
    pretrain_steps=400,
    finetune_steps=300,
    eval_every=50,
    ablation_pretrain_steps=400,
    ablation_finetune_steps=300,
    ocl_finetune_steps=150,
)

QUICK = DemoSettings(
    name="quick",
    num_videos=192,
    image_steps=100,
    pretrain_steps=80,
    finetune_steps=120,
    eval_every=40,
    ablation_pretrain_steps=80,
    ablation_finetune_steps=120,
    ocl_finetune_steps=40,
)


def preset(quick: bool) -> DemoSettings:
    return QUICK if quick else FULL
