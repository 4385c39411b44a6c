"""Auxiliary captions (the paper's C): caption the middle frame of every clip with an image captioner.

CLIP-ViP's post-pretraining pairs each clip's subtitle S with a caption C of its middle frame F, written by
an image captioner (OFA in the paper, reference §3 and §6.2), to narrow the gap between ASR text and the
short descriptive sentences of downstream datasets. Users with their own pretraining videos need the same
captions, so this module makes them:

* the frame is the one the pretraining dataset uses as F (:func:`middle_frame`), so a caption describes
  exactly the image it is contrasted with in L(F<->C);
* a captioner is either a transformers image-captioning model (name or local directory: BLIP, GIT,
  VisionEncoderDecoder, ... anything ``AutoModelForImageTextToText`` loads and that generates from
  ``pixel_values`` alone) or a Python callable ``module:function`` that takes a list of RGB
  ``PIL.Image.Image`` and returns one string per image;
* captions keep at most 16 words (OFA-style short captions; longer ones drift from the frame);
* output is one JSON line per clip, appended and flushed per batch, so a killed run leaves valid JSONL and a
  re-run skips the clips already captioned; unreadable clips are reported with their reasons, never
  silently dropped, and are retried on the next run.

The output is keyed by the input's ``video`` value (plus ``start``/``end`` when the input has them), so
:func:`merge_captions` can copy the captions into a pretraining JSONL as its ``caption`` field.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "MAX_WORDS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "CaptionReport",
    "truncate_words",
    "middle_frame",
    "list_clips",
    "load_captioner",
    "caption_clips",
    "read_captions",
    "merge_captions",
]

MAX_WORDS = 16
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".ogv")

Captioner = Callable[[list[Any]], list[str]]


# ---------------------------------------------------------------------------------------------- text
def truncate_words(text: str, max_words: int = MAX_WORDS) -> str:
    """Collapse whitespace (captioners emit newlines and doubled spaces) and keep the first ``max_words``."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    return " ".join(str(text).split()[:max_words])


# ---------------------------------------------------------------------------------------------- frames
def middle_frame(path: str | os.PathLike[str], start: float | None = None, end: float | None = None
                 ) -> np.ndarray:
    """The middle frame of a clip as uint8 ``[H, W, 3]``: the pretraining dataset's F frame.

    Delegates to :func:`clipvip.data.video.load_clip` with ``with_middle=True`` (frame ``N // 2`` of the
    ``N`` frames of the window ``[start, end]``, reference §6.2), the very function the pretraining dataset
    uses, so a caption always describes the image it is contrasted with in L(F<->C). Raises
    :class:`clipvip.data.VideoDecodeError` naming the file and the reason.
    """
    from clipvip.data import VideoDecodeError
    from clipvip.data.video import load_clip

    path = str(path)
    try:
        _, middle = load_clip(path, num_frames=1, sampling="uniform", start=start, end=end, with_middle=True)
    except VideoDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if middle is None or middle.shape[0] != 1:
        raise VideoDecodeError(path, "decoder returned no middle frame")
    return middle[0].numpy()


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Clip:
    """One clip to caption: its output key (``video`` value, ``start``, ``end``) and the file to read."""

    video: str
    path: str
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> tuple[str, float | None, float | None]:
        return (self.video, self.start, self.end)


def _key_of(record: dict[str, Any]) -> tuple[str, float | None, float | None]:
    start = record.get("start")
    end = record.get("end")
    return (str(record["video"]), None if start is None else float(start), None if end is None else float(end))


def list_clips(source: str | os.PathLike[str], video_root: str | os.PathLike[str] | None = None) -> list[Clip]:
    """Clips from a video directory (searched recursively) or a dataset JSONL (its ``video`` field).

    For a directory the key is the path relative to it (POSIX separators), which is what a pretraining
    JSONL written with that directory as ``video_root`` holds. For a JSONL the key is the ``video`` value
    itself, and the file is found under ``video_root`` (default: the JSONL's folder). Records that repeat a
    clip are listed once.
    """
    src = Path(source)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        return [Clip(video=p.relative_to(src).as_posix(), path=str(p)) for p in files]
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such video directory or JSONL file")
    root = Path(video_root) if video_root is not None else src.parent
    clips: list[Clip] = []
    seen: set[tuple[str, float | None, float | None]] = set()
    for lineno, record in _read_jsonl_lines(src):
        if not isinstance(record, dict) or "video" not in record:
            raise ValueError(f"{src}:{lineno}: a record needs a 'video' field")
        try:
            key = _key_of(record)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{src}:{lineno}: bad 'start'/'end': {exc}") from None
        if key in seen:
            continue
        seen.add(key)
        video = key[0]
        path = Path(video) if os.path.isabs(video) else root / video
        clips.append(Clip(video=video, path=str(path), start=key[1], end=key[2]))
    return clips


def _read_jsonl_lines(path: Path) -> Iterable[tuple[int, Any]]:
    """``(line number, parsed object)`` for each non-blank line; a bad line raises naming file and line."""
    from clipvip.data.annotations import text_lines  # names the file and line of non-UTF-8 bytes

    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None


# ---------------------------------------------------------------------------------------------- captioners
def _looks_like_callable_spec(spec: str) -> bool:
    if os.path.exists(spec) or ":" not in spec:
        return False
    module, _, func = spec.rpartition(":")
    return bool(module) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", func) is not None


def _load_callable(spec: str) -> Captioner:
    """``package.module:function`` or ``path/to/file.py:function`` → the function."""
    module_name, _, func_name = spec.rpartition(":")
    if module_name.endswith(".py"):
        file = Path(module_name)
        if not file.is_file():
            raise ValueError(f"captioner {spec!r}: no such file {file}")
        mod_spec = importlib.util.spec_from_file_location(f"_clipvip_captioner_{file.stem}", file)
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"captioner {spec!r}: cannot import {file}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"captioner {spec!r}: cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in func_name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"captioner {spec!r}: {module_name!r} has no attribute {func_name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"captioner {spec!r}: {func_name!r} is not callable")
    return obj


class TransformersCaptioner:
    """A transformers image-to-text model (BLIP, GIT, VisionEncoderDecoder...) as a batch captioner.

    transformers 5 dropped the ``image-to-text`` pipeline (its successor, ``image-text-to-text``, is built
    around chat prompts), so the model is driven directly: processor → ``pixel_values`` → ``generate`` →
    decode. Greedy decoding by default so captions are reproducible.
    """

    def __init__(self, spec: str, device: str | None = None, max_new_tokens: int = 30, num_beams: int = 1,
                 prompt: str | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        from clipvip.tokenizer import resolve_hub_name

        if not Path(spec).is_dir():
            # A hub name: the cached copy, or an immediate error when offline / unreachable (transformers
            # alone retries for tens of seconds and repeats its warnings).
            try:
                spec = resolve_hub_name(spec, "captioner", needs=("config.json",))
            except FileNotFoundError as exc:
                raise ValueError(f"captioner {spec!r}: {exc}") from None
        try:
            config = AutoConfig.from_pretrained(spec)
        except Exception as exc:  # noqa: BLE001 - name the spec and the reason in one line
            raise ValueError(f"captioner {spec!r}: not a transformers model name or directory ({exc})") from None
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(spec)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"captioner {spec!r}: model type {config.model_type!r} cannot be loaded as an image-to-text "
                f"model by transformers ({exc})"
            ) from None
        self.image_processor, self.tokenizer = _load_processors(spec)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.prompt = prompt
        self.spec = spec

    def __call__(self, images: list[Any]) -> list[str]:
        import torch

        pixel = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        kwargs: dict[str, Any] = {
            "pixel_values": pixel, "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
            "do_sample": False,
        }
        if self.prompt:
            enc = self.tokenizer([self.prompt] * len(images), return_tensors="pt")
            kwargs["input_ids"] = enc["input_ids"].to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        if self.prompt:
            texts = [t[len(self.prompt):] if t.startswith(self.prompt) else t for t in texts]
        return [t.strip() for t in texts]


def _load_processors(spec: str) -> tuple[Any, Any]:
    """The image processor and the tokenizer of a captioning model, whether saved as one processor or two."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    image_processor = tokenizer = None
    try:
        proc = AutoProcessor.from_pretrained(spec)
        image_processor = getattr(proc, "image_processor", None)
        tokenizer = getattr(proc, "tokenizer", None)
        if image_processor is None and hasattr(proc, "preprocess") and not hasattr(proc, "batch_decode"):
            image_processor = proc
        if tokenizer is None and hasattr(proc, "batch_decode") and image_processor is not proc:
            tokenizer = proc
    except Exception:  # noqa: BLE001 - fall back to loading the two halves separately
        pass
    if image_processor is None:
        try:
            image_processor = AutoImageProcessor.from_pretrained(spec)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"captioner {spec!r}: no image processor found ({exc})") from None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"captioner {spec!r}: no tokenizer found ({exc})") from None
    return image_processor, tokenizer


def load_captioner(spec: str | Captioner, device: str | None = None, max_new_tokens: int = 30,
                   num_beams: int = 1, prompt: str | None = None) -> Captioner:
    """A batch captioner from a spec: a callable, ``module:function``, ``file.py:function``, or a model.

    Callables receive a list of RGB ``PIL.Image.Image`` and must return one string per image.
    """
    if callable(spec):
        return spec
    spec = str(spec)
    if _looks_like_callable_spec(spec):
        return _load_callable(spec)
    return TransformersCaptioner(spec, device=device, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                 prompt=prompt)


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class CaptionReport:
    """What a captioning run did: lines written now, clips skipped as already done, clips that failed."""

    written: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0

    def summary(self) -> str:
        return (f"{self.total} clips: {self.written} captioned, {self.skipped} already done, "
                f"{len(self.failures)} unreadable")


def read_captions(path: str | os.PathLike[str]) -> dict[tuple[str, float | None, float | None], str]:
    """Captions already in an output file, keyed by ``(video, start, end)``. A torn last line is ignored."""
    p = Path(path)
    done: dict[tuple[str, float | None, float | None], str] = {}
    if not p.exists():
        return done
    try:
        lines = p.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text (byte {exc.start}); is this a captions file?") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):  # last line without newline: a write cut short by a kill
                continue
            raise ValueError(f"{p}:{lineno}: not valid JSON; is this a captions file?") from None
        if not isinstance(record, dict) or "video" not in record or "caption" not in record:
            raise ValueError(f"{p}:{lineno}: a captions line needs 'video' and 'caption'")
        done[_key_of(record)] = record["caption"]
    return done


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) so that appended lines start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)
        log.warning("%s: removed a torn last line left by an interrupted run", path)


def caption_clips(
    source: str | os.PathLike[str] | Sequence[Clip],
    captioner: Captioner | str,
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    max_words: int = MAX_WORDS,
    video_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    frame_loader: Callable[[str, float | None, float | None], np.ndarray] | None = None,
) -> CaptionReport:
    """Caption the middle frame of every clip of ``source`` into ``out_path`` (JSONL, appended, resumable).

    Each output line is ``{"video", ["start", "end",] "caption"}``. Lines are written per batch with one
    ``write`` + ``flush`` + ``fsync``, and a torn last line from a killed run is cut on the next start, so the
    file stays valid JSONL. Failures (unreadable clips) are returned and logged, and also written next to
    the output as ``<out>.failures.jsonl`` (replaced on each run) so a long run's problems are auditable.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from clipvip.data import VideoDecodeError

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clips = list(source) if not isinstance(source, (str, os.PathLike)) else list_clips(source, video_root)
    cap = load_captioner(captioner) if isinstance(captioner, str) else captioner
    load = frame_loader or (lambda p, s, e: middle_frame(p, s, e))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_captions(out)
    _repair_tail(out)
    report = CaptionReport(total=len(clips))
    todo = [c for c in clips if c.key not in done]
    report.skipped = len(clips) - len(todo)

    bar = tqdm(total=len(todo), desc="captioning", unit="clip", disable=not progress)
    with open(out, "a", encoding="utf-8") as fh:
        batch: list[tuple[Clip, Any]] = []

        def flush_batch() -> None:
            if not batch:
                return
            texts = cap([img for _, img in batch])
            if isinstance(texts, str) or len(texts) != len(batch):
                raise ValueError(f"captioner returned {len(texts)} captions for {len(batch)} images")
            lines = []
            for (clip, _), text in zip(batch, texts):
                record: dict[str, Any] = {"video": clip.video}
                if clip.start is not None:
                    record["start"] = clip.start
                if clip.end is not None:
                    record["end"] = clip.end
                record["caption"] = truncate_words(text, max_words)
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            report.written += len(batch)
            bar.update(len(batch))
            batch.clear()

        for clip in todo:
            try:
                frame = load(clip.path, clip.start, clip.end)
            except VideoDecodeError as exc:
                report.failures.append((clip.path, exc.reason))
                log.warning("cannot read %s: %s", clip.path, exc.reason)
                bar.update(1)
                continue
            batch.append((clip, Image.fromarray(np.ascontiguousarray(frame)).convert("RGB")))
            if len(batch) >= batch_size:
                flush_batch()
        flush_batch()
    bar.close()
    _write_failures(out, report.failures)
    return report


def _write_failures(out: Path, failures: list[tuple[str, str]]) -> None:
    side = out.with_name(out.name + ".failures.jsonl")
    if not failures:
        if side.exists():
            side.unlink()
        return
    atomic_write_text(side, "".join(json.dumps({"path": p, "reason": r}) + "\n" for p, r in failures))


# ---------------------------------------------------------------------------------------------- merging
def merge_captions(
    pretrain_jsonl: str | os.PathLike[str],
    captions_jsonl: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> dict[str, int]:
    """Copy captions into a pretraining JSONL as its ``caption`` field (the dataset's C), written atomically.

    Records are matched on ``(video, start, end)``; a record without a caption stays without one (the
    pretraining dataset then treats C as missing). Existing captions are kept unless ``overwrite``.
    Returns counts ``{"records", "captioned", "missing"}``.
    """
    if not Path(captions_jsonl).is_file():
        raise FileNotFoundError(f"{captions_jsonl}: no such captions file")
    captions = read_captions(captions_jsonl)
    src = Path(pretrain_jsonl)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such pretraining JSONL")
    lines: list[str] = []
    counts = {"records": 0, "captioned": 0, "missing": 0}
    for lineno, record in _read_jsonl_lines(src):
        if not isinstance(record, dict) or "video" not in record:
            raise ValueError(f"{src}:{lineno}: a record needs a 'video' field")
        counts["records"] += 1
        key = _key_of(record)
        if key in captions and (overwrite or not record.get("caption")):
            record["caption"] = captions[key]
        if record.get("caption"):
            counts["captioned"] += 1
        else:
            counts["missing"] += 1
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(Path(out_path), "".join(lines))
    return counts
