"""Export the two towers for deployment: ONNX files (and ``torch.export`` programs) with a dynamic batch.

People who deploy CLIP run the towers separately, often outside Python (openai/CLIP#122,
clip-as-service#878): videos are embedded offline by one process, queries online by another. So each tower
is its own graph:

* ``video.onnx``: ``pixel_values`` float32 ``[batch, T, 3, S, S]`` (CLIP-normalised) → ``embeddings``
  float32 ``[batch, D]``, L2-normalised. ``T`` is fixed at export (the temporal table is resized to it once);
  ``batch`` is dynamic.
* ``text.onnx``: ``input_ids`` and ``attention_mask`` int64 ``[batch, context]`` → ``embeddings``
  ``[batch, D]``, L2-normalised, pooled at the first EOT (pad = EOT).
* ``preprocessing.json``: everything a caller must reproduce to feed them (frame count and sampling, image
  size, resize mode, mean/std, tokenizer files and rules, context length, embedding size), and what was
  verified.
* ``tokenizer/``: the tokenizer's files, when the model has one.

Both graphs come from ``torch.export`` with a symbolic batch dimension (traced at batch 2, so that no size-1
dimension gets specialised), then the dynamo-based ONNX exporter. Before anything is reported as done, each
ONNX file is run by onnxruntime at batch sizes other than the traced one and compared with eager PyTorch: an
exporter that silently pinned the batch, or changed the numbers, fails the export instead of the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clipvip.atomic import follow_umask

log = logging.getLogger(__name__)

FORMAT = "clipvip-export/1"
SPEC_FILE = "preprocessing.json"
#: Batch size the graphs are traced at: 2, because torch.export specialises a dimension traced at size 1.
TRACE_BATCH = 2
#: Batch sizes the ONNX files are checked at, all different from :data:`TRACE_BATCH`.
VERIFY_BATCHES = (1, 3)
DEFAULT_ATOL = 1e-4
EXTRA_HINT = "install the export extra: pip install 'clipvip[export]' (onnx, onnxscript, onnxruntime)"


class ExportError(RuntimeError):
    """The export failed or did not verify; the message says which tower and why."""


# ---------------------------------------------------------------------- the towers as modules
class VideoTower(nn.Module):
    """``pixel_values [B, T, 3, S, S]`` → L2-normalised ``[B, D]``, as :meth:`CLIPViP.encode_video`; holds only
    the video tower and its projection, so an exported program carries no text weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return nn.functional.normalize(self.visual_projection(self.vision_model(pixel_values)), dim=-1)


class TextTower(nn.Module):
    """``input_ids, attention_mask [B, S]`` → L2-normalised ``[B, D]``, as :meth:`CLIPViP.encode_text`
    without its eager token-id check (the tokenizer recorded beside the graph bounds the ids)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return nn.functional.normalize(self.text_projection(self.text_model(input_ids, attention_mask)), dim=-1)


def example_inputs(model: nn.Module, tower: str, batch: int, *, frames: int, context_length: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Random inputs of the right shapes and dtypes: normal pixels; token ids in the vocabulary, a start token,
    a random number of real tokens, an EOT, EOT padding and the matching attention mask (as tokenize makes)."""
    cfg = model.config
    if tower == "video":
        s = cfg.vision.image_size
        return (torch.randn(batch, frames, 3, s, s, generator=generator),)
    if tower != "text":
        raise ValueError(f"tower must be 'video' or 'text', got {tower!r}")
    vocab = cfg.text.vocab_size
    eot = vocab - 1  # CLIP's EOT is the largest id; pooling takes the first maximum
    ids = torch.randint(0, eot, (batch, context_length), generator=generator)
    mask = torch.zeros(batch, context_length, dtype=torch.int64)
    for row in range(batch):
        n = int(torch.randint(2, context_length + 1, (1,), generator=generator))  # real tokens incl. EOT
        ids[row, n - 1:] = eot
        mask[row, :n] = 1
    return ids, mask


def _towers(model: nn.Module) -> dict[str, nn.Module]:
    return {"video": VideoTower(model).eval(), "text": TextTower(model).eval()}


def _dynamic_shapes(tower: str) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    return ({0: batch},) if tower == "video" else ({0: batch}, {0: batch})


def export_program(model: nn.Module, tower: str, *, frames: int, context_length: int) -> torch.export.ExportedProgram:
    """``torch.export`` one tower (``"video"`` or ``"text"``) with a dynamic batch dimension.

    The model must be in eval mode and on the CPU (export traces the module as it is)."""
    module = _towers(model)[tower]
    args = example_inputs(model, tower, TRACE_BATCH, frames=frames, context_length=context_length,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(tower))


# ---------------------------------------------------------------------- ONNX
def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime`` (and check ``onnxscript``, which the exporter needs), or raise
    :class:`ExportError` saying how to install them."""
    missing = []
    modules = {}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            modules[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed: {EXTRA_HINT}")
    return modules["onnx"], modules["onnxruntime"]


def input_names(tower: str) -> list[str]:
    return ["pixel_values"] if tower == "video" else ["input_ids", "attention_mask"]


def export_onnx(program: torch.export.ExportedProgram, tower: str, path: Path, opset: int | None = None) -> list[Path]:
    """Write ``program`` as an ONNX file at ``path`` (with the dynamic batch named ``batch``); returns the
    files written (the ``.onnx`` and, for large models, its external-data file)."""
    require_onnx()
    before = set(path.parent.iterdir())
    # The exporter's own chatter ("torchvision is not installed", onnxscript's per-node optimiser notes at
    # INFO, which the CLI's logging level would print by the thousand) is not for our users.
    noisy = [logging.getLogger(name) for name in ("torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations during export
            onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=input_names(tower),
                                             output_names=["embeddings"], opset_version=opset, verbose=False)
            onnx_program.save(str(path))
    finally:
        for logger, level in zip(noisy, levels):
            logger.setLevel(level)
    return sorted(set(path.parent.iterdir()) - before)


@dataclass
class Verification:
    """Largest absolute difference between onnxruntime and eager PyTorch, per batch size checked."""

    tower: str
    max_abs_diff: dict[int, float] = field(default_factory=dict)
    atol: float = DEFAULT_ATOL

    @property
    def ok(self) -> bool:
        return all(d <= self.atol for d in self.max_abs_diff.values())


def verify_onnx(model: nn.Module, tower: str, path: Path, *, frames: int, context_length: int,
                batches: Sequence[int] = VERIFY_BATCHES, atol: float = DEFAULT_ATOL, seed: int = 0) -> Verification:
    """Run ``path`` in onnxruntime on random inputs at each of ``batches`` and compare with eager PyTorch.

    Raises :class:`ExportError` when onnxruntime refuses an input (a graph whose batch was silently fixed
    fails here) or a difference exceeds ``atol``."""
    _, ort = require_onnx()
    eager = model.encode_video if tower == "video" else model.encode_text
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot load the exported {tower} tower: {exc}") from exc
    result = Verification(tower, atol=atol)
    gen = torch.Generator().manual_seed(seed)
    for batch in batches:
        args = example_inputs(model, tower, batch, frames=frames, context_length=context_length, generator=gen)
        feeds = {name: a.numpy() for name, a in zip(input_names(tower), args)}
        try:
            (got,) = session.run(["embeddings"], feeds)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{path}: onnxruntime rejected a batch of {batch} for the {tower} tower (was the "
                              f"batch dimension exported as static?): {exc}") from exc
        with torch.no_grad():
            want = eager(*args)
        diff = float((torch.from_numpy(got) - want).abs().max())
        result.max_abs_diff[batch] = diff
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"{path}: the ONNX {tower} tower differs from PyTorch by {diff:.3g} at batch "
                              f"{batch} (allowed {atol:g})")
    return result


# ---------------------------------------------------------------------- preprocessing spec
def preprocessing_spec(model: nn.Module, *, frames: int, context_length: int, tokenizer: Any = None,
                       tokenizer_spec: str | None = None, source: str | None = None, model_id: str | None = None,
                       transform: Any = None) -> dict[str, Any]:
    """What a caller must do to the raw video and text before the graphs, as plain JSON."""
    from clipvip.data.transforms import CLIP_MEAN, CLIP_STD
    from clipvip.tokenizer import END, START

    cfg = model.config
    mode = getattr(transform, "mode", "squash")
    video = {
        "input": "pixel_values",
        "shape": ["batch", frames, 3, cfg.vision.image_size, cfg.vision.image_size],
        "dtype": "float32",
        "frames": frames,
        "frame_sampling": "uniform: indices linspace(0, N-1, frames) truncated to int over the clip's N decoded "
                          "frames (a 1-frame export takes the middle frame N // 2)",
        "image_size": cfg.vision.image_size,
        "resize": {"mode": mode,
                   "interpolation": "bicubic",
                   "align_corners": False,
                   "antialias": bool(getattr(transform, "antialias", False)),
                   "clamp": bool(getattr(transform, "clamp", False)),
                   "description": ("squash: resize to image_size x image_size ignoring the aspect ratio"
                                   if mode == "squash" else
                                   "crop: shorter side to image_size, aspect kept, centre crop")},
        "scale": "uint8 RGB / 255, channels first",
        "mean": list(getattr(transform, "mean", torch.tensor(CLIP_MEAN)).flatten().tolist()),
        "std": list(getattr(transform, "std", torch.tensor(CLIP_STD)).flatten().tolist()),
    }
    text: dict[str, Any] = {
        "inputs": ["input_ids", "attention_mask"],
        "shape": ["batch", context_length],
        "dtype": "int64",
        "context_length": context_length,
        "vocab_size": cfg.text.vocab_size,
        "rules": ("CLIP byte-level BPE after OpenAI's clean-up (HTML entities unescaped twice, NFC, whitespace "
                  "runs collapsed, lower case); <|startoftext|> first, <|endoftext|> (EOT) last; pad to "
                  "context_length with the EOT id; a longer text is cut so that its last token is EOT; "
                  "attention_mask is 1 up to and including the first EOT, 0 after. clipvip.tokenizer.tokenize "
                  "does exactly this."),
        "tokenizer": None,
    }
    if tokenizer is not None:
        text["tokenizer"] = {
            "files": "tokenizer/",
            "spec": tokenizer_spec,
            "start_token": START, "start_id": int(tokenizer.convert_tokens_to_ids(START)),
            "eot_token": END, "eot_id": int(tokenizer.convert_tokens_to_ids(END)),
            "pad_id": int(tokenizer.convert_tokens_to_ids(END)),
            "size": len(tokenizer),
        }
    return {
        "format": FORMAT,
        "source": source,
        "model_id": model_id,
        "embedding_dim": int(cfg.projection_dim),
        "normalized": True,
        "similarity": "cosine = dot product of the (unit-norm) embeddings",
        "temperature": float(model.logit_scale.detach().exp()),  # exp(logit_scale): logits = temperature · cosine
        "attention": cfg.attention,
        "video": {"file": "video.onnx", **video},
        "text": {"file": "text.onnx", **text},
    }


def check_tokenizer(tokenizer: Any, vocab_size: int, where: str = "tokenizer") -> None:
    """The tokenizer/model boundary: every id the tokenizer can produce must be below the model's vocabulary
    size (the graphs do not check ids; an out-of-range id would index past the embedding table)."""
    if tokenizer is not None and len(tokenizer) > vocab_size:
        raise ExportError(f"{where}: token ids must be in [0, {vocab_size}), but the tokenizer has {len(tokenizer)} "
                          f"tokens: tokenizer and model disagree")


# ---------------------------------------------------------------------- the whole export
@dataclass
class ExportResult:
    out_dir: Path
    files: list[Path]
    verifications: list[Verification]
    spec: dict[str, Any]


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace anything this command did not make: ``out_dir`` may be absent, empty, or (with
    ``overwrite``) a previous clipvip export."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        previous = out_dir / SPEC_FILE
        ours = False
        if previous.is_file():
            try:
                ours = json.loads(previous.read_text(encoding="utf-8")).get("format") == FORMAT
            except (OSError, ValueError, AttributeError):
                ours = False
        if not ours:
            raise ExportError(f"{out_dir}: directory is not empty and is not a clipvip export; choose another --out")
        if not overwrite:
            raise ExportError(f"{out_dir}: holds a previous export; pass --overwrite to replace it")


def export_model(model: nn.Module, out_dir: str | Path, *, frames: int, context_length: int | None = None,
                 tokenizer: Any = None, tokenizer_spec: str | None = None, source: str | None = None,
                 model_id: str | None = None, transform: Any = None, opset: int | None = None,
                 atol: float = DEFAULT_ATOL, overwrite: bool = False, save_programs: bool = False,
                 progress: Any = None) -> ExportResult:
    """Export both towers of ``model`` into ``out_dir`` and verify them (module docstring).

    Everything is written into a temporary sibling directory first and moved into place only after both ONNX
    files verified, so a failed or interrupted export leaves no half-written ``out_dir``. ``save_programs``
    also writes the ``torch.export`` programs as ``video.pt2`` / ``text.pt2`` (``torch.export.load``).
    ``progress`` is called with one line per step."""
    require_onnx()
    say = progress or (lambda msg: log.info("%s", msg))
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    cfg = model.config
    context_length = int(context_length or cfg.text.max_position_embeddings)
    if frames < 1:
        raise ExportError(f"frames must be >= 1, got {frames}")
    if not 2 <= context_length <= cfg.text.max_position_embeddings:
        raise ExportError(f"context length must be in [2, {cfg.text.max_position_embeddings}], got {context_length}")
    check_tokenizer(tokenizer, cfg.text.vocab_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if device.type != "cpu" or dtype != torch.float32:
        raise ExportError(f"export a float32 CPU model (got {dtype} on {device}): the ONNX graphs and their "
                          f"verification run in float32 on the CPU")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        verifications = []
        steps = 2 * (3 if save_programs else 2)
        step = 0
        for tower in ("video", "text"):
            step += 1
            say(f"[{step}/{steps}] torch.export of the {tower} tower (dynamic batch)")
            try:
                program = export_program(model, tower, frames=frames, context_length=context_length)
            except Exception as exc:  # noqa: BLE001 - name the tower in the message
                raise ExportError(f"torch.export failed for the {tower} tower: {type(exc).__name__}: {exc}") from exc
            if save_programs:
                step += 1
                say(f"[{step}/{steps}] saving {tower}.pt2")
                torch.export.save(program, str(tmp / f"{tower}.pt2"))
            step += 1
            say(f"[{step}/{steps}] ONNX export of the {tower} tower + onnxruntime check at batch "
                f"{', '.join(map(str, VERIFY_BATCHES))}")
            try:
                export_onnx(program, tower, tmp / f"{tower}.onnx", opset)
            except Exception as exc:  # noqa: BLE001
                raise ExportError(f"ONNX export failed for the {tower} tower: {type(exc).__name__}: {exc}") from exc
            check = verify_onnx(model, tower, tmp / f"{tower}.onnx", frames=frames, context_length=context_length,
                                atol=atol)
            verifications.append(check)
        spec = preprocessing_spec(model, frames=frames, context_length=context_length, tokenizer=tokenizer,
                                  tokenizer_spec=tokenizer_spec, source=source, model_id=model_id, transform=transform)
        spec["verified"] = {
            "runtime": f"onnxruntime {require_onnx()[1].__version__}",
            "traced_batch": TRACE_BATCH,
            "atol": atol,
            **{v.tower: {str(b): d for b, d in v.max_abs_diff.items()} for v in verifications},
        }
        spec["torch"] = torch.__version__
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        follow_umask(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return ExportResult(out_dir, files, verifications, spec)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into place; a previous export (already checked to be ours) is replaced."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
