"""Pure-torch frame transforms: uint8 ``[T, H, W, 3]`` in, normalised float32 ``[T, 3, S, S]`` out.

The reference protocol (clipvip-reference §6.4, identical for train and test) converts frames to float in
[0, 1], squashes them to ``S×S`` with bicubic interpolation ignoring the aspect ratio, and normalises with
CLIP's mean/std. The official environment (torchvision 0.9 on tensors) resized with
``interpolate(mode="bicubic", align_corners=False)``: **no antialiasing and no clamping** of the bicubic
overshoot. We reproduce exactly that by default, so features match the official checkpoints; both
``antialias=True`` (PIL-like, better for big downscales such as 720p → 224) and ``clamp=True`` are
options. ``mode="crop"`` resizes the shorter side to ``S`` and centre-crops instead (keeps the aspect).
No torchvision: the project avoids that dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("squash", "crop")


class VideoTransform:
    """uint8 ``[T, H, W, 3]`` (or ``[H, W, 3]``) → float32 ``[T, 3, S, S]``, CLIP-normalised.

    Args:
        size: output side ``S``.
        mode: ``"squash"`` (reference: bicubic to ``S×S`` ignoring aspect) or ``"crop"`` (shorter side to
            ``S`` with the aspect kept, then centre crop).
        mean, std: per-channel normalisation (CLIP's by default).
        antialias: antialiased bicubic (off in the reference).
        clamp: clamp to [0, 1] after the bicubic resize (off in the reference, which keeps the overshoot).
    """

    def __init__(
        self,
        size: int = 224,
        mode: str = "squash",
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        antialias: bool = False,
        clamp: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown transform mode {mode!r}; expected one of {MODES}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.mode = mode
        self.antialias = bool(antialias)
        self.clamp = bool(clamp)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return (
            f"VideoTransform(size={self.size}, mode={self.mode!r}, antialias={self.antialias}, clamp={self.clamp})"
        )

    def resize(self, frames: torch.Tensor) -> torch.Tensor:
        """float ``[T, 3, H, W]`` in [0, 1] → float ``[T, 3, S, S]`` (before normalisation)."""
        h, w = frames.shape[-2:]
        s = self.size
        if self.mode == "squash":
            out_hw = (s, s)
        else:  # shorter side to s, keep aspect (rounding the longer side like torchvision does)
            if h <= w:
                out_hw = (s, max(s, int(s * w / h)))
            else:
                out_hw = (max(s, int(s * h / w)), s)
        if (h, w) != out_hw:
            frames = F.interpolate(frames, size=out_hw, mode="bicubic", align_corners=False, antialias=self.antialias)
        if self.clamp:
            frames = frames.clamp(0.0, 1.0)
        if self.mode == "crop":
            top = int(round((out_hw[0] - s) / 2.0))
            left = int(round((out_hw[1] - s) / 2.0))
            frames = frames[..., top : top + s, left : left + s]
        return frames

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor):
            frames = torch.as_tensor(frames)
        if frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [T, H, W, 3], got shape {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).to(torch.float32)
        if frames.dtype == torch.uint8:
            x = x / 255.0
        x = self.resize(x.contiguous())
        return ((x - self.mean) / self.std).contiguous()


def denormalize(pixel_values: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Inverse of the normalisation, for looking at what the model sees: float ``[..., 3, H, W]`` in ~[0, 1]."""
    m = torch.tensor(mean, dtype=pixel_values.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=pixel_values.dtype).view(3, 1, 1)
    return pixel_values * s + m
