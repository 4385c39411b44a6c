"""``CLIPViP``: the video and text towers, their projections and the learned temperature."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clipvip.config import ATTENTION_MODES, CLIPViPConfig
from clipvip.model.attention import CLIPAttention
from clipvip.model.embeddings import TextEmbeddings, VideoEmbeddings, check_token_ids
from clipvip.model.text import TextTransformer
from clipvip.model.vision import CLIPMLP, VisionTransformer


class CLIPViP(nn.Module):
    """CLIP-ViP (ICLR 2023). Parameter names are transformers' ``CLIPModel`` names plus
    ``vision_model.embeddings.added_cls`` and ``vision_model.embeddings.temporal_embedding``.

    >>> model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    >>> model.encode_video(torch.rand(2, 12, 3, 32, 32)).shape
    torch.Size([2, 32])
    """

    def __init__(self, config: CLIPViPConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.vision_model = VisionTransformer(config)
        self.text_model = TextTransformer(config)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.apply(self._init_weights)

    # ------------------------------------------------------------------ init
    def _init_weights(self, module: nn.Module) -> None:
        """CLIP's initialisation (the scheme transformers uses), so models trained from scratch (the tiny
        demo) start where CLIP started. ``added_cls`` keeps its N(0, 1) and the temporal table its zeros."""
        v, t = self.config.vision, self.config.text
        if isinstance(module, VideoEmbeddings):
            nn.init.normal_(module.class_embedding, std=v.hidden_size**-0.5)
            nn.init.normal_(module.patch_embedding.weight, std=0.02)
            nn.init.normal_(module.position_embedding.weight, std=0.02)
        elif isinstance(module, TextEmbeddings):
            nn.init.normal_(module.token_embedding.weight, std=0.02)
            nn.init.normal_(module.position_embedding.weight, std=0.02)
        elif isinstance(module, (CLIPAttention, CLIPMLP)):
            width = module.embed_dim if isinstance(module, CLIPAttention) else module.fc1.in_features
            layers = v.num_hidden_layers if width == v.hidden_size else t.num_hidden_layers
            in_std = width**-0.5 * (2 * layers) ** -0.5
            if isinstance(module, CLIPAttention):
                for lin in (module.q_proj, module.k_proj, module.v_proj):
                    nn.init.normal_(lin.weight, std=in_std)
                nn.init.normal_(module.out_proj.weight, std=width**-0.5)
                for lin in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                    nn.init.zeros_(lin.bias)
            else:
                nn.init.normal_(module.fc1.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(module.fc2.weight, std=in_std)
                nn.init.zeros_(module.fc1.bias)
                nn.init.zeros_(module.fc2.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif module is self:
            nn.init.normal_(self.visual_projection.weight, std=v.hidden_size**-0.5)
            nn.init.normal_(self.text_projection.weight, std=t.hidden_size**-0.5)

    # ------------------------------------------------------------------ switches
    @property
    def attention(self) -> str:
        return self.vision_model.attention

    def set_attention(self, mode: str) -> "CLIPViP":
        """Switch the video attention in place (same weights): ``proxy``, ``masked``, ``full`` or ``frame``."""
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        self.vision_model.attention = mode
        self.config = self.config.replace(attention=mode)
        self.vision_model.config = self.config
        self.vision_model.embeddings.config = self.config
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> "CLIPViP":
        """Recompute each encoder layer in backward (``use_reentrant=False``): activation memory of one
        layer instead of all, for about one extra forward of compute."""
        self.vision_model.encoder.gradient_checkpointing = bool(enabled)
        self.text_model.encoder.gradient_checkpointing = bool(enabled)
        return self

    # ------------------------------------------------------------------ encoders
    def encode_video(self, pixel_values: Tensor, normalize: bool = True) -> Tensor:
        """``[B, T, 3, H, W]`` float frames (CLIP-normalised) -> ``[B, D]``. An image is a 1-frame video;
        any T works (the temporal table is interpolated)."""
        features = self.visual_projection(self.vision_model(pixel_values))
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        """``[B, S]`` token ids (+ mask) -> ``[B, D]``, pooled at the first EOT.

        Eager calls check that every id is in the vocabulary (``ValueError`` naming the range: tokenizer and
        model disagree). Under ``torch.compile``, ``torch.export`` or tracing the check is skipped: it reads
        the data, which would pin the graph; exported graphs take ids from the tokenizer recorded beside them.
        """
        if not _tracing():
            check_token_ids(input_ids, self.text_model.embeddings.token_embedding.num_embeddings)
        features = self.text_projection(self.text_model(input_ids, attention_mask))
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, pixel_values: Tensor) -> Tensor:
        """Text×video logits ``exp(logit_scale) * t @ v.T`` (rows: texts, columns: videos)."""
        text = self.encode_text(input_ids, attention_mask)
        video = self.encode_video(pixel_values)
        return self.logit_scale.exp() * text @ video.t()

    @property
    def temperature(self) -> float:
        """``exp(logit_scale)`` as a float (100 at init)."""
        return math.exp(float(self.logit_scale.detach()))

    # ------------------------------------------------------------------ weights (clipvip.weights)
    @classmethod
    def from_clip(cls, name_or_dir: str | Path, **overrides: Any) -> "CLIPViP":
        from clipvip.weights import from_clip

        return from_clip(name_or_dir, **overrides)

    @classmethod
    def from_official_checkpoint(cls, path: str | Path, config: CLIPViPConfig | None = None) -> "CLIPViP":
        from clipvip.weights import from_official_checkpoint

        return from_official_checkpoint(path, config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "CLIPViP":
        from clipvip.weights import from_pretrained

        return from_pretrained(directory, map_location=map_location)

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        from clipvip.weights import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer)


def _tracing() -> bool:
    """True while torch.compile / torch.export (dynamo or non-strict) or torch.jit tracing runs the code.
    (``is_exporting`` is torch >= 2.5, ``is_compiling`` >= 2.3; older versions lack the API and the mode.)"""
    compiler = getattr(torch, "compiler", None)
    checks = [getattr(compiler, name, None) for name in ("is_compiling", "is_exporting")]
    return bool(torch.jit.is_tracing() or any(check() for check in checks if check is not None))
