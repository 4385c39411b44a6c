"""Retrieval metrics (R@K, median and mean rank) and Dual Softmax re-scoring, for text x video matrices.

Conventions (``docs/metrics.md`` explains each with examples):

* ``sim[i, j]`` is the score of text (query) ``i`` against video ``j``: rows are texts, columns videos.
* The match of text ``i`` is video ``text_to_video[i]``; without ``text_to_video`` the matrix must be
  square and the diagonal is the match (the 1:1 protocol; paragraph datasets join each video's sentences
  into one query, see :func:`paragraph_text`, and are 1:1 too).
* Ranks start at 1. **Ties are broken pessimistically**: the rank of the match is 1 + the number of other
  candidates whose score is >= the match's score. A constant matrix therefore ranks every match last, so a
  collapsed model can never look good. (The reference's ``np.where`` returns several hits on ties, a latent
  bug; with float features ties are rare and the two agree.)
* Video->text with several captions per video has two conventions (``V2T_CONVENTIONS``), named in every
  table and result: ``"best-caption"`` (default: the rank of the video's best caption among the other
  videos' captions; its own captions never compete with each other) and ``"maxpool"`` (CLIP4Clip's: each
  video's captions max-pooled, the video ranked among videos). They agree in the 1:1 case.
* R@K is in percent; MdR is the median rank (the mean of the two middle ranks for an even count, as
  ``numpy.median``); MnR is the mean rank.
* **Invalid videos** (``invalid_videos``: columns whose video could not be decoded, given as a bool mask
  over the columns or as column indices) stay in the tables but can only lose: their column is ranked
  strictly below every valid column for every text, so it never takes rank from another query; their own
  texts get the worst text->video rank (the number of videos), and their video->text rank is the worst too
  (the number of texts). Both are guaranteed misses. A zero embedding alone would not do this: a cosine of
  0 outranks real negatives with negative cosine.

Inputs can be torch tensors (any device) or numpy arrays; the work is chunked over rows so that a 5k x 5k
evaluation needs only a few tens of MB beyond the matrix itself.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "METRIC_KEYS",
    "dual_softmax",
    "evaluate_similarity",
    "format_table",
    "match_ranks",
    "paragraph_text",
    "ranks_to_metrics",
    "retrieval_metrics",
    "video_to_text_metrics",
    "video_to_text_ranks",
    "V2T_CONVENTIONS",
    "DEFAULT_V2T_CONVENTION",
]

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
_CHUNK_ELEMENTS = 4_000_000  # comparisons per chunk: 4M bools = 4 MB


def _as_tensor(sim: Any) -> Tensor:
    """A detached 2-D floating tensor view of ``sim`` (numpy or torch), rejecting NaN.

    NaN must be rejected: every comparison with NaN is False, which would silently give the match rank 1.
    """
    t = torch.as_tensor(sim).detach()
    if t.dim() != 2:
        raise ValueError(f"similarity matrix must be 2-D [texts, videos], got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if t.numel() and bool(torch.isnan(t).any()):
        raise ValueError("similarity matrix contains NaN; features are broken (check for fp16 overflow)")
    return t


def _as_index(text_to_video: Any, n_texts: int, n_videos: int, device: torch.device) -> Tensor:
    """``text_to_video`` as an int64 tensor, checked against the matrix shape."""
    idx = torch.as_tensor(np.asarray(text_to_video), dtype=torch.long).reshape(-1).to(device)
    if idx.numel() != n_texts:
        raise ValueError(f"text_to_video has {idx.numel()} entries but the matrix has {n_texts} texts (rows)")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_videos):
        raise ValueError(f"text_to_video entries must be in [0, {n_videos}) (video columns)")
    return idx


def _invalid_mask(invalid_videos: Any, n_videos: int, device: torch.device) -> Tensor | None:
    """``invalid_videos`` (bool mask over the columns, or column indices) as a bool ``[n_videos]`` tensor.

    Returns ``None`` when nothing is invalid, so the common case costs nothing.
    """
    if invalid_videos is None:
        return None
    arr = np.asarray(invalid_videos.cpu() if isinstance(invalid_videos, Tensor) else invalid_videos)
    if arr.dtype == np.bool_:
        if arr.shape != (n_videos,):
            raise ValueError(f"invalid_videos as a mask must have one entry per video column ({n_videos}), "
                             f"got shape {arr.shape}")
        mask = torch.from_numpy(arr.copy())
    else:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"invalid_videos must be a bool mask or integer column indices, got {arr.dtype}")
        idx = arr.reshape(-1).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_videos):
            raise ValueError(f"invalid_videos indices must be in [0, {n_videos}) (video columns)")
        mask = torch.zeros(n_videos, dtype=torch.bool)
        mask[torch.from_numpy(idx)] = True
    return mask.to(device) if bool(mask.any()) else None


def _default_index(sim: Tensor) -> Tensor:
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(
            f"a non-square matrix {tuple(sim.shape)} needs text_to_video (the video column of each text); "
            "without it the diagonal is the match"
        )
    return torch.arange(sim.shape[0], device=sim.device)


def match_ranks(sim: Any, text_to_video: Any = None, invalid_videos: Any = None) -> np.ndarray:
    """1-based rank of each row's match among all columns, ties pessimistic; int64 numpy ``[n_rows]``.

    ``rank_i = 1 + #{j != t(i) : sim[i, j] >= sim[i, t(i)]}`` with ``t(i) = text_to_video[i]`` (or ``i``).
    Invalid columns are scored strictly below every valid one (``-inf``): they never count against a valid
    match, and a row whose match is invalid ties with every column, i.e. gets the worst rank ``n_cols``.
    """
    s = _as_tensor(sim)
    n_rows, n_cols = s.shape
    target = _default_index(s) if text_to_video is None else _as_index(text_to_video, n_rows, n_cols, s.device)
    invalid = _invalid_mask(invalid_videos, n_cols, s.device)
    out = torch.empty(n_rows, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        rows = s[start : start + step]
        if invalid is not None:  # per chunk, so the full matrix is never copied
            rows = rows.masked_fill(invalid.unsqueeze(0), float("-inf"))
        tgt = target[start : start + step]
        own = rows.gather(1, tgt.unsqueeze(1))
        # ">=" counts the match itself once; that self-count is the "+1" of a 1-based rank.
        out[start : start + step] = (rows >= own).sum(dim=1).cpu()
    return out.numpy()


#: The two video->text conventions of the multi-caption protocol (docs/metrics.md, "Protocols").
V2T_CONVENTIONS = {
    "best-caption": "video->text: rank of the video's best caption among all captions (its own other "
                    "captions excluded)",
    "maxpool": "video->text: CLIP4Clip's; each video's captions max-pooled, the video ranked among videos",
}
DEFAULT_V2T_CONVENTION = "best-caption"


def _check_convention(convention: str) -> str:
    if convention not in V2T_CONVENTIONS:
        raise ValueError(f"unknown video->text convention {convention!r}; expected one of {sorted(V2T_CONVENTIONS)}")
    return convention


def video_to_text_ranks(sim: Any, text_to_video: Any = None, invalid_videos: Any = None,
                        convention: str = DEFAULT_V2T_CONVENTION) -> np.ndarray:
    """For each video, its 1-based video->text rank (pessimistic ties) under ``convention``.

    ``"best-caption"`` (default): video ``v`` scores every text in column ``v``; its rank is that of its
    **best-scoring own caption** among the captions of the *other* videos,
    ``1 + #{k : text_to_video[k] != v and sim[k, v] >= max_{i of v} sim[i, v]}``. A video's own captions
    never compete with each other, so two of them tying is still a hit. Retrieving any one of its captions
    counts (the usual multi-caption protocol); the worst rank is ``1 + #(other videos' captions)``.

    ``"maxpool"`` (CLIP4Clip's): each candidate video ``u`` scores ``max_{k of u} sim[k, v]`` (its captions
    max-pooled) and ``v`` is ranked among the videos, ``1 + #{u != v : pooled[u] >= pooled[v]}``; ranks go
    up to ``n_videos``, so MdR/MnR are not comparable with ``"best-caption"``.

    In the 1:1 case both are exactly the rank of the diagonal in ``sim.T``. Every video needs a text.
    An invalid video gets the worst rank of its convention; valid videos are unaffected (a video's ranking
    only reads its own column).
    """
    _check_convention(convention)
    s = _as_tensor(sim)
    n_texts, n_videos = s.shape
    target = _default_index(s) if text_to_video is None else _as_index(text_to_video, n_texts, n_videos, s.device)
    invalid = _invalid_mask(invalid_videos, n_videos, s.device)
    counts = torch.bincount(target, minlength=n_videos)
    missing = (counts == 0).nonzero().reshape(-1)
    if missing.numel():
        raise ValueError(
            f"{missing.numel()} video(s) have no text, so video->text is undefined for them "
            f"(first: column {int(missing[0])})"
        )
    ranks = torch.empty(n_videos, dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, n_texts))
    for start in range(0, n_videos, step):
        cols = torch.arange(start, min(start + step, n_videos), device=s.device)
        block = s[:, cols]  # [n_texts, chunk]: column v of each chunk video
        own = target.unsqueeze(1) == cols.unsqueeze(0)  # [n_texts, chunk]: text k belongs to video v
        # The best own caption's score per video (every video has one, checked above).
        best_own = block.masked_fill(~own, float("-inf")).amax(dim=0)
        if convention == "best-caption":
            beats = (block >= best_own.unsqueeze(0)) & ~own
            ranks[start : start + cols.numel()] = (1 + beats.sum(dim=0)).cpu()
        else:
            pooled = torch.full((n_videos, cols.numel()), float("-inf"), dtype=block.dtype, device=s.device)
            pooled = pooled.scatter_reduce(0, target.unsqueeze(1).expand_as(block), block, reduce="amax")
            others = torch.ones_like(pooled, dtype=torch.bool)
            others[cols, torch.arange(cols.numel(), device=s.device)] = False
            beats = (pooled >= best_own.unsqueeze(0)) & others
            ranks[start : start + cols.numel()] = (1 + beats.sum(dim=0)).cpu()
    if invalid is not None:
        worst = (n_texts - counts + 1) if convention == "best-caption" else torch.full_like(counts, n_videos)
        ranks = torch.where(invalid.cpu(), worst.cpu(), ranks)
    return ranks.numpy()


def ranks_to_metrics(ranks: Sequence[int] | np.ndarray) -> dict[str, float]:
    """``{"R1","R5","R10","MdR","MnR"}`` from 1-based ranks (R@K in percent)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no queries to score (empty similarity matrix)")
    return {
        "R1": float(100.0 * np.mean(r <= 1)),
        "R5": float(100.0 * np.mean(r <= 5)),
        "R10": float(100.0 * np.mean(r <= 10)),
        "MdR": float(np.median(r)),
        "MnR": float(np.mean(r)),
    }


def retrieval_metrics(sim: Any, text_to_video: Any = None, invalid_videos: Any = None) -> dict[str, float]:
    """Text->video metrics of a text x video matrix: ``{"R1","R5","R10","MdR","MnR"}``.

    Square without ``text_to_video``: the diagonal is the match. With ``text_to_video`` (multi-caption),
    each text is ranked against all videos and its match is column ``text_to_video[i]``. For video->text
    use :func:`video_to_text_metrics` (in the 1:1 case without invalid videos, ``sim.T`` here is the same).
    ``invalid_videos`` (bool mask over columns, or indices): see the module doc; their texts are misses.
    """
    return ranks_to_metrics(match_ranks(sim, text_to_video, invalid_videos))


def video_to_text_metrics(sim: Any, text_to_video: Any = None, invalid_videos: Any = None,
                          convention: str = DEFAULT_V2T_CONVENTION) -> dict[str, float]:
    """Video->text metrics of a text x video matrix (rows texts): see :func:`video_to_text_ranks`."""
    return ranks_to_metrics(video_to_text_ranks(sim, text_to_video, invalid_videos, convention))


def dual_softmax(sim: Any, temperature: float = 100.0) -> Any:
    """Dual Softmax re-scoring: ``sim * softmax(temperature * sim, dim=0)`` (softmax over the texts).

    For each video the softmax is a distribution over all query texts, which down-weights "hub" videos
    that match many texts. Rows are texts. Returns the same kind (numpy or torch, same device) as the
    input, **in float64**: with cosine scores the softmax spans up to ``exp(-2 * temperature)`` = e^-200,
    which underflows float32 to exact zeros, and those zeros would then tie (and, ties being pessimistic,
    sink matches to the bottom of the ranking).
    """
    is_numpy = isinstance(sim, np.ndarray)
    s = torch.as_tensor(sim)
    if s.dim() != 2:
        raise ValueError(f"similarity matrix must be 2-D [texts, videos], got shape {tuple(s.shape)}")
    work = s.detach().to(torch.float64)
    out = work * torch.softmax(temperature * work, dim=0)
    return out.numpy() if is_numpy else out


def evaluate_similarity(sim: Any, text_to_video: Any = None, dsl: bool = True,
                        invalid_videos: Any = None,
                        v2t_convention: str = DEFAULT_V2T_CONVENTION) -> dict[str, Any]:
    """All retrieval numbers of one evaluation: ``{"t2v", "v2t", "v2t_convention"}`` plus ``"t2v_dsl"`` (and
    ``"v2t_dsl"``, see below) if ``dsl``.

    ``v2t_convention`` names how the ``"v2t"`` table was computed (:data:`V2T_CONVENTIONS`); it is a string,
    so code that keeps the dict-valued entries gets the tables only.

    DSL re-scores the same matrix once and uses it for both directions, as the reference does. Its softmax
    runs over the texts of each video's column, and ``x * exp(100 x)`` is increasing for ``x > -0.01``, so
    a video's ranking of its texts, i.e. ``v2t_dsl``, equals ``v2t`` whenever the video's best caption scores
    above -0.01 (always, in practice). ``v2t_dsl`` is kept in the dict for code that reads it, but
    :func:`format_table` does not show it as a separate result.

    ``invalid_videos`` (undecodable videos: bool mask over columns, or indices) are guaranteed misses in all
    tables. They are masked *after* DSL, in each table: DSL's softmax runs over the texts of one column, so
    an invalid column never changes the re-scored values of a valid one, and masking it to ``-inf`` before
    DSL would turn its column into NaN.
    """
    _check_convention(v2t_convention)
    s = _as_tensor(sim)
    results: dict[str, Any] = {
        "t2v": retrieval_metrics(s, text_to_video, invalid_videos),
        "v2t": video_to_text_metrics(s, text_to_video, invalid_videos, v2t_convention),
    }
    if dsl:
        d = dual_softmax(s)
        results["t2v_dsl"] = retrieval_metrics(d, text_to_video, invalid_videos)
        results["v2t_dsl"] = video_to_text_metrics(d, text_to_video, invalid_videos, v2t_convention)
    results["v2t_convention"] = v2t_convention
    return results


_ROW_LABELS = {
    "t2v": "text->video",
    "v2t": "video->text",
    "t2v_dsl": "text->video (DSL)",
}
#: Tables computed but not shown as separate results (``format_table``), with the one-line reason.
_HIDDEN = {"v2t_dsl": "DSL re-scores each video's column by a softmax over texts, which keeps the column's "
                      "order, so video->text with DSL equals video->text and is not shown."}


def format_table(results: Mapping[str, Any], v2t_convention: str | None = None) -> str:
    """A markdown table with one row per direction (plain rows first, then DSL) and the five metrics,
    followed by a line naming the video->text convention (``v2t_convention``, else the one recorded in
    ``results``, else the default) and, when DSL is shown, why video->text has no DSL row."""
    header = "| direction | R@1 | R@5 | R@10 | MdR | MnR |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    tables = {k: v for k, v in results.items() if isinstance(v, Mapping) and k not in _HIDDEN}
    keys = [k for k in _ROW_LABELS if k in tables] + [k for k in tables if k not in _ROW_LABELS]
    for key in keys:
        m = tables[key]
        label = _ROW_LABELS.get(key, key)
        lines.append(
            f"| {label} | {m['R1']:.1f} | {m['R5']:.1f} | {m['R10']:.1f} | {m['MdR']:.1f} | {m['MnR']:.1f} |"
        )
    convention = v2t_convention or results.get("v2t_convention") or DEFAULT_V2T_CONVENTION
    if "v2t" in tables:
        lines.append(f"convention ({convention}): {V2T_CONVENTIONS[_check_convention(str(convention))]}.")
    if "t2v_dsl" in tables:
        lines.append(_HIDDEN["v2t_dsl"])
    return "\n".join(lines)


def paragraph_text(sentences: str | Sequence[str]) -> str:
    """The paragraph protocol's query (DiDeMo, ActivityNet): all sentences of a video joined by one space.

    The reference joins only when the annotation path contains "didemo"; applied to ActivityNet too this
    avoids its known pitfall of sampling one sentence (R@1 ~ 20).
    """
    if isinstance(sentences, str):
        return sentences
    return " ".join(sentences)
