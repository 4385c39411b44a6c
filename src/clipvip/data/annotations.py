"""Annotation readers: every dataset's own format → one JSONL schema (``docs/data.md``).

One record per video (or per moment)::

    {"video": "relative/path.mp4", "texts": ["caption", ...], "split": "train|val|test",
     "id": "video id"?, "start": s?, "end": s?, "paragraph": true?, "subtitle": "..."?, "caption": "..."|null?}

``texts`` holds every caption of the video. Paragraph datasets (DiDeMo, ActivityNet Captions) keep their
sentences in ``texts`` and carry ``"paragraph": true``; the datasets join the sentences with one space, as
the reference does for DiDeMo. Marking the record (rather than guessing from the annotation path, as the
reference does with ``'didemo' in path``) avoids the reference's ActivityNet pitfall where a random
single sentence is sampled instead of the paragraph (clipvip-reference §5).
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clipvip.atomic import atomic_open

PathLike = str | os.PathLike[str]
Record = dict[str, Any]
SPLITS = ("train", "val", "test")


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file (and line) and the reason."""

    def __init__(self, path: PathLike, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------------------------- JSONL I/O
def validate_record(record: Any, where: str = "record") -> Record:
    """Check one schema record, returning it; raises ``ValueError`` naming ``where`` and the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    video = record.get("video")
    if not isinstance(video, str) or not video:
        raise ValueError(f"{where}: 'video' must be a non-empty string")
    texts = record.get("texts", [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{where}: 'texts' must be a list of strings")
    split = record.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where}: 'split' must be one of {SPLITS}, got {split!r}")
    for key in ("start", "end"):
        if record.get(key) is not None and not isinstance(record[key], (int, float)):
            raise ValueError(f"{where}: {key!r} must be a number of seconds")
    if record.get("start") is not None and record.get("end") is not None and record["end"] < record["start"]:
        raise ValueError(f"{where}: 'end' ({record['end']}) is before 'start' ({record['start']})")
    for key in ("subtitle", "caption"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string or null")
    return record


def read_jsonl(path: PathLike) -> list[Record]:
    """Read and validate a schema JSONL file (blank lines ignored); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    records: list[Record] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnnotationError(path, f"invalid JSON ({exc.msg})", lineno) from exc
            try:
                records.append(validate_record(rec, "record"))
            except ValueError as exc:
                raise AnnotationError(path, str(exc).removeprefix("record: "), lineno) from exc
    return records


def write_jsonl(records: Iterable[Record], path: PathLike) -> Path:
    """Write records atomically (:mod:`clipvip.atomic`), validating each against the schema."""
    path = Path(path)
    with atomic_open(path, "w") as fh:
        for i, rec in enumerate(records):
            validate_record(rec, f"record {i}")
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def record_id(record: Record) -> str:
    """A record's video id: its ``id`` field, else the file stem of ``video``."""
    rid = record.get("id")
    return str(rid) if rid else Path(record["video"]).stem


def find_missing(records: Iterable[Record], video_root: PathLike) -> list[str]:
    """Videos referenced by ``records`` that do not exist under ``video_root`` (each listed once)."""
    root = Path(video_root)
    missing: list[str] = []
    seen: set[str] = set()
    for rec in records:
        v = rec["video"]
        if v in seen:
            continue
        seen.add(v)
        p = Path(v)
        if not (p if p.is_absolute() else root / p).exists():
            missing.append(v)
    return missing


# --------------------------------------------------------------------------------------------- helpers
def _load_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})") from exc


def _read_csv_rows(path: PathLike, delimiter: str = ",") -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            raise AnnotationError(path, "empty CSV file")
        return list(reader)


_MEDIA_SUFFIXES = {".mp4", ".m4v", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}


def _with_ext(name: str, ext: str | None) -> str:
    """``name`` with its media extension replaced by ``ext`` (or ``ext`` appended: ids such as LSMDC's
    ``..._00.00.54.129`` contain dots that are not extensions)."""
    if not ext:
        return name
    ext = ext if ext.startswith(".") else "." + ext
    suffix = Path(name).suffix
    return name[: -len(suffix)] + ext if suffix.lower() in _MEDIA_SUFFIXES else name + ext


def _require(path: PathLike, row: dict[str, Any], keys: tuple[str, ...], line: int) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise AnnotationError(path, f"missing column(s) {missing}", line)


# --------------------------------------------------------------------------------------------- MSR-VTT
def read_msrvtt(
    path: PathLike,
    split: str | None = None,
    *,
    data_json: PathLike | None = None,
    train_csv: PathLike | None = None,
    ext: str = ".mp4",
) -> list[Record]:
    """MSR-VTT: the JSFUSION 1k-A test csv, or the 9k train split.

    - ``MSRVTT_JSFUSION_test.csv`` (columns ``key,vid_key,video_id,sentence``): 1000 video-caption pairs,
      split ``test``.
    - 9k train: ``MSRVTT_train.9k.csv`` (one ``video_id`` column) plus ``MSRVTT_data.json`` (``{"videos":
      [...], "sentences": [{"video_id", "caption"}, ...]}``); pass either file as ``path`` and the other as
      ``data_json=`` / ``train_csv=``. With ``MSRVTT_data.json`` alone, its own ``split == "train"`` videos
      are used (the 6.5k "7k" split). Captions keep the file's order.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _read_csv_rows(path)
        if rows and "sentence" in rows[0]:
            out = []
            for i, row in enumerate(rows, 2):
                _require(path, row, ("video_id", "sentence"), i)
                out.append(
                    {"video": _with_ext(row["video_id"], ext), "id": row["video_id"], "texts": [row["sentence"].strip()],
                     "split": split or "test"}
                )
            return out
        train_csv, path = path, None
        if data_json is None:
            raise AnnotationError(train_csv, "the 9k train csv lists ids only: pass data_json=MSRVTT_data.json for the captions")
        path = Path(data_json)
    data = _load_json(path)
    if not isinstance(data, dict) or "sentences" not in data:
        raise AnnotationError(path, "expected MSRVTT_data.json with a 'sentences' list")
    if train_csv is not None:
        rows = _read_csv_rows(train_csv)
        if rows and "video_id" not in rows[0]:
            raise AnnotationError(train_csv, "expected a 'video_id' column")
        ids = [r["video_id"] for r in rows]
    else:
        ids = [v["video_id"] for v in data.get("videos", []) if v.get("split") == "train"]
    captions: dict[str, list[str]] = {vid: [] for vid in ids}
    for i, sent in enumerate(data["sentences"]):
        if not isinstance(sent, dict) or "video_id" not in sent or "caption" not in sent:
            raise AnnotationError(path, f"sentence {i} lacks 'video_id' or 'caption'")
        if sent["video_id"] in captions:
            captions[sent["video_id"]].append(str(sent["caption"]).strip())
    empty = [vid for vid, caps in captions.items() if not caps]
    if empty:
        raise AnnotationError(path, f"{len(empty)} train videos have no caption (first: {empty[0]})")
    return [{"video": _with_ext(vid, ext), "id": vid, "texts": caps, "split": split or "train"} for vid, caps in captions.items()]


# --------------------------------------------------------------------------------------------- DiDeMo
def read_didemo(path: PathLike, split: str | None = None, *, ext: str | None = None) -> list[Record]:
    """DiDeMo ``{train,val,test}_data.json``: one paragraph record per video (its descriptions in file order).

    The split defaults to the file name's prefix. Videos keep the annotation's file name unless ``ext``
    replaces the extension (many copies are re-encoded to .mp4).
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(path, "expected a JSON list of moment annotations")
    split = split or _split_from_name(path, "test")
    videos: OrderedDict[str, list[str]] = OrderedDict()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "video" not in item or "description" not in item:
            raise AnnotationError(path, f"item {i} lacks 'video' or 'description'")
        videos.setdefault(item["video"], []).append(str(item["description"]).strip())
    return [
        {"video": _with_ext(v, ext), "id": Path(v).stem, "texts": texts, "split": split, "paragraph": True}
        for v, texts in videos.items()
    ]


# --------------------------------------------------------------------------------------------- ActivityNet
def read_activitynet(path: PathLike, split: str | None = None, *, ext: str = ".mp4") -> list[Record]:
    """ActivityNet Captions (``train.json``, ``val_1.json``, ``val_2.json``): one paragraph per video.

    Sentences are stripped of the stray leading/trailing spaces the files contain. ``val_1`` is the
    paragraph-retrieval *test* split of the literature, so its split defaults to ``test``.
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "expected a JSON object keyed by video id")
    name = Path(path).stem.lower()
    split = split or ("train" if "train" in name else "test" if "val_1" in name else "val")
    out = []
    for vid, item in data.items():
        if not isinstance(item, dict) or not isinstance(item.get("sentences"), list):
            raise AnnotationError(path, f"video {vid!r} lacks a 'sentences' list")
        rec: Record = {
            "video": _with_ext(vid, ext),
            "id": vid,
            "texts": [str(s).strip() for s in item["sentences"]],
            "split": split,
            "paragraph": True,
        }
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------- LSMDC
def read_lsmdc(path: PathLike, split: str | None = None, *, ext: str = ".avi", layout: str = "nested") -> list[Record]:
    """LSMDC ``LSMDC16_annos_{training,val,test}.csv`` (tab-separated, no header).

    Columns: clip id, start/end (aligned), start/end (extracted), sentence. One record per clip. Videos
    are ``<movie>/<clip_id>.avi`` (``layout="nested"``, the distribution's layout; the movie is the clip
    id up to its last ``_``) or ``<clip_id>.avi`` (``layout="flat"``). The clip files already are the
    moments, so no start/end window is set.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    if layout not in ("nested", "flat"):
        raise ValueError(f"layout must be 'nested' or 'flat', got {layout!r}")
    split = split or _split_from_name(path, "test")
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 6:
                raise AnnotationError(path, f"expected 6 tab-separated columns, got {len(cols)}", lineno)
            clip_id, sentence = cols[0].strip(), "\t".join(cols[5:]).strip()
            movie = clip_id[: clip_id.rfind("_")] if "_" in clip_id else clip_id
            video = f"{movie}/{clip_id}" if layout == "nested" else clip_id
            out.append({"video": _with_ext(video, ext), "id": clip_id, "texts": [sentence], "split": split})
    return out


def _split_from_name(path: PathLike, default: str) -> str:
    name = Path(path).name.lower()
    if "train" in name:
        return "train"
    if "val" in name:
        return "val"
    if "test" in name:
        return "test"
    return default


# --------------------------------------------------------------------------------------------- generic
_VIDEO_KEYS = ("video", "video_path", "path", "video_id", "clip_id", "vid")
_TEXT_KEYS = ("texts", "text", "captions", "caption", "sentence", "sentences")


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in row and row[k] not in (None, "")), None)


def read_csv(path: PathLike, split: str | None = None, *, ext: str | None = None, delimiter: str = ",") -> list[Record]:
    """Generic CSV with a header: a video column (``video``/``path``/``video_id``...) and a text column
    (``text``/``caption``/``sentence``); rows of the same video are grouped in order. Optional columns
    ``split``, ``start``, ``end``, ``subtitle``."""
    rows = _read_csv_rows(path, delimiter)
    grouped: OrderedDict[tuple, Record] = OrderedDict()
    for i, row in enumerate(rows, 2):
        vk, tk = _pick(row, _VIDEO_KEYS), _pick(row, ("text", "caption", "sentence", "texts"))
        if vk is None or tk is None:
            raise AnnotationError(path, "need a video column (video/path/video_id) and a text column (text/caption/sentence)", i)
        start = float(row["start"]) if row.get("start") not in (None, "") else None
        end = float(row["end"]) if row.get("end") not in (None, "") else None
        key = (row[vk], start, end)
        rec = grouped.get(key)
        if rec is None:
            rec = {"video": _with_ext(row[vk], ext), "texts": [], "split": split or row.get("split") or "test"}
            if start is not None:
                rec["start"] = start
            if end is not None:
                rec["end"] = end
            if row.get("subtitle"):
                rec["subtitle"] = row["subtitle"]
            grouped[key] = rec
        rec["texts"].append(row[tk].strip())
    out = list(grouped.values())
    for i, rec in enumerate(out):
        try:
            validate_record(rec, f"row group {i}")
        except ValueError as exc:
            raise AnnotationError(path, str(exc)) from exc
    return out


def read_generic_jsonl(path: PathLike, split: str | None = None, *, ext: str | None = None) -> list[Record]:
    """Generic JSON lines: ``video``-like and ``text``-like keys (a string or a list) are normalised to the
    schema; schema keys (``start``, ``end``, ``subtitle``, ``caption``, ``paragraph``, ``id``) are kept."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnnotationError(path, f"invalid JSON ({exc.msg})", lineno) from exc
            if not isinstance(row, dict):
                raise AnnotationError(path, "expected a JSON object", lineno)
            vk = _pick(row, _VIDEO_KEYS)
            if vk is None:
                raise AnnotationError(path, "no video key (video/path/video_id/clip_id)", lineno)
            tk = _pick(row, _TEXT_KEYS)
            texts = row.get(tk) if tk else []
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            rec: Record = {"video": _with_ext(str(row[vk]), ext), "texts": [str(t) for t in texts]}
            rec["split"] = split or row.get("split") or "test"
            for key in ("id", "start", "end", "subtitle", "caption", "paragraph"):
                if key in row and not (key == "caption" and tk == "caption"):
                    rec[key] = row[key]
            try:
                out.append(validate_record(rec))
            except ValueError as exc:
                raise AnnotationError(path, str(exc).removeprefix("record: "), lineno) from exc
    return out


READERS: dict[str, Callable[..., list[Record]]] = {
    "msrvtt": read_msrvtt,
    "didemo": read_didemo,
    "activitynet": read_activitynet,
    "lsmdc": read_lsmdc,
    "csv": read_csv,
    "jsonl": read_generic_jsonl,
}


def read_annotations(dataset: str, path: PathLike, split: str | None = None, **kw: Any) -> list[Record]:
    """Read ``path`` with the reader for ``dataset`` (one of :data:`READERS`) → schema records."""
    key = dataset.lower().replace("-", "").replace("_", "")
    aliases = {"msrvtt": "msrvtt", "didemo": "didemo", "activitynet": "activitynet", "anet": "activitynet",
               "activitynetcaptions": "activitynet", "lsmdc": "lsmdc", "csv": "csv", "jsonl": "jsonl", "json": "jsonl"}
    if key not in aliases:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return READERS[aliases[key]](path, split, **kw)
