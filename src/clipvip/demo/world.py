"""The synthetic world as the demo needs it: generated once, decoded once, tokenised once.

:func:`clipvip.data.synthetic.generate_world` writes the files; this module turns them into in-memory
banks (:mod:`clipvip.demo.engine`) so every training stage reads tensors instead of re-decoding videos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipvip.data.annotations import read_jsonl
from clipvip.demo.engine import ClipBank, EvalSet, TextBank, decode_clips, tokenize_texts

SPLITS = ("train", "val", "test")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Schema records (:func:`clipvip.data.annotations.read_jsonl`, whose errors name the file and line), each
    with ``video`` resolved to an absolute path (relative paths are relative to the file's folder)."""
    path = Path(path)
    records = read_jsonl(path)
    for rec in records:
        video = Path(rec["video"])
        rec["video"] = str(video if video.is_absolute() else (path.parent / video))
    return records


def record_texts(rec: dict[str, Any]) -> list[str]:
    """The downstream captions of a record (schema: ``texts``; a plain ``text`` is accepted too)."""
    texts = rec.get("texts")
    if texts is None and "text" in rec:
        texts = [rec["text"]]
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError(f"{rec.get('video')}: record has no captions")
    return [str(t) for t in texts]


def twins(records: list[dict[str, Any]]) -> list[int] | None:
    """Row of each clip's reverse-order twin in ``records`` (-1 when its twin is elsewhere or it has none),
    or None when no record names a twin (a world without twins).

    The twin is the record's explicit ``"twin"`` field (a video id, written by
    :func:`clipvip.data.synthetic.generate_world`), never guessed from clip numbering.
    """
    if not any(rec.get("twin") for rec in records):
        return None
    row_of = {str(rec.get("id") or Path(rec["video"]).stem): row for row, rec in enumerate(records)}
    out = [row_of.get(str(rec["twin"]), -1) if rec.get("twin") else -1 for rec in records]
    return out if any(r >= 0 for r in out) else None


def twin_groups(records: list[dict[str, Any]]) -> list[list[int]] | None:
    """Rows grouped by twin pair (a clip without its twin is a group of one), or None if unknown."""
    twin = twins(records)
    if twin is None:
        return None
    groups, seen = [], set()
    for row, other in enumerate(twin):
        if row in seen:
            continue
        group = [row] if other < 0 else sorted({row, other})
        seen.update(group)
        groups.append(group)
    return groups


@dataclass
class DemoWorld:
    """Everything the demo trains and evaluates on, in memory."""

    root: Path
    tokenizer: Any
    tokenizer_dir: Path
    images: ClipBank  # middle frames as one-frame clips [N, 1, 3, S, S]
    image_texts: TextBank
    pretrain: ClipBank
    subtitles: TextBank
    captions: TextBank
    has_caption: torch.Tensor
    splits: dict[str, EvalSet]
    split_records: dict[str, list[dict[str, Any]]]
    pretrain_records: list[dict[str, Any]]
    info: dict[str, Any]

    def pair_rows(self, split: str) -> list[list[int]]:
        """For each clip of ``split``, the rows of its captions in the split's text bank."""
        rows: list[list[int]] = [[] for _ in range(len(self.splits[split].clips))]
        for text_row, video_row in enumerate(self.splits[split].text_to_video):
            rows[video_row].append(text_row)
        return rows


def _find(paths: Any, root: Path, name: str) -> Path:
    """The path of ``name`` in ``generate_world``'s answer (a dict, an object or nothing), else under root."""
    stem = name.split(".")[0]
    for key in (stem, name, f"{stem}_jsonl", f"{stem}_dir"):
        value = paths.get(key) if isinstance(paths, dict) else getattr(paths, key, None)
        if value:
            return Path(value)
    return root / name


def build_world(out_dir: Path, settings: Any, seed: int, progress: bool) -> DemoWorld:
    """Generate the synthetic world under ``out_dir`` and load it into memory."""
    from clipvip.data.synthetic import generate_world
    from clipvip.tokenizer import load_tokenizer

    paths = generate_world(out_dir, num_videos=settings.num_videos, seed=seed, size=settings.image_size,
                           num_frames=settings.num_frames)
    tok_dir = _find(paths, out_dir, "tokenizer")
    tokenizer = load_tokenizer(str(tok_dir), max_length=settings.max_length)
    n, s, L = settings.num_frames, settings.image_size, settings.max_length

    images_rec = read_records(_find(paths, out_dir, "images.jsonl"))
    images = decode_clips([r["video"] for r in images_rec], 1, s, desc="decode frames", progress=progress)
    image_texts = tokenize_texts(tokenizer, [record_texts(r)[0] if "texts" in r or "text" in r
                                             else str(r["caption"]) for r in images_rec], L)

    pre_rec = read_records(_find(paths, out_dir, "pretrain.jsonl"))
    pretrain = decode_clips([r["video"] for r in pre_rec], n, s, desc="decode pretrain", progress=progress)
    subtitles = tokenize_texts(tokenizer, [str(r.get("subtitle") or "") for r in pre_rec], L)
    has_caption = torch.tensor([bool(r.get("caption")) for r in pre_rec])
    captions = tokenize_texts(tokenizer, [str(r.get("caption") or "") for r in pre_rec], L)

    splits: dict[str, EvalSet] = {}
    split_records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        recs = read_records(_find(paths, out_dir, f"{split}.jsonl"))
        bank = decode_clips([r["video"] for r in recs], n, s, desc=f"decode {split}", progress=progress)
        texts, t2v = [], []
        for row, rec in enumerate(recs):
            for text in record_texts(rec):
                texts.append(text)
                t2v.append(row)
        splits[split] = EvalSet(clips=bank.pixels, texts=tokenize_texts(tokenizer, texts, L), text_to_video=t2v,
                                paths=bank.paths, twin=twins(recs))
        split_records[split] = recs
    info = {
        "root": str(out_dir),
        "pretrain_videos": len(pretrain),
        "pretrain_with_caption": int(has_caption.sum()),
        "images": len(images),
        **{f"{k}_videos": len(v.clips) for k, v in splits.items()},
        **{f"{k}_captions": len(v.texts.texts) for k, v in splits.items()},
        "vocab_size": len(tokenizer),
    }
    return DemoWorld(root=out_dir, tokenizer=tokenizer, tokenizer_dir=tok_dir, images=images,
                     image_texts=image_texts, pretrain=pretrain, subtitles=subtitles, captions=captions,
                     has_caption=has_caption, splits=splits, split_records=split_records,
                     pretrain_records=pre_rec, info=info)
