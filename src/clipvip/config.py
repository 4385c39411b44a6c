"""CLIP-ViP configuration and the registry of named architectures.

Architectures are data: JSON files under ``clipvip/configs/models/`` looked up by name, so a new size
needs no code. The tower sub-configs use transformers' CLIP field names so that a transformers
``CLIPConfig`` maps onto ours field by field (see :meth:`CLIPViPConfig.from_hf`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ATTENTION_MODES = ("proxy", "masked", "full", "frame")


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
    logit_scale_init: float = math.log(100.0)
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, "vision")
        if isinstance(self.text, dict):
            self.text = _build(TextConfig, self.text, "text")
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on settings the model cannot honour, naming the field."""
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
        """Read a config from a JSON file path or a JSON string."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            path = Path(path_or_text)
            try:
                text = path.read_text()
            except OSError as exc:
                raise FileNotFoundError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config {path_or_text!s:.200} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

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
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**data)
