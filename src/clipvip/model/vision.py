"""The pre-LN transformer block shared by both towers, and the CLIP-ViP video tower.

The video tower keeps its hidden state as a list of token groups so each attention mode can pick the
layout that suits it, while LayerNorm and MLP (token-wise) simply run on every group:

* ``"proxy"``: ``[proxies [B, M, D], patches [B·T, L, D]]``: frames are batch rows, no N×N tensor;
* ``"masked"``/``"full"``: ``[tokens [B, M + T·L, D]]`` in the official order (proxies, frame 0, frame 1, …);
* ``"frame"``: ``[tokens [B·T, 1 + L, D]]``: each frame alone with CLIP's [CLS].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from clipvip.config import CLIPViPConfig
from clipvip.model.attention import CLIPAttention, TokenLayout, proxy_attention_mask
from clipvip.model.embeddings import VideoEmbeddings

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": nn.functional.gelu,
}


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} not supported; known: {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[act]
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """LN -> attention -> residual, LN -> MLP -> residual (CLIP's block, transformers' names)."""

    def __init__(self, hidden_size: int, heads: int, intermediate_size: int, act: str, eps: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, heads, dropout)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, parts: list[Tensor], layout: TokenLayout | None = None,
                attn_mask: Tensor | None = None) -> list[Tensor]:
        normed = [self.layer_norm1(p) for p in parts]
        if layout is not None:
            attended = list(self.self_attn.forward_proxy(normed[0], normed[1], layout))
        else:
            attended = [self.self_attn(normed[0], attn_mask)]
        parts = [p + a for p, a in zip(parts, attended)]
        return [p + self.mlp(self.layer_norm2(p)) for p in parts]


class CLIPEncoder(nn.Module):
    """A stack of blocks with optional activation checkpointing (one checkpoint per layer)."""

    def __init__(self, num_layers: int, **block: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(**block) for _ in range(num_layers)])  # type: ignore[arg-type]
        self.gradient_checkpointing = False

    def forward(self, parts: list[Tensor], layout: TokenLayout | None = None,
                attn_mask: Tensor | None = None) -> list[Tensor]:
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                parts = checkpoint(layer, parts, layout, attn_mask, use_reentrant=False)
            else:
                parts = layer(parts, layout, attn_mask)
        return parts


class VisionTransformer(nn.Module):
    """The video tower: embeddings -> pre-LN -> encoder -> first proxy -> post-LN (projection is outside,
    in :class:`clipvip.CLIPViP`, as in transformers' CLIPModel)."""

    def __init__(self, config: CLIPViPConfig) -> None:
        super().__init__()
        v = config.vision
        self.config = config
        self.attention = config.attention
        self.embeddings = VideoEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)  # transformers' spelling
        self.encoder = CLIPEncoder(v.num_hidden_layers, hidden_size=v.hidden_size, heads=v.num_attention_heads,
                                   intermediate_size=v.intermediate_size, act=v.hidden_act,
                                   eps=v.layer_norm_eps, dropout=v.attention_dropout)
        self.post_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` -> pooled ``[B, D_v]`` (post-LN of proxy 0; mean over frames in ``"frame"``)."""
        b, t = pixel_values.shape[:2]
        mode = self.attention
        if mode == "frame":
            x = self.pre_layrnorm(self.embeddings.frame_tokens(pixel_values))
            (x,) = self.encoder([x])
            return self.post_layernorm(x[:, 0]).unflatten(0, (b, t)).mean(dim=1)
        proxies, patches = self.embeddings(pixel_values)
        layout = TokenLayout(b, proxies.shape[1], t, patches.shape[1])
        if mode == "proxy":
            proxies, patches = self.encoder([self.pre_layrnorm(proxies), self.pre_layrnorm(patches)], layout)
            return self.post_layernorm(proxies[:, 0])
        x = torch.cat([proxies, patches.reshape(b, t * layout.patches_per_frame, -1)], dim=1)
        mask = None
        if mode == "masked":
            mask = proxy_attention_mask(layout.num_proxies, t, layout.patches_per_frame, x.device)
        (x,) = self.encoder([self.pre_layrnorm(x)], None, mask)
        return self.post_layernorm(x[:, 0])
