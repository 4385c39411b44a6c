"""Order-aware retrieval metrics for worlds of twin clips (a clip and its exact time reversal).

R@K alone cannot tell *content* from *order*: a model that finds the right scene but cannot tell "A then
B" from its reversal loses half its R@1 to the twin. These numbers separate them:

* :func:`order_accuracy`: over captions whose clip has a twin in the set, the percent that score their
  own clip above the twin. An order-blind model reads **exactly 50.0**: its twins embed identically (up to
  float summation-order noise, which the tolerance absorbs), every comparison is a tie, and a tie counts
  half.
* :func:`fair_recall_at_1`: plain text->video R@1 with ties *within the tolerance* at the top broken
  uniformly at random (expected value): a caption whose clip ties with its twin for first place scores
  0.5. :mod:`clipvip.metrics` breaks exact ties pessimistically (a tie is a miss), which is right for a
  collapsed model but, on twins, turns an order-blind model's float-exact ties (15-35 % of captions for
  a frame-mean-pooling model, the rest differing by an ulp and falling either way) into misses. Compare
  order-blind and order-aware models on this number, or on R@1 *and* this number.
* :func:`pair_recall_at_1`: order-blind retrieval, the percent of captions whose clip **or its twin** is
  ranked first among all clips (ties with other clips broken pessimistically, as
  :mod:`clipvip.metrics` does). It measures content alone.

Conventions follow :mod:`clipvip.metrics`: ``sim[i, j]`` is text ``i`` against video ``j`` (rows texts,
columns videos); ``text_to_video[i]`` is the column of text ``i``'s clip; ``twin[j]`` is the column of
clip ``j``'s twin, or ``-1`` when it has none in the set. Results are percentages.

**Tie tolerance.** Two scores ``a`` (own clip) and ``b`` (twin) tie when ``|a - b| <= tol * scale``, with
``scale`` the largest ``|sim|`` in the matrix (so the test is the same for cosine similarities and for
logits multiplied by a temperature). The default ``tol = 1e-5`` is about 80 float32 epsilons of the
largest score: far above the noise of summing the same frame features in another order (one or two
ulps, measured), and small enough that a model which does use order is not mistaken for a blind one (a
random proxy-attention model with a nonzero temporal table has no twin pair within it,
``tests/test_analysis_order.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_TOL", "fair_recall_at_1", "order_accuracy", "order_outcomes", "pair_recall_at_1", "twin_columns"]

DEFAULT_TOL = 1e-5
"""Relative tie tolerance of :func:`order_accuracy` (see the module doc)."""


def _inputs(sim: Any, text_to_video: Sequence[int], twin: Sequence[int] | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sim`` as a float64 CPU tensor and the two index lists as int64 tensors, all checked (``twin=None``:
    no clip has a twin)."""
    # Lists go through numpy so Python floats keep float64 (torch.as_tensor would round them to float32).
    s = (sim.detach() if isinstance(sim, torch.Tensor) else torch.from_numpy(np.asarray(sim, dtype=np.float64)))
    s = s.to("cpu", torch.float64)
    if s.dim() != 2:
        raise ValueError(f"similarity matrix must be 2-D [texts, videos], got shape {tuple(s.shape)}")
    if s.numel() and bool(torch.isnan(s).any()):
        raise ValueError("similarity matrix contains NaN")
    n_texts, n_videos = s.shape
    t2v = torch.as_tensor(np.asarray(text_to_video, dtype=np.int64)).reshape(-1)
    tw = torch.as_tensor(np.asarray([-1] * n_videos if twin is None else twin, dtype=np.int64)).reshape(-1)
    if t2v.numel() != n_texts:
        raise ValueError(f"text_to_video has {t2v.numel()} entries but the matrix has {n_texts} texts (rows)")
    if tw.numel() != n_videos:
        raise ValueError(f"twin has {tw.numel()} entries but the matrix has {n_videos} videos (columns)")
    if t2v.numel() and (int(t2v.min()) < 0 or int(t2v.max()) >= n_videos):
        raise ValueError(f"text_to_video entries must be in [0, {n_videos})")
    if tw.numel() and (int(tw.min()) < -1 or int(tw.max()) >= n_videos):
        raise ValueError(f"twin entries must be -1 (no twin) or in [0, {n_videos})")
    paired = tw >= 0
    cols = torch.arange(n_videos)
    if bool((tw[paired] == cols[paired]).any()):
        raise ValueError("a clip cannot be its own twin")
    if bool((tw[tw[paired]] != cols[paired]).any()):
        raise ValueError("twin must be symmetric: twin[twin[j]] == j for every clip with a twin")
    return s, t2v, tw


def twin_columns(video_ids: Sequence[str], twin_ids: Sequence[str | None]) -> list[int]:
    """``twin`` for the functions here from record fields: the column of each video's twin id (``-1``
    when it has none or its twin is not among ``video_ids``, e.g. in another split)."""
    col = {str(v): j for j, v in enumerate(video_ids)}
    if len(col) != len(video_ids):
        raise ValueError("video ids must be unique")
    return [col.get(str(t), -1) if t else -1 for t in twin_ids]


def order_outcomes(sim: Any, text_to_video: Sequence[int], twin: Sequence[int], tol: float = DEFAULT_TOL) -> np.ndarray:
    """Per text: 1.0 (own clip above its twin), 0.5 (tie within ``tol``), 0.0 (below), NaN (no twin)."""
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    s, t2v, tw = _inputs(sim, text_to_video, twin)
    out = np.full(s.shape[0], np.nan)
    if not s.numel():
        return out
    scale = float(s.abs().max())
    rows = torch.arange(s.shape[0])
    rival = tw[t2v]
    has = rival >= 0
    own = s[rows[has], t2v[has]]
    other = s[rows[has], rival[has]]
    diff = own - other
    won = torch.where(diff.abs() <= tol * scale, 0.5, torch.where(diff > 0, 1.0, 0.0))
    out[has.numpy()] = won.numpy()
    return out


def order_accuracy(sim: Any, text_to_video: Sequence[int], twin: Sequence[int], tol: float = DEFAULT_TOL) -> float:
    """Twin-pair order accuracy in percent: how often a caption scores its own clip above the clip's time
    reversal, ties within ``tol`` (relative to the largest ``|sim|``) counting half, so an order-blind
    model reads exactly 50.0. Texts whose clip has no twin in the set are left out; NaN when none has."""
    outcomes = order_outcomes(sim, text_to_video, twin, tol)
    valid = outcomes[~np.isnan(outcomes)]
    return float(100.0 * valid.mean()) if valid.size else float("nan")


def pair_recall_at_1(sim: Any, text_to_video: Sequence[int], twin: Sequence[int]) -> float:
    """Order-blind text->video R@1 in percent: a hit when the caption's clip or its twin scores strictly
    above every other clip (a tie with a third clip is a miss, the pessimistic rule of
    :mod:`clipvip.metrics`). Clips without a twin count as ordinary R@1. NaN for an empty matrix."""
    s, t2v, tw = _inputs(sim, text_to_video, twin)
    if not s.shape[0]:
        return float("nan")
    rows = torch.arange(s.shape[0])
    rival = tw[t2v]
    own = s[rows, t2v]
    pair_cols = torch.where(rival >= 0, rival, t2v)
    best = torch.maximum(own, s[rows, pair_cols])
    others = s.clone()
    others[rows, t2v] = -torch.inf
    others[rows, pair_cols] = -torch.inf
    hit = others.max(dim=1).values < best  # with no other clip, the max is -inf: a hit
    return float(100.0 * hit.double().mean())


def fair_recall_at_1(sim: Any, text_to_video: Sequence[int], tol: float = DEFAULT_TOL) -> float:
    """Text->video R@1 in percent with ties at the top broken at random (expected value): a caption scores
    ``1 / k`` when its clip is one of the ``k`` clips within ``tol * max|sim|`` of the row's best score,
    else 0. Equals plain R@1 when nothing ties; an order-blind model whose clip ties with its twin gets
    0.5 per such caption instead of the pessimistic 0 (or a coin flip decided by float rounding)."""
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    s, t2v, _ = _inputs(sim, text_to_video, None)
    if not s.shape[0]:
        return float("nan")
    band = tol * float(s.abs().max())
    best = s.max(dim=1, keepdim=True).values
    top = s >= best - band
    rows = torch.arange(s.shape[0])
    credit = torch.where(top[rows, t2v], 1.0 / top.sum(dim=1).double(), torch.zeros(s.shape[0], dtype=torch.float64))
    return float(100.0 * credit.mean())
