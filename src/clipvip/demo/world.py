"""The synthetic world as the demo needs it: generated files, the tokenizer and the split records.

:func:`clipvip.data.synthetic.generate_world` writes the videos and JSONL annotations; every training stage
then reads them through the library's datasets (``clipvip.train``), with the decoded-clip cache
(``data.cache: memory``) so each clip is decoded once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipvip.data.annotations import read_jsonl, record_id

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
    or None when no record names a twin. The twin is the record's explicit ``"twin"`` field."""
    from clipvip.analysis.order import twin_columns

    if not any(rec.get("twin") for rec in records):
        return None
    out = twin_columns([record_id(r) for r in records], [r.get("twin") for r in records])
    return out if any(r >= 0 for r in out) else None


@dataclass
class DemoWorld:
    """Paths, tokenizer and records of the generated world."""

    root: Path
    paths: dict[str, Path]  # train, val, test, pretrain, images (JSONL)
    tokenizer: Any
    tokenizer_dir: Path
    split_records: dict[str, list[dict[str, Any]]]
    info: dict[str, Any]
    source: Any = None  # the SyntheticWorld it was read from (picklable: worker processes re-open it)


def build_world(out_dir: Path, settings: Any, seed: int, progress: bool) -> DemoWorld:
    """Generate the synthetic world under ``out_dir`` and read its annotations."""
    from clipvip.data.synthetic import generate_world

    w = generate_world(out_dir, num_videos=settings.num_videos, seed=seed, size=settings.image_size,
                       num_frames=settings.num_frames, progress=progress)
    return open_world(w, settings)


def world_at(root: Path) -> Any:
    """The :class:`clipvip.data.synthetic.SyntheticWorld` of a world an earlier demo generated in ``root``
    (``OUT/world``), for :func:`open_world`; names the first missing file."""
    from clipvip.data.synthetic import SyntheticWorld

    root = Path(root)
    files = {name: root / f"{name}.jsonl" for name in ("train", "val", "test", "pretrain", "images")}
    for path in [*files.values(), root / "videos", root / "tokenizer"]:
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; {root} is not a world written by clipvip demo")
    return SyntheticWorld(root=root, videos=root / "videos", tokenizer=root / "tokenizer", num_videos=0, **files)


def open_world(w: Any, settings: Any) -> DemoWorld:
    """Read a generated world (a :class:`clipvip.data.synthetic.SyntheticWorld`): its tokenizer and split
    records. The demo's worker processes call this on the world the main process generated."""
    from clipvip.tokenizer import load_tokenizer

    if w.tokenizer is None:  # pragma: no cover - generate_world writes it by default
        raise RuntimeError(f"{w.root}: the synthetic world has no tokenizer")
    tokenizer = load_tokenizer(str(w.tokenizer), max_length=settings.max_length)
    paths = {name: Path(getattr(w, name)) for name in ("train", "val", "test", "pretrain", "images")}
    split_records = {split: read_records(paths[split]) for split in SPLITS}
    pretrain = read_jsonl(paths["pretrain"])
    info: dict[str, Any] = {
        "root": str(w.root),
        "pretrain_videos": len(pretrain),
        "pretrain_with_caption": sum(1 for r in pretrain if r.get("caption")),
        "images": len(read_jsonl(paths["images"])),
        **{f"{k}_videos": len(v) for k, v in split_records.items()},
        **{f"{k}_captions": sum(len(record_texts(r)) for r in v) for k, v in split_records.items()},
        "vocab_size": len(tokenizer),
    }
    return DemoWorld(root=Path(w.root), paths=paths, tokenizer=tokenizer, tokenizer_dir=Path(w.tokenizer),
                     split_records=split_records, info=info, source=w)
