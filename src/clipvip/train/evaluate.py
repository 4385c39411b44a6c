"""Retrieval evaluation of a model on an annotation file: plain and dual-softmax tables, plus failures.

Texts are encoded once and videos once, then one text×video cosine matrix is scored by
:func:`clipvip.metrics.evaluate_similarity` (multi-caption aware through ``text_to_video``; paragraph
protocol by joining a video's sentences).

Distributed runs (``distributed=True`` inside a process group) shard the *videos*, the expensive part:
rank ``r`` encodes rows ``r, r + W, ...``; features and row numbers are gathered onto every rank (no
gradient), so each row is encoded exactly once and nothing is padded or duplicated. Texts are cheap and are
encoded on rank 0, which alone computes the tables; other ranks get ``None``.

A video that cannot be decoded keeps its column (so the text→video mapping stays valid and the tables stay
over *all* videos) and is passed to the metrics as an invalid video: its column is ranked below every valid
video for every text, so it never takes rank from another query, and its own texts (text→video) and the video
itself (video→text) get the worst rank, a guaranteed miss, in the plain and DSL tables alike. A zero
embedding alone would not be enough: its cosine 0 outranks real negatives with negative cosine. Failures are
listed in ``failures`` (path, reason) and their rows in ``invalid_videos``; the tables are therefore
pessimistic about failures, never optimistic.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from clipvip.train.wrapper import move_to


class _Rows(torch.utils.data.Dataset):
    """Wraps an eval dataset so that a batch says which video rows it holds and which ones failed."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            item = self.dataset[i]
        except Exception as exc:  # noqa: BLE001 - one bad file never stops an evaluation
            return i, None, f"{type(exc).__name__}: {exc}"
        if item is None:
            reason = _failure_reason(self.dataset, i)
            _drain_pending()
            return i, None, reason
        return i, item["pixel_values"], None


def _drain_pending() -> None:
    """Consume the failure the data package queued for its training collator, so that an evaluation in the
    training process is not later reported as a training failure."""
    try:
        from clipvip.data.datasets import drain_failures
    except ImportError:  # pragma: no cover
        return
    drain_failures()


def _failure_reason(dataset: Any, i: int) -> str:
    for attr in ("failures", "_failures"):
        fails = getattr(dataset, attr, None)
        if fails:
            last = fails[-1]
            if isinstance(last, (tuple, list)) and len(last) == 2:
                return str(last[1])
            return str(last)
    return "video could not be decoded"


def _collate(items: list[tuple[int, Any, str | None]]) -> dict[str, Any]:
    ok = [(i, px) for i, px, _ in items if px is not None]
    return {
        "rows": torch.tensor([i for i, _ in ok], dtype=torch.long),
        "pixel_values": torch.stack([px for _, px in ok]) if ok else None,
        "failed": [(i, why) for i, px, why in items if px is None],
    }


def video_path_of(dataset: Any, i: int) -> str:
    """Best-effort file name of video row ``i`` for failure reports."""
    for attr in ("videos", "paths", "records"):
        seq = getattr(dataset, attr, None)
        if seq is not None:
            try:
                rec = seq[i]
            except (IndexError, TypeError, KeyError):
                continue
            if isinstance(rec, dict):
                return str(rec.get("path") or rec.get("video") or rec)
            return str(rec)
    return f"row {i}"


def build_eval_dataset(path: str | Path, tokenizer: Any = None, *, num_frames: int, image_size: int,
                       video_root: str | None = None, paragraph: bool = False, cache: Any = None) -> Any:
    """The data package's evaluation dataset for an annotation file (videos as rows, ``texts``); ``cache``
    is a decoded-clip cache (:mod:`clipvip.data.cache`) or None."""
    from clipvip.data import datasets as D

    return D.RetrievalEvalDataset(str(path), num_frames=num_frames, image_size=image_size,
                                  video_root=video_root, paragraph=paragraph, cache=cache)


@torch.no_grad()
def encode_texts(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int = 256,
                 device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None) -> Tensor:
    """``[N, D]`` float32 L2-normalised text features, encoded in batches."""
    from clipvip.tokenizer import tokenize

    feats = []
    dev = torch.device(device)
    for start in range(0, len(texts), batch_size):
        tok = tokenize(tokenizer, list(texts[start:start + batch_size]), max_length)
        with _autocast(dev, autocast_dtype):  # normalised below in fp32: a bf16 norm is off by up to ~0.4%
            out = model.encode_text(tok["input_ids"].to(dev), tok["attention_mask"].to(dev), normalize=False)
        feats.append(out.float().cpu())
    if not feats:
        return torch.zeros(0, int(model.config.projection_dim))
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def encode_videos(model: Any, dataset: Any, *, batch_size: int = 16, device: str | torch.device = "cpu",
                  num_workers: int = 0, progress: bool = False, autocast_dtype: torch.dtype | None = None,
                  rank: int = 0, world_size: int = 1) -> tuple[Tensor, list[tuple[str, str]]]:
    """``[V, D]`` video features in row order (zeros for rows that failed) and the failures ``(path, reason)``.

    With ``world_size > 1`` this process encodes rows ``rank::world_size`` only and the returned matrix and
    failures hold only those rows (the others stay zero); :func:`evaluate_retrieval` gathers them.
    """
    feats, failed = _encode_videos(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                                   progress=progress, autocast_dtype=autocast_dtype, rank=rank,
                                   world_size=world_size)
    return feats, [(path, why) for _row, path, why in failed]


def _encode_videos(model: Any, dataset: Any, *, batch_size: int, device: str | torch.device, num_workers: int,
                   progress: bool, autocast_dtype: torch.dtype | None, rank: int, world_size: int
                   ) -> tuple[Tensor, list[tuple[int, str, str]]]:
    """:func:`encode_videos` keeping the row of each failure, ``(row, path, reason)``, for the metrics."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    rows = _Rows(dataset)
    subset = rows if world_size == 1 else torch.utils.data.Subset(rows, range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=_collate)
    dim = int(model.config.projection_dim)
    out = torch.zeros(len(dataset), dim)
    failures: list[tuple[int, str, str]] = []
    for batch in tqdm(loader, desc="eval videos", disable=not progress, leave=False):
        for i, why in batch["failed"]:
            failures.append((int(i), video_path_of(dataset, i), why))
        if batch["pixel_values"] is None:
            continue
        with _autocast(dev, autocast_dtype):
            feats = model.encode_video(move_to(batch["pixel_values"], dev), normalize=False)
        out[batch["rows"]] = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
    return out, failures


def _gather_shards(v: Tensor, failures: list[tuple[int, str, str]], rank: int, world_size: int,
                   device: torch.device) -> tuple[Tensor, list[tuple[int, str, str]]]:
    """Combine every rank's rows (each row was encoded by exactly one rank) and failures."""
    import torch.distributed as dist

    from clipvip.train.distributed import gather

    mine = torch.arange(rank, v.shape[0], world_size)
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    feats = gather(v[mine].to(comm)).cpu()
    idx = gather(mine.to(comm)).cpu()
    full = torch.zeros_like(v)
    full[idx] = feats
    all_failures: list[Any] = [None] * world_size
    dist.all_gather_object(all_failures, failures)
    return full, sorted((tuple(f) for part in all_failures for f in part), key=lambda f: f[0])


@torch.no_grad()
def evaluate_retrieval(model: Any, tokenizer: Any, data: Any, *, num_frames: int, image_size: int,
                       max_length: int, batch_size: int = 16, device: str | torch.device = "cpu",
                       video_root: str | None = None, paragraph: bool = False, dsl: bool = True,
                       num_workers: int = 0, progress: bool = False,
                       autocast_dtype: torch.dtype | None = None, distributed: bool = False,
                       v2t_convention: str = "best-caption", cache: Any = None,
                       keep_similarity: bool = False) -> dict[str, Any] | None:
    """Text→video and video→text tables (plus DSL) of ``model`` on ``data``.

    ``distributed=True`` (every rank of an initialised process group must call it) shards the videos across
    the ranks; rank 0 returns the results and the other ranks ``None``.

    ``data`` is an annotation JSONL path or an evaluation dataset object (``texts``, ``text_to_video``,
    items with ``pixel_values``). ``v2t_convention`` chooses the multi-caption video→text convention
    (``"best-caption"`` or CLIP4Clip's ``"maxpool"``, :mod:`clipvip.metrics`) and is recorded in the result
    as ``"v2t_convention"``. Returns ``{"t2v", "v2t", "t2v_dsl", "v2t_dsl", "v2t_convention", "failures",
    "invalid_videos", "num_texts", "num_videos"}``; ``failures`` is a list of ``[path, reason]`` and
    ``invalid_videos`` the sorted rows (video columns) of those failures. The tables are over all videos,
    failures included as guaranteed misses (module doc).

    ``cache`` (a :mod:`clipvip.data.cache` cache) is used when ``data`` is a path. ``keep_similarity`` adds
    ``"similarity"``, the ``[texts, videos]`` cosine matrix (a tensor: pop it before writing JSON), and
    ``"text_to_video"`` for analyses beyond the tables (e.g. twin-pair order accuracy).
    """
    from clipvip.metrics import evaluate_similarity

    dataset = data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: evaluation annotations not found")
        dataset = build_eval_dataset(path, tokenizer, num_frames=num_frames, image_size=image_size,
                                     video_root=video_root, paragraph=paragraph, cache=cache)
    texts = list(dataset.texts)
    text_to_video = list(dataset.text_to_video)
    if not texts or len(dataset) == 0:
        raise ValueError(f"{data}: no texts or no videos to evaluate")
    from clipvip.train import distributed as dist_utils

    rank, world = 0, 1
    if distributed and dist_utils.is_distributed():
        rank, world = dist_utils.rank(), dist_utils.world_size()
    was_training = model.training
    model.eval()
    try:
        v, failures = _encode_videos(model, dataset, batch_size=batch_size, device=device,
                                     num_workers=num_workers, progress=progress and rank == 0,
                                     autocast_dtype=autocast_dtype, rank=rank, world_size=world)
        if world > 1:
            v, failures = _gather_shards(v, failures, rank, world, torch.device(device))
        if rank != 0:
            return None
        t = encode_texts(model, tokenizer, texts, max_length=max_length, device=device,
                         autocast_dtype=autocast_dtype)
    finally:
        model.train(was_training)
    sim = t @ v.T
    invalid = sorted({row for row, _path, _why in failures})
    results: dict[str, Any] = dict(evaluate_similarity(sim, text_to_video, dsl=dsl, invalid_videos=invalid,
                                                                v2t_convention=v2t_convention))
    results["failures"] = [[p, r] for _row, p, r in failures]
    results["invalid_videos"] = invalid
    results["num_texts"] = len(texts)
    results["num_videos"] = len(dataset)
    if keep_similarity:
        results["similarity"] = sim
        results["text_to_video"] = text_to_video
    return results
