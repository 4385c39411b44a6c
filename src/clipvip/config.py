"""CLIP-ViP configuration and the registry of named architectures.

Architectures are data: JSON files under ``clipvip/configs/models/`` looked up by name, so a new size
needs no code. The tower sub-configs use transformers' CLIP field names so that a transformers
``CLIPConfig`` maps onto ours field by field (see :meth:`CLIPViPConfig.from_hf`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ATTENTION_MODES = ("proxy", "masked", "full", "frame")
FRAME_SAMPLINGS = ("uniform", "jitter", "random")
#: The initial log temperature: 4.60 as in the official wrapper and every released config (e^4.60 = 99.5),
#: not ln 100 = 4.60517.
LOGIT_SCALE_INIT = 4.60


@dataclass
class VisionConfig:
    """Sizes of the ViT video tower (transformers ``CLIPVisionConfig`` names)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame, L = (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class TextConfig:
    """Sizes of the CLIP text tower (transformers ``CLIPTextConfig`` names)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407


@dataclass
class FrameRecord:
    """The frames a saved model was trained and validated with, recorded by the trainer.

    ``clipvip.load``, ``clipvip eval``, ``clipvip index`` and ``clipvip curve`` sample ``eval_num_frames``
    frames (``eval_sampling``) per video unless told otherwise, so a model is scored the way it was
    validated rather than with the architecture's ``temporal_size`` (a model fine-tuned on 8 frames would
    otherwise be evaluated on 12).
    """

    train_num_frames: int | None = None
    train_sampling: str | None = None
    eval_num_frames: int | None = None
    eval_sampling: str | None = None


@dataclass
class CLIPViPConfig:
    """Everything needed to build a :class:`clipvip.CLIPViP`.

    ``num_proxies`` counts CLIP's [CLS] (proxy 0) plus the added proxies, so the paper's M=4 is 1 + 3 added
    (reference §1.3). ``attention`` picks how the video tower mixes tokens; all four modes share the same
    weights, which is what makes the paper's ablations a one-line change.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 512
    num_proxies: int = 4
    temporal_size: int = 12
    use_temporal_embedding: bool = True
    attention: str = "proxy"
    logit_scale_init: float = LOGIT_SCALE_INIT
    name: str | None = None
    frames: FrameRecord | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, "vision")
        if isinstance(self.text, dict):
            self.text = _build(TextConfig, self.text, "text")
        if isinstance(self.frames, dict):
            self.frames = _build(FrameRecord, self.frames, "frames")
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on settings the model cannot honour, naming the field and expected type.

        Types are strict (a JSON ``"false"`` is not a bool, ``"768"`` not an integer) and sizes must be
        positive, so a hand-edited ``config.json`` fails here with its key instead of deep inside torch.
        """
        _check_types(self, "")
        _check_ranges(self)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.num_proxies < 1:
            raise ValueError(f"num_proxies must be >= 1 (proxy 0 is CLIP's [CLS]), got {self.num_proxies}")
        if self.temporal_size < 1:
            raise ValueError(f"temporal_size must be >= 1, got {self.temporal_size}")
        for tower, cfg in (("vision", self.vision), ("text", self.text)):
            if cfg.hidden_size % cfg.num_attention_heads:
                raise ValueError(
                    f"{tower}.hidden_size ({cfg.hidden_size}) must be divisible by "
                    f"{tower}.num_attention_heads ({cfg.num_attention_heads})"
                )
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"vision.image_size ({self.vision.image_size}) must be a multiple of "
                f"vision.patch_size ({self.vision.patch_size})"
            )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CLIPViPConfig":
        return _build(cls, data, "config")

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "CLIPViPConfig":
        """Read a config from a JSON file path or a JSON string, strictly: duplicate or unknown keys, wrong
        types and out-of-range values are ``ValueError`` naming the file, the key and what was expected."""
        text = str(path_or_text)
        where = "config JSON"
        if not text.lstrip().startswith("{"):
            path = Path(path_or_text)
            where = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}: not UTF-8 text (expected a JSON config)") from None
            except OSError as exc:
                raise FileNotFoundError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where:.200} is not valid JSON: {exc}") from exc
        except ValueError as exc:  # a duplicate key
            raise ValueError(f"{where:.200}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{where:.200}: expected a JSON object of config fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where:.200}: {exc}") from exc

    def replace(self, **overrides: Any) -> "CLIPViPConfig":
        """A copy with top-level fields (or ``vision``/``text`` dicts of fields) replaced."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in ("vision", "text") and isinstance(value, dict):
                data[key].update(value)
            elif key in data:
                data[key] = value
            else:
                raise ValueError(f"unknown config field {key!r}; known: {sorted(data)}")
        return self.from_dict(data)

    # ------------------------------------------------------------------ registry and HF
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "CLIPViPConfig":
        """A registered architecture (``clipvip-b32``, ``clipvip-b16``, ``clipvip-tiny``...)."""
        names = available_configs()
        if name not in names:
            raise KeyError(f"unknown architecture {name!r}; registered: {', '.join(names)}")
        text = resources.files("clipvip").joinpath(f"configs/models/{name}.json").read_text()
        cfg = cls.from_dict(json.loads(text))
        cfg.name = name
        return cfg.replace(**overrides) if overrides else cfg

    @classmethod
    def from_hf(cls, clip_config_or_path: Any, **overrides: Any) -> "CLIPViPConfig":
        """Build from a transformers ``CLIPConfig`` object, a local directory, or a hub name.

        Only the tower sizes are taken from CLIP; the CLIP-ViP additions keep their defaults unless given
        in ``overrides`` (e.g. ``num_proxies=4, temporal_size=12``).
        """
        from transformers import CLIPConfig

        hf = clip_config_or_path
        if not isinstance(hf, CLIPConfig):
            hf = CLIPConfig.from_pretrained(str(clip_config_or_path))
        vision = {f.name: getattr(hf.vision_config, f.name) for f in dataclasses.fields(VisionConfig)
                  if hasattr(hf.vision_config, f.name)}
        text = {f.name: getattr(hf.text_config, f.name) for f in dataclasses.fields(TextConfig)
                if hasattr(hf.text_config, f.name)}
        # The hub configs carry placeholder special ids (eos 2, pad 1); the tokenizer's ids are the real ones
        # and EOT pooling uses argmax over input ids anyway (reference §2).
        for key, default in (("bos_token_id", 49406), ("eos_token_id", 49407), ("pad_token_id", 49407)):
            if text.get(key) is None or text.get(key) < 3:
                text[key] = default
        cfg = cls(vision=VisionConfig(**vision), text=TextConfig(**text), projection_dim=hf.projection_dim)
        return cfg.replace(**overrides) if overrides else cfg

    def to_hf(self) -> Any:
        """The transformers ``CLIPConfig`` with the same tower sizes (used by weight conversion and tests)."""
        from transformers import CLIPConfig

        return CLIPConfig(
            text_config=dataclasses.asdict(self.text),
            vision_config=dataclasses.asdict(self.vision),
            projection_dim=self.projection_dim,
            logit_scale_init_value=self.logit_scale_init,
        )


def available_configs() -> list[str]:
    """Names of the registered architectures."""
    folder = resources.files("clipvip").joinpath("configs/models")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__} {data!r:.60}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise ``ValueError`` naming ``key`` and the expected type unless ``value`` is of ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if value is None:
            return
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, annotation):
            raise ValueError(f"{key} must be an object of {annotation.__name__} fields, got {value!r:.60}")
        _check_types(value, f"{key}.")
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
    }.get(annotation)
    if ok is not None and not ok(value):
        raise ValueError(f"{key} must be {_TYPE_WORDS[annotation]}"
                         f"{' (finite)' if annotation is float else ''}, got {value!r:.60} ({type(value).__name__})")


def _check_types(obj: Any, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name])


def _check_ranges(cfg: "CLIPViPConfig") -> None:
    def positive(key: str, value: int) -> None:
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")

    for tower, sub in (("vision", cfg.vision), ("text", cfg.text)):
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            positive(f"{tower}.{name}", getattr(sub, name))
        if not sub.layer_norm_eps > 0:
            raise ValueError(f"{tower}.layer_norm_eps must be > 0, got {sub.layer_norm_eps}")
        if not 0.0 <= sub.attention_dropout < 1.0:
            raise ValueError(f"{tower}.attention_dropout must be in [0, 1), got {sub.attention_dropout}")
        if not sub.hidden_act:
            raise ValueError(f"{tower}.hidden_act must name an activation (e.g. 'quick_gelu')")
    for name in ("num_channels", "image_size", "patch_size"):
        positive(f"vision.{name}", getattr(cfg.vision, name))
    for name in ("vocab_size", "max_position_embeddings"):
        positive(f"text.{name}", getattr(cfg.text, name))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg.text, name)
        if not 0 <= value < cfg.text.vocab_size:
            raise ValueError(f"text.{name} must be in [0, vocab_size={cfg.text.vocab_size}), got {value}")
    positive("projection_dim", cfg.projection_dim)
    if cfg.frames is not None:
        for name in ("train_num_frames", "eval_num_frames"):
            value = getattr(cfg.frames, name)
            if value is not None:
                positive(f"frames.{name}", value)
        for name in ("train_sampling", "eval_sampling"):
            value = getattr(cfg.frames, name)
            if value is not None and value not in FRAME_SAMPLINGS:
                raise ValueError(f"frames.{name} must be one of {FRAME_SAMPLINGS}, got {value!r}")
