"""``clipvip.load(spec)``: one call from "something that names weights" to ``encode_video_files`` / ``encode_texts``.

Users asked for exactly this in every CLIP video repository (reference §9, XPretrain #24): give me features
of *my* videos and *my* sentences without writing a data loader. The pipeline bundles the model, the
tokenizer and the evaluation-time video transform (uniform sampling, squash resize, CLIP normalisation,
reference §6.4) so that the index, search, eval and analysis code all embed videos the same way.

``spec`` may be:

* a directory in our format (``config.json`` + ``model.safetensors`` [+ tokenizer files]);
* an official CLIP-ViP ``.pt`` checkpoint (tokenizer: ``tokenizer=`` or OpenAI CLIP's from the hub);
* a transformers CLIP hub name or local directory (zero-shot CLIP-ViP initialised from CLIP);
* a registry name such as ``clipvip-tiny`` (random init with a fixed seed, for tests; ``tokenizer=`` needed).

``model_id`` is a fingerprint of everything that decides an embedding (weights, config, frames, image
size, and the inference dtype when it is not fp32), so the search index can refuse to mix vectors from two
different models, or from the same model run in fp32 and in bf16.

``dtype="bf16"`` encodes under bf16 *autocast* rather than with bf16 weights: matmuls and convolutions run
in bf16 (where AMX / AVX512-BF16 or a GPU make them fast) while LayerNorm, softmax and the final L2
normalisation stay in fp32, which keeps embeddings within cosine 0.999 of fp32 (tests/test_dtype.py); the
fp32 weights stay the one copy that is hashed, saved and shared with fp32 callers. Embeddings are always
returned as float32, L2-normalised. ``dtype="auto"`` picks bf16 only where it is fast (clipvip.device).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

OFFICIAL_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
DEFAULT_CLIP_TOKENIZER = "openai/clip-vit-base-patch32"
MAX_QUERY_CHARS = 1000


@dataclass
class EncodeResult:
    """Embeddings of the files that decoded, in input order, plus the ones that did not and why."""

    embeddings: torch.Tensor  # [N, D] float32 on the CPU, L2-normalised
    paths: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


class VideoTextPipeline:
    """Model + tokenizer + video transform, ready to embed files and sentences.

    Every model call goes through one lock: the model is not thread-safe (``set_attention`` mutates it, and
    concurrent CPU forward passes only fight over the same cores), so a threaded HTTP server can share one
    pipeline safely.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        num_frames: int,
        image_size: int,
        max_length: int,
        model_id: str,
        spec: str,
        tokenizer_spec: str | None = None,
        device: str | torch.device = "cpu",
        transform: Any = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.max_length = int(max_length)
        self.model_id = model_id
        self.spec = spec
        self.tokenizer_spec = tokenizer_spec
        self.device = torch.device(device)
        self.dtype = dtype
        if transform is None:
            from clipvip.data.transforms import VideoTransform

            transform = VideoTransform(self.image_size)
        self.transform = transform
        self.max_query_chars = MAX_QUERY_CHARS
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ videos
    @property
    def dim(self) -> int:
        """Size of the joint embedding space."""
        return int(self.model.config.projection_dim)

    def decode(self, path: str | Path, start: float | None = None, end: float | None = None) -> torch.Tensor:
        """Uniformly sampled uint8 frames ``[T, H, W, 3]`` (of the ``[start, end]`` seconds window when given,
        fetched by seeking); raises ``VideoDecodeError`` naming the file."""
        from clipvip.data import VideoDecodeError
        from clipvip.data.video import load_frames

        path = Path(path)
        try:
            frames = load_frames(str(path), num_frames=self.num_frames, sampling="uniform", start=start, end=end)
        except VideoDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
            raise VideoDecodeError(str(path), f"{type(exc).__name__}: {exc}") from exc
        frames = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise VideoDecodeError(str(path), f"decoder returned no frames (shape {tuple(frames.shape)})")
        return frames

    def encode_frames(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Embed already-decoded clips (each uint8 ``[T, H, W, 3]``) in one batch → ``[B, D]`` float32 CPU."""
        if not clips:
            return torch.zeros(0, self.dim)
        return self.encode_pixels(torch.stack([self.transform(c) for c in clips]))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed already-transformed clips ``[B, T, 3, S, S]`` → ``[B, D]`` float32 CPU (the indexer
        transforms in its decode threads, so the model thread only stacks and encodes)."""
        with self._lock, torch.inference_mode():
            self.model.eval()
            with self._autocast():
                out = self.model.encode_video(pixels.to(self.device), normalize=False)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return self._finite(out.cpu(), "video")

    def _finite(self, out: torch.Tensor, what: str) -> torch.Tensor:
        """Refuse NaN/inf embeddings: they would rank arbitrarily and break JSON (``"score": NaN``)."""
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out).all(dim=1)).sum())
            raise ValueError(f"model {self.spec} (id {self.model_id}) produced non-finite {what} embeddings for "
                             f"{bad} of {len(out)} inputs: its weights are damaged (NaN/inf); nothing was stored")
        return out

    def encode_video_files(
        self, paths: Iterable[str | Path], batch_size: int = 8, progress: bool = False
    ) -> EncodeResult:
        """Decode, sample, transform, batch and encode video files.

        Files that cannot be decoded do not stop the run: they are returned in ``failures`` with the reason.
        """
        from clipvip.data import VideoDecodeError

        paths = [str(p) for p in paths]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        good: list[str] = []
        failures: list[tuple[str, str]] = []
        chunks: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []
        pending_paths: list[str] = []
        bar = _progress(len(paths), "encoding videos", progress)
        for path in paths:
            try:
                pending.append(self.decode(path))
                pending_paths.append(path)
            except VideoDecodeError as exc:
                failures.append((path, _reason(exc)))
                log.warning("cannot read %s: %s", path, _reason(exc))
            if len(pending) == batch_size:
                chunks.append(self.encode_frames(pending))
                good += pending_paths
                pending, pending_paths = [], []
            bar.update(1)
        if pending:
            chunks.append(self.encode_frames(pending))
            good += pending_paths
        bar.close()
        emb = torch.cat(chunks) if chunks else torch.zeros(0, self.dim)
        return EncodeResult(embeddings=emb, paths=good, failures=failures)

    # ------------------------------------------------------------------ texts
    def check_query(self, text: str) -> str:
        """Return the query stripped, or raise ``ValueError`` saying why it cannot be used."""
        if not isinstance(text, str):
            raise ValueError(f"a query must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("the query is empty")
        if len(text) > self.max_query_chars:
            raise ValueError(f"the query is {len(text)} characters long; the limit is {self.max_query_chars}")
        return text.strip()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Tokenize and embed sentences → ``[N, D]`` float32 CPU, L2-normalised.

        Text longer than the context is truncated as CLIP does; empty or absurdly long strings are refused.
        """
        from clipvip.tokenizer import tokenize

        if isinstance(texts, str):
            texts = [texts]
        texts = [self.check_query(t) for t in texts]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        outs = []
        for start in range(0, len(texts), batch_size):
            batch = tokenize(self.tokenizer, list(texts[start : start + batch_size]), self.max_length)
            ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            with self._lock, torch.inference_mode():
                self.model.eval()
                with self._autocast():
                    out = self.model.encode_text(ids, mask, normalize=False)
                outs.append(self._finite(torch.nn.functional.normalize(out.float(), dim=-1).cpu(), "text"))
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    @property
    def dtype_name(self) -> str:
        """``"fp32"`` or ``"bf16"``: what an index records and ``clipvip.load(..., dtype=)`` accepts back."""
        from clipvip.device import dtype_name

        return dtype_name(self.dtype)

    def _autocast(self) -> Any:
        """bf16 autocast on this pipeline's device, or nothing for fp32 (module doc: why autocast)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def __repr__(self) -> str:
        return (f"VideoTextPipeline(spec={self.spec!r}, model_id={self.model_id!r}, dim={self.dim}, "
                f"num_frames={self.num_frames}, image_size={self.image_size}, device={self.device}, "
                f"dtype={self.dtype_name})")


# ---------------------------------------------------------------------- load
def load(
    spec: str | Path,
    device: str | torch.device | None = None,
    *,
    tokenizer: Any = None,
    num_frames: int | None = None,
    max_length: int | None = None,
    attention: str | None = None,
    seed: int = 0,
    config: Any = None,
    dtype: str | torch.dtype | None = None,
) -> VideoTextPipeline:
    """Load a model from any supported ``spec`` and wrap it in a :class:`VideoTextPipeline`.

    ``tokenizer`` may be a tokenizer object or anything ``load_tokenizer`` accepts (a directory, CLIP's
    ``bpe_simple_vocab_16e6.txt.gz``, a hub name). ``num_frames`` defaults to the frames the model was
    validated with (recorded in its config by the trainer; a log line says so), else the config's temporal
    size; ``max_length`` to the text context. ``attention`` switches the attention mode after loading.
    ``config`` is only used for official checkpoints whose architecture cannot be inferred from the weights.
    ``seed`` seeds the random init of a registry name (a spec ``name@seedN`` does the same).
    ``dtype`` is ``"fp32"`` (default), ``"bf16"`` (bf16 autocast) or ``"auto"`` (bf16 where the CPU has
    AMX / AVX512-BF16 or on a bf16-capable GPU; :func:`clipvip.device.resolve_dtype`); it is part of
    ``model_id``.
    """
    from clipvip.config import CLIPViPConfig, available_configs
    from clipvip.device import resolve_dtype
    from clipvip.model.clipvip import CLIPViP

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    run_dtype = resolve_dtype(dtype, device)  # before any loading: a bad value fails fast
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    tok_spec: str | None = None
    if path.is_dir() and _is_our_dir(path):
        kind = "ours"
        model = CLIPViP.from_pretrained(str(path))
        tok_spec = str(path.resolve())
        spec_str = str(path.resolve())
    elif path.is_dir() and (path / "config.json").is_file():
        kind = "clip"
        model = CLIPViP.from_clip(str(path))
        tok_spec = str(path.resolve())
        spec_str = str(path.resolve())
    elif path.is_file() and path.suffix.lower() in OFFICIAL_SUFFIXES:
        kind = "official"
        model = CLIPViP.from_official_checkpoint(str(path), config)
        tok_spec = DEFAULT_CLIP_TOKENIZER
        spec_str = str(path.resolve())
    elif path.exists():
        raise ValueError(
            f"{spec_str}: not a model: expected a directory with config.json (+ model.safetensors), an "
            f"official checkpoint ({', '.join(OFFICIAL_SUFFIXES)}), a transformers CLIP name or a registry "
            f"name ({', '.join(available_configs())})"
        )
    elif spec_str.split("@seed")[0] in available_configs():
        kind = "registry"
        if "@seed" in spec_str:
            name, _, seed_text = spec_str.partition("@seed")
            if not seed_text.isdigit():
                raise ValueError(f"{spec_str!r}: expected NAME@seedN with an integer N")
            spec_str, seed = name, int(seed_text)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPViP(CLIPViPConfig.from_name(spec_str))
        spec_str = f"{spec_str}@seed{seed}" if seed else spec_str
    else:
        kind = "clip"
        try:
            model = CLIPViP.from_clip(spec_str)  # uncached + offline fails at once (resolve_hub_name)
        except Exception as exc:  # noqa: BLE001 - turn hub/network failures into one clear message
            raise ValueError(
                f"cannot load model {spec_str!r}: it is not a local path, not a registry name "
                f"({', '.join(available_configs())}), and loading it as a transformers CLIP name failed "
                f"({type(exc).__name__}: {exc}). Hub names need the internet or a local copy in the "
                f"Hugging Face cache."
            ) from exc
        tok_spec = spec_str

    if attention is not None:
        model.set_attention(attention)
    tok_obj, tok_spec = _resolve_tokenizer(tokenizer, tok_spec, kind, spec_str, path)
    cfg = model.config
    n_frames, frames_source = recorded_frames(cfg, num_frames)
    if n_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {n_frames}")
    if frames_source == "recorded":
        log.info("using %d frames (%s sampling) recorded in the model's config.json (what it was validated "
                 "with); pass num_frames / --num-frames to change", n_frames, cfg.frames.eval_sampling or "uniform")
    ctx = int(max_length or cfg.text.max_position_embeddings)
    model.to(device).eval()
    extra: dict[str, Any] = {"num_frames": n_frames, "image_size": cfg.vision.image_size}
    if run_dtype != torch.float32:  # fp32 ids stay what they were, so existing fp32 indexes stay valid
        from clipvip.device import dtype_name

        extra["dtype"] = dtype_name(run_dtype)
    model_id = fingerprint(model, **extra)
    pipe = VideoTextPipeline(
        model,
        tok_obj,
        num_frames=n_frames,
        image_size=cfg.vision.image_size,
        max_length=ctx,
        model_id=model_id,
        spec=spec_str,
        tokenizer_spec=tok_spec,
        device=device,
        dtype=run_dtype,
    )
    pipe.frames_source = frames_source
    return pipe


def recorded_frames(config: Any, num_frames: int | None = None) -> tuple[int, str]:
    """Frames to sample per video and where the number came from: ``num_frames`` when given ("given"),
    else the frames the model was validated with, recorded in its config by the trainer ("recorded"),
    else the architecture's temporal size ("temporal_size")."""
    if num_frames is not None:
        return int(num_frames), "given"
    frames = getattr(config, "frames", None)
    if frames is not None and frames.eval_num_frames:
        return int(frames.eval_num_frames), "recorded"
    return int(config.temporal_size), "temporal_size"


def fingerprint(model: torch.nn.Module, **extra: Any) -> str:
    """A stable id of what decides an embedding: every weight (name, shape, dtype, bytes) + config + extra.

    Hashing the weights themselves (rather than the file that held them) means a checkpoint converted to
    our format keeps its id, and a retrained model never collides with the old one.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    cfg_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    cfg_dict.pop("name", None)
    cfg_dict.pop("frames", None)  # training's record; the frames actually used come in ``extra``
    h.update(json.dumps({"config": cfg_dict, **extra}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------- helpers
def _is_our_dir(path: Path) -> bool:
    """Our format has config.json with CLIP-ViP fields (``num_proxies``); transformers CLIP has ``vision_config``."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg}: cannot read model config: {exc}") from exc
    return isinstance(data, dict) and "num_proxies" in data and "vision_config" not in data


def _resolve_tokenizer(
    tokenizer: Any, default_spec: str | None, kind: str, spec: str, path: Path
) -> tuple[Any, str | None]:
    from clipvip.tokenizer import load_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        # Objects from load_tokenizer know where they came from, so an index can record and reload it.
        return tokenizer, getattr(tokenizer, "clipvip_source", None)
    if tokenizer is not None:
        return load_tokenizer(str(tokenizer)), str(Path(tokenizer).resolve()) if Path(tokenizer).exists() else str(tokenizer)
    if kind in ("registry", "official"):
        # OpenAI CLIP's vocabulary ships with the package: these work offline with no tokenizer given.
        from clipvip.tokenizer import BUNDLED_BPE

        return load_tokenizer(None), str(BUNDLED_BPE)
    try:
        return load_tokenizer(default_spec), default_spec
    except Exception as exc:  # noqa: BLE001
        if kind == "ours":
            hint = (f"{path} holds no tokenizer files; pass a tokenizer (--tokenizer on the command line, "
                    f"tokenizer= in Python: a directory or CLIP's BPE file)")
        else:
            hint = "pass a tokenizer explicitly (--tokenizer on the command line, tokenizer= in Python)"
        raise ValueError(f"cannot load the tokenizer for {spec}: {type(exc).__name__}: {exc}. {hint}") from exc


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc)


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="video")
