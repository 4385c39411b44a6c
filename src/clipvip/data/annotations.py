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
import io
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from clipvip.atomic import atomic_open

PathLike = str | os.PathLike[str]
Record = dict[str, Any]
SPLITS = ("train", "val", "test")
_MEDIA_SUFFIXES = {".mp4", ".m4v", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file (and line) and the reason."""

    def __init__(self, path: PathLike, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------------------------- JSONL I/O
#: The schema, key -> (expected type in words, check). Every other key is an error (a typo such as
#: ``"txt"`` must not be silently ignored).
def _is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _is_seconds(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _is_video_name(v: Any) -> bool:
    if not isinstance(v, str) or not v.strip() or "\x00" in v or v.endswith(("/", "\\")):
        return False
    name = v.replace("\\", "/").rsplit("/", 1)[-1]
    # ".mp4" alone is an extension without a name (an empty id run through an extension rule).
    return name not in (".", "..") and not (name.startswith(".") and name.count(".") == 1 and
                                             name.lower() in _MEDIA_SUFFIXES | _IMAGE_SUFFIXES)


SCHEMA: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "video": ("a non-empty relative or absolute file path with a file name (not just an extension)", _is_video_name),
    "texts": ("a list of non-empty strings (the captions)",
              lambda v: isinstance(v, list) and all(_is_text(t) for t in v)),
    "split": (f"one of {', '.join(SPLITS)}", lambda v: isinstance(v, str) and v in SPLITS),
    "id": ("a non-empty string", _is_text),
    "start": ("a finite number of seconds >= 0", _is_seconds),
    "end": ("a finite number of seconds >= 0", _is_seconds),
    "paragraph": ("true or false", lambda v: isinstance(v, bool)),
    "subtitle": ("a non-empty string", _is_text),
    "caption": ("a non-empty string, or null when the clip has no caption", lambda v: v is None or _is_text(v)),
    "twin": ("a non-empty string (a video id)", _is_text),
}
REQUIRED = ("video", "texts")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=repr, allow_nan=True)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)
    return f"{kind} {text}"


def validate_record(record: Any, where: str = "record") -> Record:
    """Check one schema record strictly, returning it; raises ``ValueError`` naming ``where``, the key, the
    expected type and what was found. Keys: :data:`SCHEMA` (``video`` and ``texts`` required, no others)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object (one record per line), got {_describe(record)}")
    for key in REQUIRED:
        if key not in record:
            raise ValueError(f"{where}: {key!r} is missing; expected {SCHEMA[key][0]}")
    unknown = [k for k in record if k not in SCHEMA]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; the schema's keys are {', '.join(SCHEMA)} "
                         f"(docs/data.md)")
    for key, value in record.items():
        what, ok = SCHEMA[key]
        if not ok(value):
            if key == "texts" and isinstance(value, list):
                bad = next(i for i, t in enumerate(value) if not _is_text(t))
                raise ValueError(f"{where}: 'texts'[{bad}]: expected a non-empty string (a caption), got "
                                 f"{_describe(value[bad])}")
            raise ValueError(f"{where}: {key!r}: expected {what}, got {_describe(value)}")
    if "start" in record and "end" in record and record["end"] < record["start"]:
        raise ValueError(f"{where}: 'end' ({record['end']}) is before 'start' ({record['start']})")
    return record


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r} (JSON keeps only the last one)")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (write null or a number)")


def _parse_json_line(path: Path, line: str, lineno: int) -> Any:
    """One JSON value, strictly: no duplicate keys, no NaN/Infinity (not standard JSON)."""
    try:
        return json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", lineno) from exc
    except ValueError as exc:
        raise AnnotationError(path, str(exc), lineno) from exc


def text_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file (a leading BOM is dropped); non-UTF-8 bytes raise an
    :class:`AnnotationError` naming the file, line and byte, instead of a bare ``UnicodeDecodeError``."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file not found" if not path.exists() else "not a regular file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AnnotationError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                            f"{exc.start + 1}); re-save the file as UTF-8", lineno) from None


def read_jsonl(path: PathLike) -> list[Record]:
    """Read and validate a schema JSONL file (blank lines ignored); errors name the file and line."""
    path = Path(path)
    records: list[Record] = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        rec = _parse_json_line(path, line, lineno)
        try:
            records.append(validate_record(rec, "record"))
        except ValueError as exc:
            raise AnnotationError(path, str(exc).removeprefix("record: "), lineno) from exc
    return records


def write_jsonl(records: Iterable[Record], path: PathLike) -> Path:
    """Write records atomically (:mod:`clipvip.atomic`), validating each against the schema first (nothing
    is written when one is invalid; NaN can never reach the file: the schema rejects it and ``json.dumps``
    runs with ``allow_nan=False``)."""
    path = Path(path)
    records = list(records)
    for i, rec in enumerate(records):
        try:
            validate_record(rec, f"record {i}")
        except ValueError as exc:
            raise ValueError(f"{path}: not written: {exc}") from exc
    with atomic_open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
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
    """A whole JSON file, strictly (UTF-8, no duplicate keys, no NaN); errors name the file and line."""
    path = Path(path)
    text = "".join(line for _, line in text_lines(path))
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from exc
    except ValueError as exc:
        raise AnnotationError(path, str(exc)) from exc


def _read_csv_rows(path: PathLike, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` pairs of a CSV with a header, strictly: every row has the header's number of fields,
    and no field spans lines (an unbalanced quote would otherwise swallow the rows up to the next quote).
    Errors name the file and the line."""
    path = Path(path)
    text = "".join(line for _, line in text_lines(path))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    prev_line = 0
    try:
        for fields in reader:
            first, prev_line = prev_line + 1, reader.line_num
            if reader.line_num != first:
                raise AnnotationError(path, f"a quoted field runs from line {first} to line {reader.line_num} "
                                            f"(an unbalanced quote?)", first)
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [h.strip() for h in fields]
                dup = next((h for h in header if header.count(h) > 1), None)
                if dup is not None:
                    raise AnnotationError(path, f"duplicate column {dup!r} in the header", first)
                continue
            if len(fields) != len(header):
                raise AnnotationError(path, f"expected {len(header)} fields ({delimiter.join(header)}), got "
                                            f"{len(fields)}", first)
            rows.append((first, dict(zip(header, fields))))
    except csv.Error as exc:
        first = prev_line + 1
        if reader.line_num > first:
            raise AnnotationError(path, f"a quoted field runs from line {first} to line {reader.line_num} (an "
                                        f"unbalanced quote?): malformed CSV ({exc})", first) from None
        raise AnnotationError(path, f"malformed CSV ({exc})", first) from None
    if header is None:
        raise AnnotationError(path, "empty CSV file (no header line)")
    return rows


def _text(path: PathLike, value: Any, what: str, line: int | None = None) -> str:
    """A caption from a dataset file: a string, stripped, non-empty; anything else (null, a list, a number,
    an object) is an error naming the file, the item and the type, never ``str(value)``."""
    if not isinstance(value, str):
        raise AnnotationError(path, f"{what}: expected a string (a caption), got {_describe(value)}", line)
    text = value.strip()
    if not text:
        raise AnnotationError(path, f"{what}: empty caption", line)
    return text


def _name(path: PathLike, value: Any, what: str, line: int | None = None) -> str:
    """A video id or file name from a dataset file: a non-empty string (ids given as integers are accepted)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(path, f"{what}: expected a non-empty video id or path, got {_describe(value)}", line)
    return value.strip()


def _with_ext(name: str, ext: str | None) -> str:
    """``name`` with its media extension replaced by ``ext`` (or ``ext`` appended: ids such as LSMDC's
    ``..._00.00.54.129`` contain dots that are not extensions)."""
    if not ext:
        return name
    ext = ext if ext.startswith(".") else "." + ext
    suffix = Path(name).suffix
    return name[: -len(suffix)] + ext if suffix.lower() in _MEDIA_SUFFIXES else name + ext


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
        if rows and "sentence" in rows[0][1]:
            out = []
            for line, row in rows:
                if "video_id" not in row:
                    raise AnnotationError(path, "expected a 'video_id' column", line)
                vid = _name(path, row["video_id"], "video_id", line)
                out.append({"video": _with_ext(vid, ext), "id": vid,
                            "texts": [_text(path, row["sentence"], "sentence", line)], "split": split or "test"})
            return out
        train_csv, path = path, None
        if data_json is None:
            raise AnnotationError(train_csv, "the 9k train csv lists ids only: also give MSRVTT_data.json, "
                                             "which holds the captions (--data-json; data_json= in Python)")
        path = Path(data_json)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        raise AnnotationError(path, "expected MSRVTT_data.json: an object with a 'sentences' list")
    if train_csv is not None:
        rows = _read_csv_rows(train_csv)
        if rows and "video_id" not in rows[0][1]:
            raise AnnotationError(train_csv, "expected a 'video_id' column", rows[0][0])
        ids = [_name(train_csv, r["video_id"], "video_id", line) for line, r in rows]
    else:
        videos = data.get("videos", [])
        if not isinstance(videos, list) or not all(isinstance(v, dict) for v in videos):
            raise AnnotationError(path, "'videos' must be a list of objects")
        ids = [_name(path, v.get("video_id"), f"videos[{i}].video_id") for i, v in enumerate(videos)
               if v.get("split") == "train"]
    dup = _first_duplicate(ids)
    if dup is not None:
        raise AnnotationError(train_csv or path, f"video {dup!r} is listed twice")
    captions: dict[str, list[str]] = {vid: [] for vid in ids}
    for i, sent in enumerate(data["sentences"]):
        if not isinstance(sent, dict) or "video_id" not in sent or "caption" not in sent:
            raise AnnotationError(path, f"sentences[{i}] lacks 'video_id' or 'caption'")
        vid = _name(path, sent["video_id"], f"sentences[{i}].video_id")
        if vid in captions:
            captions[vid].append(_text(path, sent["caption"], f"sentences[{i}].caption"))
    empty = [vid for vid, caps in captions.items() if not caps]
    if empty:
        raise AnnotationError(path, f"{len(empty)} train videos have no caption (first: {empty[0]})")
    return [{"video": _with_ext(vid, ext), "id": vid, "texts": caps, "split": split or "train"} for vid, caps in captions.items()]


def _first_duplicate(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


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
        video = _name(path, item["video"], f"item {i} 'video'")
        videos.setdefault(video, []).append(_text(path, item["description"], f"item {i} 'description'"))
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
        vid = _name(path, vid, "video id")
        rec: Record = {
            "video": _with_ext(vid, ext),
            "id": vid,
            "texts": [_text(path, s, f"video {vid!r} sentence {k}") for k, s in enumerate(item["sentences"])],
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
    if layout not in ("nested", "flat"):
        raise ValueError(f"layout must be 'nested' or 'flat', got {layout!r}")
    split = split or _split_from_name(path, "test")
    out = []
    for lineno, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 6:
            raise AnnotationError(path, f"expected 6 tab-separated columns, got {len(cols)}", lineno)
        clip_id = _name(path, cols[0], "clip id", lineno)
        sentence = _text(path, "\t".join(cols[5:]), "sentence", lineno)
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


def _seconds(path: PathLike, value: str, column: str, line: int) -> float | None:
    if value.strip() == "":
        return None
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not math.isfinite(x) or x < 0:
        raise AnnotationError(path, f"column {column!r}: expected a finite number of seconds >= 0, got {value!r}", line)
    return x


def read_csv(path: PathLike, split: str | None = None, *, ext: str | None = None, delimiter: str = ",") -> list[Record]:
    """Generic CSV with a header: a video column (``video``/``path``/``video_id``...) and a text column
    (``text``/``caption``/``sentence``); rows of the same video are grouped in order. Optional columns
    ``split``, ``start``, ``end``, ``subtitle``."""
    rows = _read_csv_rows(path, delimiter)
    grouped: OrderedDict[tuple, Record] = OrderedDict()
    for i, row in rows:
        vk = next((k for k in _VIDEO_KEYS if k in row), None)
        tk = next((k for k in ("text", "caption", "sentence", "texts") if k in row), None)
        if vk is None or tk is None:
            raise AnnotationError(path, "need a video column (video/path/video_id) and a text column (text/caption/sentence)", i)
        video = _name(path, row[vk], f"column {vk!r}", i)
        text = _text(path, row[tk], f"column {tk!r}", i)
        start = _seconds(path, row.get("start", ""), "start", i)
        end = _seconds(path, row.get("end", ""), "end", i)
        if start is not None and end is not None and end < start:
            raise AnnotationError(path, f"'end' ({end}) is before 'start' ({start})", i)
        row_split = split or row.get("split", "").strip() or "test"
        if row_split not in SPLITS:
            raise AnnotationError(path, f"column 'split': expected one of {', '.join(SPLITS)}, got {row_split!r}", i)
        key = (video, start, end)
        rec = grouped.get(key)
        if rec is None:
            rec = {"video": _with_ext(video, ext), "texts": [], "split": row_split}
            if start is not None:
                rec["start"] = start
            if end is not None:
                rec["end"] = end
            if row.get("subtitle", "").strip():
                rec["subtitle"] = row["subtitle"].strip()
            grouped[key] = rec
        rec["texts"].append(text)
        try:
            validate_record(rec, "row")
        except ValueError as exc:
            raise AnnotationError(path, str(exc).removeprefix("row: "), i) from exc
    return list(grouped.values())


def read_generic_jsonl(path: PathLike, split: str | None = None, *, ext: str | None = None) -> list[Record]:
    """Generic JSON lines: ``video``-like and ``text``-like keys (a string or a list of strings) are
    normalised to the schema; schema keys (``start``, ``end``, ``subtitle``, ``caption``, ``paragraph``,
    ``id``, ``twin``) are kept and checked. Wrong types (a null or numeric caption, an object where captions
    belong) are errors naming the file and line, never converted with ``str``."""
    path = Path(path)
    out = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        row = _parse_json_line(path, line, lineno)
        if not isinstance(row, dict):
            raise AnnotationError(path, f"expected a JSON object, got {_describe(row)}", lineno)
        vk = next((k for k in _VIDEO_KEYS if k in row), None)
        if vk is None:
            raise AnnotationError(path, "no video key (video/path/video_id/clip_id)", lineno)
        video = _name(path, row[vk], f"{vk!r}", lineno)
        tk = next((k for k in _TEXT_KEYS if k in row), None)
        value = row[tk] if tk else []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise AnnotationError(path, f"{tk!r}: expected a string or a list of strings, got {_describe(value)}",
                                  lineno)
        texts = [_text(path, t, f"{tk!r}[{k}]", lineno) for k, t in enumerate(value)]
        rec: Record = {"video": _with_ext(video, ext), "texts": texts}
        rec["split"] = split or row.get("split") or "test"
        for key in ("id", "start", "end", "subtitle", "caption", "paragraph", "twin"):
            if key in row and not (key == "caption" and tk == "caption"):
                rec[key] = str(row[key]) if key == "id" and isinstance(row[key], int) and not isinstance(row[key], bool) else row[key]
        try:
            out.append(validate_record(rec))
        except ValueError as exc:
            raise AnnotationError(path, str(exc).removeprefix("record: "), lineno) from exc
    return out


# --------------------------------------------------------------------------------------------- MSR-VTT splits
#: File names of the MSR-VTT splits, as the recipes ``configs/msrvtt_*.yaml`` expect them under ``data.root``.
MSRVTT_SPLIT_FILES = {"train": "train9k.jsonl", "val": "val.jsonl", "test": "test1ka.jsonl"}
#: The annotation files of the usual ``msrvtt_data`` folder (CLIP4Clip's download) that the splits need.
MSRVTT_SOURCES = {"train_csv": "MSRVTT_train.9k.csv", "test_csv": "MSRVTT_JSFUSION_test.csv",
                  "data_json": "MSRVTT_data.json"}
MSRVTT_VAL_SIZE = 500
MSRVTT_VAL_SEED = 0


def msrvtt_splits(train_csv: PathLike, test_csv: PathLike, data_json: PathLike, *,
                  val_size: int = MSRVTT_VAL_SIZE, seed: int = MSRVTT_VAL_SEED, ext: str = ".mp4"
                  ) -> dict[str, list[Record]]:
    """The three MSR-VTT splits the recipes use: ``{"train", "val", "test"}`` record lists.

    - ``val``: ``val_size`` videos drawn from the 9k training videos with ``numpy.random.default_rng(seed)``
      (a permutation; its first ``val_size`` entries, kept in file order), every caption of each (the
      multi-caption protocol), split ``val``. The literature has no MSR-VTT validation split: the reference
      selects checkpoints on the test set, which this avoids.
    - ``train``: the other ``9000 - val_size`` of the 9k videos, every caption (``train9k.jsonl``: named
      after the 9k split it comes from).
    - ``test``: the 1k-A test pairs (``MSRVTT_JSFUSION_test.csv``), one caption per video.

    Refuses a 9k list that shares a video with the test set, or a ``val_size`` that leaves no training video.
    """
    train = read_msrvtt(train_csv, data_json=data_json, ext=ext)
    test = read_msrvtt(test_csv, ext=ext)
    if not 0 < val_size < len(train):
        raise ValueError(f"val_size must be between 1 and {len(train) - 1} (the train videos), got {val_size}")
    shared = {r["id"] for r in train} & {r["id"] for r in test}
    if shared:
        raise AnnotationError(test_csv, f"{len(shared)} test videos are also in {train_csv} "
                                        f"(first: {sorted(shared)[0]}): not the 9k / 1k-A splits")
    import numpy as np

    held_out = set(np.random.default_rng(seed).permutation(len(train))[:val_size].tolist())
    return {
        "train": [r for i, r in enumerate(train) if i not in held_out],
        "val": [dict(r, split="val") for i, r in enumerate(train) if i in held_out],
        "test": test,
    }


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
