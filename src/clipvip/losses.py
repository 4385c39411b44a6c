"""Contrastive losses of CLIP-ViP: symmetric InfoNCE and the omnisource (OCL) variants.

Every function here works on plain feature tensors, so the training loop decides where features come from
(one process, or gathered from all ranks with :func:`clipvip.train.distributed.gather_with_grad`).

Conventions, all taken from the reference implementation (``docs/metrics.md`` has the formulas):

* Features are L2-normalised here (idempotent when the model already normalised them, in value and in
  gradient), and logits are ``exp(logit_scale) * a @ b.T`` with one learned log-temperature shared by
  every term.
* Each cross-entropy (CE) term is a mean over its rows, and **terms are summed, not averaged**: plain
  InfoNCE is CE(rows) + CE(cols), twice transformers' ``clip_loss``. This matters together with gradient
  clipping, so we keep it to reproduce the recipes.
* Missing captions (``has_caption`` False). The reference feeds the literal string "None" as the caption;
  we drop the caption instead: a missing caption is removed from the set of texts (it is never a query and
  never a negative), and video/frame rows whose positive is a missing caption are dropped. Videos and
  frames themselves always stay as candidates. A CE term with no rows left contributes an exact zero that
  keeps the graph connected. With every caption present this equals the reference definition exactly.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "OCL_VARIANTS",
    "clamp_logit_scale_",
    "image_text_loss",
    "info_nce",
    "masked_info_nce",
    "ocl_loss",
    "vsc_loss",
]

#: Initial log temperature: 4.60 as in the official wrapper and released configs (not ln 100).
LOGIT_SCALE_INIT = 4.60
#: Upper clamp of the log temperature after each step (reference: ln 200; lower clamp 0).
LOGIT_SCALE_MAX = math.log(200.0)

#: The omnisource variants: name -> terms summed (see :func:`ocl_loss`).
OCL_VARIANTS: Mapping[str, tuple[str, ...]] = {
    "vs": ("vs",),
    "a": ("vs", "fc"),
    "b": ("vs", "vc"),
    "c": ("vs", "vc", "fc"),
    "d": ("vsc", "fc"),
}


def _check_features(name: str, x: Tensor, batch: int | None = None) -> None:
    """Fail early with the argument's name: a shape mix-up otherwise surfaces deep inside a matmul."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be [batch, dim], got shape {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]}, expected {batch} (one row per video)")


def _scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    """``exp(logit_scale)`` as a tensor on ``like``'s device/dtype, keeping the parameter's gradient."""
    if not isinstance(logit_scale, Tensor):
        logit_scale = torch.tensor(float(logit_scale))
    return logit_scale.to(device=like.device, dtype=like.dtype).exp()


def _zero(like: Tensor) -> Tensor:
    """An exact zero that still depends on ``like``, so backward and DDP see every parameter used."""
    return like.sum() * 0.0


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean CE over rows, or a graph-connected zero when there are no rows."""
    if logits.shape[0] == 0:
        return _zero(logits)
    return F.cross_entropy(logits, target)


def _caption_mask(has_caption: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """Normalise ``has_caption`` to a bool ``[B]`` tensor, or None when every caption is present."""
    if has_caption is None:
        return None
    mask = torch.as_tensor(has_caption, device=device).to(torch.bool).reshape(-1)
    if mask.shape[0] != batch:
        raise ValueError(f"has_caption has {mask.shape[0]} entries, expected {batch} (one per video)")
    if bool(mask.all()):
        return None
    return mask


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor | float, normalize: bool = True) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b``: CE(a->b rows) + CE(b->a rows), summed.

    ``logit_scale`` is the log temperature (a scalar parameter); logits are ``exp(logit_scale) * a @ b.T``
    and the targets are the diagonal. The sum (not the mean) of the two directions follows the reference.
    """
    _check_features("a", a)
    _check_features("b", b, a.shape[0])
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = _scale(logit_scale, a) * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def masked_info_nce(
    x: Tensor,
    y: Tensor,
    logit_scale: Tensor | float,
    y_valid: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Symmetric InfoNCE where some ``y`` rows (texts) are missing; ``x`` rows (videos/frames) always exist.

    * y->x: one row per present ``y_i`` over all ``x`` (target ``i``).
    * x->y: one row per ``x_i`` whose ``y_i`` is present, over the present ``y`` only.

    With ``y_valid`` None or all True this is exactly :func:`info_nce`.
    """
    _check_features("x", x)
    _check_features("y", y, x.shape[0])
    mask = _caption_mask(y_valid, x.shape[0], x.device)
    if mask is None:
        return info_nce(x, y, logit_scale, normalize=normalize)
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    logits = _scale(logit_scale, x) * x @ y.t()  # [Bx, By]
    idx = mask.nonzero().reshape(-1)
    y2x = logits.t()[idx]  # present texts over all videos
    x2y = logits[idx][:, idx]  # videos with a present text over present texts
    local = torch.arange(idx.numel(), device=x.device)
    return _ce(y2x, idx) + _ce(x2y, local)


def vsc_loss(
    video: Tensor,
    subtitle: Tensor,
    caption: Tensor,
    logit_scale: Tensor | float,
    has_caption: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """L(V<->S,C) of the reference (``NCELearnableTempLoss_vsc``): four CE terms, summed.

    1. subtitle->video: each subtitle over all B videos (target: its video);
    2. caption->video: each caption over all B videos;
    3. video->text, subtitle positive: for video i the row ``[v_i.s_i, v_i.s_j (j!=i), v_i.c_j (j!=i)]``,
       target 0;
    4. video->text, caption positive: ``[v_i.c_i, v_i.s_j (j!=i), v_i.c_j (j!=i)]``, target 0.

    So each positive competes with the 2(B-1) texts of other videos, and a video's own subtitle and caption
    never compete with each other. Missing captions: rows of terms 2 and 4 for them are dropped and they are
    removed from the negatives of terms 3 and 4 (see the module docstring).
    """
    _check_features("video", video)
    batch = video.shape[0]
    _check_features("subtitle", subtitle, batch)
    _check_features("caption", caption, batch)
    mask = _caption_mask(has_caption, batch, video.device)
    if normalize:
        video = F.normalize(video, dim=-1)
        subtitle = F.normalize(subtitle, dim=-1)
        caption = F.normalize(caption, dim=-1)
    scale = _scale(logit_scale, video)
    vs = scale * video @ subtitle.t()  # [B, B]: v_i . s_j
    vc = scale * video @ caption.t()  # [B, B]: v_i . c_j
    target = torch.arange(batch, device=video.device)
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=video.device)

    # Negatives of video i: subtitles and (present) captions of the other videos. Masking a missing caption
    # with -inf removes it from the softmax exactly (exp(-inf) = 0) while keeping a rectangular row layout.
    vc_neg_logits = vc if mask is None else vc.masked_fill(~mask.unsqueeze(0), float("-inf"))
    neg_s = vs[off_diag].reshape(batch, batch - 1)
    neg_c = vc_neg_logits[off_diag].reshape(batch, batch - 1)
    pos_s = vs.diagonal().unsqueeze(1)
    pos_c = vc.diagonal().unsqueeze(1)
    zeros = torch.zeros(batch, dtype=torch.long, device=video.device)
    row_s = torch.cat([pos_s, neg_s, neg_c], dim=1)
    row_c = torch.cat([pos_c, neg_s, neg_c], dim=1)

    t2v_s = F.cross_entropy(vs.t(), target)
    if mask is None:
        t2v_c = F.cross_entropy(vc.t(), target)
        v2t_c = F.cross_entropy(row_c, zeros)
    else:
        idx = mask.nonzero().reshape(-1)
        t2v_c = _ce(vc.t()[idx], idx)
        v2t_c = _ce(row_c[idx], zeros[idx])
    v2t_s = F.cross_entropy(row_s, zeros)
    return t2v_s + t2v_c + v2t_s + v2t_c


def image_text_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Extra symmetric InfoNCE on an image-text batch, added to the video loss when one is configured.

    This is the reference's "divide" mixing (``VidImgDivideNCELearnableTempLoss``): the image pairs form
    their own contrastive term instead of being concatenated into the video batch.
    """
    return info_nce(image, text, logit_scale)


def ocl_loss(
    variant: str = "d",
    *,
    video: Tensor,
    subtitle: Tensor,
    frame: Tensor | None = None,
    caption: Tensor | None = None,
    logit_scale: Tensor | float,
    has_caption: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Omnisource cross-modal loss for post-pretraining; returns ``(total, {term name: value})``.

    Variants (paper Fig. 2; "d" is the released default):

    * ``"vs"``: L(V<->S) alone (no frames or captions needed);
    * ``"a"``: L(V<->S) + L(F<->C);
    * ``"b"``: L(V<->S) + L(V<->C);
    * ``"c"``: L(V<->S) + L(V<->C) + L(F<->C);
    * ``"d"``: L(V<->S,C) + L(F<->C).

    Term names in the dict: ``"vs"``, ``"vc"``, ``"fc"``, ``"vsc"``; each is already a sum of its CE
    terms and ``total`` is their sum. V = video, S = subtitle, F = middle frame (a one-frame video),
    C = caption of the middle frame.
    """
    if variant not in OCL_VARIANTS:
        raise ValueError(f"unknown OCL variant {variant!r}; expected one of {sorted(OCL_VARIANTS)}")
    terms = OCL_VARIANTS[variant]
    needs_caption = any(t in ("vc", "fc", "vsc") for t in terms)
    if needs_caption and caption is None:
        raise ValueError(f"OCL variant {variant!r} needs caption features")
    if "fc" in terms and frame is None:
        raise ValueError(f"OCL variant {variant!r} needs middle-frame features (frame=)")
    _check_features("video", video)
    batch = video.shape[0]
    _check_features("subtitle", subtitle, batch)
    if needs_caption:
        assert caption is not None
        _check_features("caption", caption, batch)
    if "fc" in terms:
        assert frame is not None
        _check_features("frame", frame, batch)

    parts: dict[str, Tensor] = {}
    for term in terms:
        if term == "vs":
            parts[term] = info_nce(video, subtitle, logit_scale)
        elif term == "vc":
            parts[term] = masked_info_nce(video, caption, logit_scale, has_caption)  # type: ignore[arg-type]
        elif term == "fc":
            parts[term] = masked_info_nce(frame, caption, logit_scale, has_caption)  # type: ignore[arg-type]
        elif term == "vsc":
            parts[term] = vsc_loss(video, subtitle, caption, logit_scale, has_caption)  # type: ignore[arg-type]
    total = torch.stack(list(parts.values())).sum()
    return total, parts


@torch.no_grad()
def clamp_logit_scale_(param: Tensor, max: float = LOGIT_SCALE_MAX, min: float = 0.0) -> Tensor:
    """Clamp the log temperature in place to ``[min, max]`` (reference: [0, ln 200]); call after each step.

    Clamping the stored value (not the forward) keeps the optimiser state and the checkpoint consistent.
    """
    param.clamp_(min=min, max=max)
    return param
