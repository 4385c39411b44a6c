"""Optimiser, parameter groups and learning-rate schedule of the reference recipes (reference section 6).

* **Groups** (``build_e2e_optimizer_w_lr_mul``): four groups ``[prefix & decay, prefix & no-decay,
  rest & decay, rest & no-decay]``. "No decay" is a substring test on ``bias``, ``LayerNorm.bias``,
  ``LayerNorm.weight`` and ``logit_scale``. transformers' CLIP names its layer norms ``layer_norm1/2``,
  ``pre_layrnorm``, ``post_layernorm`` and ``final_layer_norm``, so **their weights are decayed**, exactly
  as in the reference. The LR multiplier applies to parameters whose name *contains* ``lr_mul_prefix``
  (DiDeMo B/16: 10x on ``logit_scale``); ``lr_mult`` generalises it to several name substrings, each with
  its own pair of groups (the demo: 100x on ``temporal_embedding`` in fine-tuning, 10x in
  post-pretraining). Frozen parameters (``requires_grad`` False) are left out, and empty groups are dropped.
* **AdamW**: ``torch.optim.AdamW`` (fast foreach/fused kernels, standard state for checkpoints). The
  reference uses an HF-style AdamW with bias correction; the two differ in two small ways, checked in
  ``tests/test_optim.py``: HF adds eps to the *uncorrected* ``sqrt(v)`` (torch: to the corrected one, so
  HF's effective eps is ``eps / sqrt(1 - b2^t)``, at most 7x larger in the first step and equal after a
  few hundred steps), and HF applies the decoupled decay ``p -= lr * wd * p`` after the Adam step while
  torch applies ``p *= 1 - lr * wd`` before it (a difference of order ``lr^2 * wd``, ~1e-13 at the
  recipes' lr). The eps difference is visible only in the first steps and only for parameters whose
  gradients are not much larger than eps; we accept it rather than maintain a custom optimiser.
* **Schedule**: the reference computes ``lr(global_step)`` *after* incrementing ``global_step``, so the
  k-th optimiser step (k from 0) uses ``f(k + 1)`` with ``f(s) = s / warmup`` for ``s < warmup`` and
  ``0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))`` after. Our ``LambdaLR`` does the same, which
  also avoids a wasted first step at LR 0. It multiplies each group's own initial LR, so the per-group
  multipliers survive. (The reference floors the LR at 1e-8 where it reaches 0; we do not: the last
  step's LR is 0, an immaterial difference.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "NO_DECAY_KEYS",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "steps_for",
    "warmup_steps_for",
]

#: Substrings that exempt a parameter from weight decay (reference, ``optimization/utils.py``).
NO_DECAY_KEYS = ("bias", "LayerNorm.bias", "LayerNorm.weight", "logit_scale")

SCHEDULES = ("cosine", "linear", "constant")


def _no_decay(name: str) -> bool:
    return any(key in name for key in NO_DECAY_KEYS)


def param_groups(
    model: nn.Module | Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr: float,
    lr_mul: float = 1.0,
    lr_mul_prefix: str = "",
    lr_mult: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The reference's parameter groups (see the module docstring), empty ones removed.

    ``lr_mult`` maps a name substring to an LR multiplier (``{"temporal_embedding": 10.0}``); each key gets
    its own decay and no-decay groups, in the order given, followed by the rest at the base LR. The
    reference's single ``lr_mul_prefix``/``lr_mul`` pair is the one-key case and is listed first, so with
    it alone the layout is exactly the reference's ``[prefix & decay, prefix & no-decay, rest & decay,
    rest & no-decay]``. A key that matches no trainable parameter, or a parameter matched by two keys, is an
    error naming them (a misspelt key would otherwise train silently at the base LR).

    Each group is a dict with ``params``, ``names`` (for logging and tests; torch ignores extra keys),
    ``lr``, ``weight_decay``, ``lr_mul`` and ``lr_mult_key`` (``""`` for the rest). Works on a DDP-wrapped
    model too: the ``module.`` prefix does not change substring matches.
    """
    named = list(model.named_parameters()) if isinstance(model, nn.Module) else list(model)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    rules: list[tuple[str, float]] = []
    if lr_mul_prefix:
        rules.append((lr_mul_prefix, float(lr_mul)))
    for key, mul in (lr_mult or {}).items():
        if not key:
            raise ValueError("an LR multiplier key is empty (it would match every parameter)")
        if key in dict(rules):
            raise ValueError(f"LR multiplier key {key!r} is given twice")
        if not float(mul) > 0:
            raise ValueError(f"LR multiplier for {key!r} must be positive, got {mul}")
        rules.append((key, float(mul)))
    members: dict[str, list[tuple[str, nn.Parameter]]] = {key: [] for key, _ in rules}
    rest: list[tuple[str, nn.Parameter]] = []
    for n, p in trainable:
        hits = [key for key, _ in rules if key in n]
        if len(hits) > 1:
            raise ValueError(f"parameter {n!r} matches several LR multiplier keys {hits}; make them distinct")
        (members[hits[0]] if hits else rest).append((n, p))
    unused = [key for key, _ in rules if not members[key]]
    if unused and trainable:
        raise ValueError(f"LR multiplier key(s) {unused} match no trainable parameter "
                         f"(names look like {trainable[0][0]!r})")
    spec: list[tuple[str, list[tuple[str, nn.Parameter]], bool, float]] = []
    for key, mul in rules:
        spec += [(key, members[key], False, mul), (key, members[key], True, mul)]
    spec += [("", rest, False, 1.0), ("", rest, True, 1.0)]
    groups: list[dict[str, Any]] = []
    for key, group_members, no_decay, mul in spec:
        chosen = [(n, p) for n, p in group_members if _no_decay(n) == no_decay]
        if not chosen:
            continue
        groups.append(
            {
                "params": [p for _, p in chosen],
                "names": [n for n, _ in chosen],
                "lr": lr * mul,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_mul": mul,
                "lr_mult_key": key,
            }
        )
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    lr_mul: float = 1.0,
    lr_mul_prefix: str = "",
    lr_mult: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the reference's betas (0.9, 0.98) and eps 1e-6."""
    groups = param_groups(model, weight_decay=weight_decay, lr=lr, lr_mul=lr_mul, lr_mul_prefix=lr_mul_prefix,
                          lr_mult=lr_mult)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """LR multiplier for the reference's ``global_step`` value ``step`` (1 for the first optimiser step).

    ``cosine``: linear warmup ``step / warmup`` then ``0.5 * (1 + cos(pi * progress))``; ``linear``:
    warmup then a straight line to 0; ``constant``: warmup then 1. Never negative.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
) -> LambdaLR:
    """Warmup + cosine (or ``linear``/``constant``) as a ``LambdaLR``; call ``scheduler.step()`` after
    each ``optimizer.step()``. The k-th optimiser step (from 0) runs at ``lr_factor(k + 1, ...)``.

    Resuming: ``scheduler.state_dict()`` holds only the step count, so it restores exactly.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    fn: Callable[[int], float] = lambda k: lr_factor(k + 1, warmup_steps, total_steps, schedule)  # noqa: E731
    return LambdaLR(optimizer, lr_lambda=fn)


def steps_for(epochs: float, dataset_len: int, global_batch: int) -> int:
    """Optimiser steps of a run: ``ceil(epochs * dataset_len / global_batch)`` (reference section 6.1)."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be positive, got {global_batch}")
    if dataset_len <= 0:
        raise ValueError(f"dataset_len must be positive, got {dataset_len}")
    return int(math.ceil(epochs * dataset_len / global_batch))


def warmup_steps_for(total_steps: int, warmup_ratio: float = 0.01) -> int:
    """Warmup steps: ``int(warmup_ratio * total_steps)`` (reference: ratio 0.01)."""
    return int(warmup_ratio * total_steps)
