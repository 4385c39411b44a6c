"""``torch.utils.data`` datasets over schema records, and the collator that tokenises.

- :class:`RetrievalTrainDataset`: one item per video, one caption sampled per access (the reference's
  fine-tuning protocol), or the joined paragraph for paragraph records.
- :class:`RetrievalEvalDataset`: rows are videos; ``texts`` lists every caption (one paragraph per video in
  paragraph mode) and ``text_to_video`` the video row of each text.
- :class:`PretrainDataset`: post-pretraining items V (T frames), F (the clip's middle frame), S (subtitle),
  C (auxiliary caption, ``None`` when missing: never the string "None" as in the reference).
- :class:`ImageTextDataset`: images (or a video's middle frame) as 1-frame videos with a caption.
- :class:`Collator`: stacks, tokenises, drops failed items and reports them.

**Bad input**: a video that cannot be decoded makes ``__getitem__`` log a warning, count it, append
``(path, reason)`` to ``dataset.failures`` and return ``None``; the failure is also queued in this process
so that the :class:`Collator` (which runs in the same DataLoader worker right after the items) can put it
in ``batch["failures"]``. Counts therefore survive worker processes, and the trainer sums them per epoch.
Items are never zero-filled and one bad file never stops a run.

**Decoded-clip cache**: ``cache=`` (:mod:`clipvip.data.cache`, in memory or uint8 files on disk) makes
every clip decode once; it needs the deterministic ``uniform`` sampling and returns exactly the frames a
fresh decode gives.

**Determinism**: every random choice of item ``i`` (frame jitter, caption choice) comes from a generator
seeded with ``(seed, epoch, i)``, so a resumed run (``set_epoch``) sees exactly the same items.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from clipvip.data import VideoDecodeError
from clipvip.data.annotations import Record, read_jsonl, record_id
from clipvip.data.cache import ClipCache, cached_load_clip, check_cacheable
from clipvip.data.transforms import VideoTransform

log = logging.getLogger(__name__)

Failure = tuple[str, str]
_PENDING: deque[Failure] = deque(maxlen=100_000)


def record_failure(path: str, reason: str) -> None:
    """Queue a failure in this process for the next :class:`Collator` call."""
    _PENDING.append((str(path), str(reason)))


def drain_failures() -> list[Failure]:
    """Take every queued failure of this process (the collator calls this once per batch)."""
    out = list(_PENDING)
    _PENDING.clear()
    return out


def load_records(records: Sequence[Record] | str | os.PathLike[str], video_root: str | os.PathLike[str] | None) -> tuple[list[Record], Path]:
    """Records from a list or a JSONL path, and the folder relative ``video`` paths resolve against
    (``video_root``, else the JSONL's folder, else the working directory)."""
    if isinstance(records, (str, os.PathLike)):
        path = Path(records)
        recs = read_jsonl(path)
        root = Path(video_root) if video_root else path.parent
    else:
        recs = [dict(r) for r in records]
        root = Path(video_root) if video_root else Path.cwd()
    return recs, root


def paragraph_of(texts: Sequence[str]) -> str:
    """The reference's paragraph query: sentences joined with one space."""
    return " ".join(t.strip() for t in texts)


class _VideoDataset(Dataset):
    """Common plumbing: records, path resolution, transform, seeded per-item RNG, failure accounting."""

    default_sampling = "uniform"

    def __init__(
        self,
        records: Sequence[Record] | str | os.PathLike[str],
        *,
        video_root: str | os.PathLike[str] | None = None,
        num_frames: int = 12,
        image_size: int = 224,
        sampling: str | None = None,
        backend: str = "pyav",
        seed: int = 0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        split: str | None = None,
        cache: ClipCache | None = None,
    ) -> None:
        recs, self.video_root = load_records(records, video_root)
        if split is not None:
            recs = [r for r in recs if r.get("split", split) == split]
        self.records: list[Record] = recs
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.sampling = sampling or self.default_sampling
        self.backend = backend
        self.seed = int(seed)
        self.epoch = 0
        self.transform = transform or VideoTransform(size=image_size)
        self.failures: list[Failure] = []
        if cache is not None:
            check_cacheable(self.sampling)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_failures(self) -> int:
        """Failures seen by this process (workers keep their own; the collator reports every one)."""
        return len(self.failures)

    @property
    def paths(self) -> list[str]:
        return [str(self.video_path(r)) for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws (jitter, caption choice) items use; call before iterating."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index)])

    def video_path(self, record: Record) -> Path:
        p = Path(record["video"])
        return p if p.is_absolute() else self.video_root / p

    def _fail(self, path: str, reason: str) -> None:
        self.failures.append((path, reason))
        record_failure(path, reason)
        log.warning("skipping %s: %s (%d failures so far in this process)", path, reason, len(self.failures))

    def _load(self, record: Record, rng: np.random.Generator, num_frames: int, with_middle: bool = False):
        path = str(self.video_path(record))
        frames, middle = cached_load_clip(
            self.cache, path, num_frames, self.sampling, record.get("start"), record.get("end"),
            backend=self.backend, rng=rng, with_middle=with_middle,
        )
        return frames, middle


class RetrievalTrainDataset(_VideoDataset):
    """Fine-tuning items ``{"pixel_values" [T,3,S,S], "text", "video_id", "index"}``.

    One item per video; each access samples one of its captions (``paragraph`` records: the joined
    paragraph). ``paragraph=True`` forces paragraph mode for every record; otherwise each record's own
    ``"paragraph"`` flag decides (DiDeMo/ActivityNet readers set it).
    """

    default_sampling = "jitter"

    def __init__(self, records: Sequence[Record] | str | os.PathLike[str], *, paragraph: bool | None = None, **kw: Any) -> None:
        super().__init__(records, **kw)
        self.paragraph = bool(paragraph)
        empty = [record_id(r) for r in self.records if not r.get("texts")]
        if empty:
            raise ValueError(f"{len(empty)} training records have no text (first: {empty[0]})")

    def text_for(self, record: Record, rng: np.random.Generator) -> str:
        texts = record["texts"]
        if self.paragraph or record.get("paragraph"):
            return paragraph_of(texts)
        return texts[int(rng.integers(0, len(texts)))]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        rng = self.rng(index)
        text = self.text_for(record, rng)
        try:
            frames, _ = self._load(record, rng, self.num_frames)
        except VideoDecodeError as exc:
            self._fail(exc.path, exc.reason)
            return None
        return {"pixel_values": self.transform(frames), "text": text, "video_id": record_id(record), "index": index}


class RetrievalEvalDataset(_VideoDataset):
    """Evaluation: iterates videos (``{"pixel_values", "video_id", "index"}``) and exposes ``texts`` and
    ``text_to_video`` (every caption, or one joined paragraph per paragraph video)."""

    default_sampling = "uniform"

    def __init__(self, records: Sequence[Record] | str | os.PathLike[str], *, paragraph: bool | None = None, **kw: Any) -> None:
        super().__init__(records, **kw)
        self.paragraph = bool(paragraph)
        self.texts: list[str] = []
        self.text_to_video: list[int] = []
        for row, rec in enumerate(self.records):
            texts = rec.get("texts") or []
            if texts and (self.paragraph or rec.get("paragraph")):
                texts = [paragraph_of(texts)]
            self.texts.extend(texts)
            self.text_to_video.extend([row] * len(texts))

    @property
    def video_ids(self) -> list[str]:
        return [record_id(r) for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            frames, _ = self._load(record, self.rng(index), self.num_frames)
        except VideoDecodeError as exc:
            self._fail(exc.path, exc.reason)
            return None
        return {"pixel_values": self.transform(frames), "video_id": record_id(record), "index": index}


class PretrainDataset(_VideoDataset):
    """Post-pretraining items (V, F, S, C)::

        {"pixel_values" [T,3,S,S], "frame_pixel_values" [1,3,S,S], "subtitle": str,
         "caption": str | None, "video_id", "index"}

    F is the clip's middle frame (index ``N // 2`` of its ``N`` frames, fetched in the same decode pass,
    same transform), as in the reference (``vr.get_batch([int(total_frames / 2)])``), which is the frame
    the auxiliary captioner described. S is the record's ``subtitle`` (records without one fall back to a
    sampled ``texts`` entry); C is ``caption`` or ``None``.
    """

    default_sampling = "jitter"

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        rng = self.rng(index)
        subtitle = record.get("subtitle")
        if subtitle is None:
            texts = record.get("texts") or [""]
            subtitle = texts[int(rng.integers(0, len(texts)))]
        caption = record.get("caption")
        try:
            frames, middle = self._load(record, rng, self.num_frames, with_middle=True)
        except VideoDecodeError as exc:
            self._fail(exc.path, exc.reason)
            return None
        assert middle is not None
        return {
            "pixel_values": self.transform(frames),
            "frame_pixel_values": self.transform(middle),
            "subtitle": subtitle,
            "caption": caption if caption else None,
            "video_id": record_id(record),
            "index": index,
        }


class ImageTextDataset(_VideoDataset):
    """Image-text pairs as 1-frame videos: ``{"pixel_values" [1,3,S,S], "text", "video_id", "index"}``.

    ``video`` may name an image (png/jpg/... via PIL) or a video, whose middle frame is used. The text is
    one of ``texts`` sampled per access, else ``caption``.
    """

    def __init__(self, records: Sequence[Record] | str | os.PathLike[str], **kw: Any) -> None:
        kw.setdefault("num_frames", 1)
        kw["sampling"] = "uniform"
        super().__init__(records, **kw)
        self.num_frames = 1

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        rng = self.rng(index)
        texts = record.get("texts") or ([record["caption"]] if record.get("caption") else [""])
        text = texts[int(rng.integers(0, len(texts)))]
        try:
            frames, _ = self._load(record, rng, 1)
        except VideoDecodeError as exc:
            self._fail(exc.path, exc.reason)
            return None
        return {"pixel_values": self.transform(frames), "text": text, "video_id": record_id(record), "index": index}


# --------------------------------------------------------------------------------------------- collation
class Collator:
    """Batch dataset items: stack pixels, tokenise texts, drop ``None`` items and report them.

    Output (keys present when the items carry them): ``pixel_values [B,T,3,S,S]``, ``input_ids`` /
    ``attention_mask`` (from ``text``), ``frame_pixel_values [B,1,3,S,S]``, ``subtitle_input_ids`` /
    ``subtitle_attention_mask``, ``caption_input_ids`` / ``caption_attention_mask`` (a missing caption is
    tokenised as the empty string) and ``has_caption`` bool ``[B]``, ``text`` / ``subtitle`` / ``caption``
    (the strings), ``video_id`` (list), ``index`` (int64 ``[B]``), ``failures`` (list of ``(path,
    reason)``), ``batch_size``. When every item failed, ``pixel_values`` is ``None`` and ``batch_size`` 0.

    Tokenisation goes through ``clipvip.tokenizer.tokenize(tokenizer, texts, max_length)`` unless a
    ``tokenize_fn`` with the same signature is given.
    """

    def __init__(self, tokenizer: Any, max_length: int = 77, tokenize_fn: Callable[..., dict[str, torch.Tensor]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self._tokenize_fn = tokenize_fn

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        fn = self._tokenize_fn
        if fn is None:
            from clipvip.tokenizer import tokenize as fn
        return fn(self.tokenizer, texts, self.max_length)

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        failures = drain_failures()
        kept = [it for it in items if it is not None]
        missing = len(items) - len(kept) - len(failures)
        failures.extend(("<unknown>", "item was None (failure recorded in another process)") for _ in range(max(missing, 0)))
        batch: dict[str, Any] = {"failures": failures, "batch_size": len(kept)}
        if not kept:
            batch.update(pixel_values=None, video_id=[], index=torch.zeros(0, dtype=torch.long))
            return batch
        first = kept[0]
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in kept])
        batch["video_id"] = [it.get("video_id") for it in kept]
        batch["index"] = torch.tensor([int(it.get("index", -1)) for it in kept], dtype=torch.long)
        if "text" in first:
            texts = [it["text"] for it in kept]
            tok = self.tokenize(texts)
            batch["text"] = texts
            batch["input_ids"], batch["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        if "frame_pixel_values" in first:
            batch["frame_pixel_values"] = torch.stack([it["frame_pixel_values"] for it in kept])
        if "subtitle" in first:
            subs = [it["subtitle"] or "" for it in kept]
            tok = self.tokenize(subs)
            batch["subtitle"] = subs
            batch["subtitle_input_ids"], batch["subtitle_attention_mask"] = tok["input_ids"], tok["attention_mask"]
        if "caption" in first:
            caps = [it["caption"] for it in kept]
            tok = self.tokenize([c if c is not None else "" for c in caps])
            batch["caption"] = caps
            batch["caption_input_ids"], batch["caption_attention_mask"] = tok["input_ids"], tok["attention_mask"]
            batch["has_caption"] = torch.tensor([c is not None for c in caps], dtype=torch.bool)
        return batch
