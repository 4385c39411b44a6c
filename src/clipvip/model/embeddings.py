"""Token embeddings: CLIP-ViP's video embeddings (reference §1.1–1.3) and CLIP's text embeddings.

Parameter names follow transformers' ``CLIPVisionEmbeddings`` / ``CLIPTextEmbeddings`` plus the two new
ones, ``added_cls`` (proxies 1..M-1) and ``temporal_embedding``, so CLIP and official CLIP-ViP weights map
by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipvip.config import CLIPViPConfig


def interpolate_temporal(table: Tensor, num_frames: int) -> Tensor:
    """Resize a ``[1, S, D]`` temporal table to ``[1, T, D]`` by linear interpolation along time
    (``align_corners=False``, as the official code), so any frame count works: 12 -> 1 is the mean of
    entries 5 and 6; 12 -> 32 stretches the table (ActivityNet)."""
    if table.shape[1] == num_frames:
        return table
    return F.interpolate(table.transpose(1, 2), size=num_frames, mode="linear", align_corners=False).transpose(1, 2)


class VideoEmbeddings(nn.Module):
    """Patchify frames and add spatial + temporal positions; build the M video proxy tokens.

    Each patch gets patch embedding + spatial position (``position_embedding[1:]``, shared by all frames)
    + the temporal embedding of its frame. Proxy 0 is CLIP's ``class_embedding``, proxies 1.. are
    ``added_cls``; every proxy gets CLIP's [CLS] position (``position_embedding[0]``) and no temporal term.
    """

    def __init__(self, config: CLIPViPConfig) -> None:
        super().__init__()
        v = config.vision
        self.config = config
        self.embed_dim = v.hidden_size
        self.image_size = v.image_size
        self.patch_size = v.patch_size
        self.num_patches = v.num_patches
        self.num_proxies = config.num_proxies
        self.class_embedding = nn.Parameter(torch.randn(v.hidden_size))
        self.patch_embedding = nn.Conv2d(v.num_channels, v.hidden_size, kernel_size=v.patch_size,
                                         stride=v.patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.num_patches + 1, v.hidden_size)
        if config.num_proxies > 1:
            # N(0, 1) as in the official code (torch.randn); nothing re-initialises it (reference §1.3).
            self.added_cls = nn.Parameter(torch.randn(config.num_proxies - 1, v.hidden_size))
        else:
            self.register_parameter("added_cls", None)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.temporal_size, v.hidden_size))

    def _check(self, pixel_values: Tensor) -> None:
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be [B, T, 3, H, W], got shape {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"frames must be {self.image_size}x{self.image_size} (the position table is fixed), "
                             f"got {h}x{w}")

    def patches(self, pixel_values: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` -> patch embeddings ``[B·T, L, D]`` with the spatial position added."""
        self._check(pixel_values)
        frames = pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype)
        x = self.patch_embedding(frames).flatten(2).transpose(1, 2)  # row-major over the grid
        return x + self.position_embedding.weight[1:]

    def proxies(self, batch: int) -> Tensor:
        """The M proxy tokens ``[B, M, D]`` (with the [CLS] position added)."""
        tokens = self.class_embedding.unsqueeze(0)
        if self.added_cls is not None:
            tokens = torch.cat([tokens, self.added_cls], dim=0)
        tokens = tokens + self.position_embedding.weight[0]
        return tokens.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(proxies [B, M, D], patches [B·T, L, D])`` with all position terms added."""
        b, t = pixel_values.shape[:2]
        x = self.patches(pixel_values)
        if self.config.use_temporal_embedding:
            temporal = interpolate_temporal(self.temporal_embedding, t)  # [1, T, D]
            x = (x.unflatten(0, (b, t)) + temporal.unsqueeze(2)).flatten(0, 1)
        return self.proxies(b), x

    def frame_tokens(self, pixel_values: Tensor) -> Tensor:
        """Per-frame CLIP input ``[B·T, 1 + L, D]``: CLIP's [CLS] and the patches, no proxies, no temporal
        term (the CLIP4Clip mean-pooling baseline, attention mode ``"frame"``)."""
        x = self.patches(pixel_values)
        cls = (self.class_embedding + self.position_embedding.weight[0]).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1)


class TextEmbeddings(nn.Module):
    """CLIP's token + absolute position embeddings (no ``position_ids`` buffer in the state dict).

    The token-id range is checked by :func:`check_token_ids` at the eager entry point
    (:meth:`clipvip.CLIPViP.encode_text`), not here: reading ``input_ids.max()`` is data-dependent and
    would stop ``torch.export`` / ONNX tracing with a dynamic batch.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_positions, hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"text length {length} exceeds max_position_embeddings "
                             f"{self.position_embedding.num_embeddings}")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` if any id is outside ``[0, vocab_size)``: a tokenizer that does not belong to
    the model. (``nn.Embedding`` would fail with a bare index error on CPU and a device assert on CUDA.)"""
    if input_ids.numel() == 0:
        return
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{lo}, {hi}]: "
                         f"tokenizer and model disagree")
