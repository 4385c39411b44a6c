"""VideoTransform against independent references: a loop-based bicubic, PIL, and hand-worked crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipvip.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _bicubic_1d(src: np.ndarray, out_len: int) -> np.ndarray:
    """Keys' cubic convolution (a=-0.75), half-pixel centres, edge-clamped taps: the reference's
    tensor resize (torchvision 0.9 on tensors = no antialias)."""
    n = len(src)
    scale = n / out_len
    out = np.zeros(out_len)
    for j in range(out_len):
        x = (j + 0.5) * scale - 0.5
        i0 = math.floor(x)
        t = x - i0
        for k in range(-1, 3):
            idx = min(max(i0 + k, 0), n - 1)
            out[j] += src[idx] * _cubic(k - t)
    return out


def _bicubic_2d(img: np.ndarray, h: int, w: int) -> np.ndarray:
    tmp = np.stack([_bicubic_1d(row, w) for row in img])  # along width
    return np.stack([_bicubic_1d(col, h) for col in tmp.T]).T  # along height


def test_squash_matches_loop_bicubic_and_clip_normalisation():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)  # upscale and aspect change: 5x7 -> 9x9
    out = VideoTransform(size=9)(torch.from_numpy(frames))
    assert out.shape == (2, 3, 9, 9) and out.dtype == torch.float32
    for t in range(2):
        for c in range(3):
            ref = _bicubic_2d(frames[t, :, :, c] / 255.0, 9, 9)  # overshoot kept: no clamp in the reference
            ref = (ref - CLIP_MEAN[c]) / CLIP_STD[c]
            np.testing.assert_allclose(out[t, c].numpy(), ref, atol=2e-5)


def test_clamp_option_bounds_the_overshoot():
    frames = torch.zeros(1, 6, 6, 3, dtype=torch.uint8)
    frames[:, :, 3:] = 255  # a hard edge makes bicubic overshoot
    plain = VideoTransform(size=15, mean=(0, 0, 0), std=(1, 1, 1))(frames)
    clamped = VideoTransform(size=15, mean=(0, 0, 0), std=(1, 1, 1), clamp=True)(frames)
    assert plain.max() > 1.0 and plain.min() < 0.0
    assert clamped.max() <= 1.0 and clamped.min() >= 0.0


def test_antialias_matches_pil_bicubic_downscale():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = VideoTransform(size=16, antialias=True, mean=(0, 0, 0), std=(1, 1, 1))(torch.from_numpy(frame))
    for c in range(3):
        pil = Image.fromarray(frame[:, :, c].astype(np.float32) / 255.0, mode="F").resize((16, 16), Image.BICUBIC)
        np.testing.assert_allclose(out[0, c].numpy(), np.asarray(pil), atol=2e-3)


def test_crop_mode_keeps_aspect_and_centres():
    # 8 rows x 16 cols; shorter side 8 -> size 8 is already met: crop the centre 8 columns exactly.
    frame = np.zeros((8, 16, 3), np.uint8)
    frame[:, :, 0] = np.arange(16, dtype=np.uint8)[None, :] * 10
    out = VideoTransform(size=8, mode="crop", mean=(0, 0, 0), std=(1, 1, 1))(torch.from_numpy(frame)[None])
    np.testing.assert_allclose(out[0, 0].numpy() * 255, np.tile(np.arange(4, 12) * 10.0, (8, 1)), atol=1e-4)
    # Portrait 720x406 at S=224: resized to (397, 224), then the middle 224 rows.
    big = torch.zeros(1, 720, 406, 3, dtype=torch.uint8)
    t = VideoTransform(size=224, mode="crop")
    assert t.resize(big.permute(0, 3, 1, 2).float()).shape == (1, 3, 224, 224)
    assert t(big).shape == (1, 3, 224, 224)


def test_rejects_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="expected frames"):
        VideoTransform(size=8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown transform mode"):
        VideoTransform(mode="stretch")
