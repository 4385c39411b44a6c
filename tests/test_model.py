"""The model against independent references: transformers' CLIPModel (images, text), hand-worked
temporal interpolation, the logits formula."""

from __future__ import annotations

import math

import pytest
import torch

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP
from clipvip.model.embeddings import interpolate_temporal


def _features(out):
    """transformers 4.x returns a tensor, 5.x an output object with ``pooler_output``."""
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.fixture(scope="module")
def twins():
    """A transformers CLIPModel and a CLIP-ViP with the same weights (1 proxy, zero temporal table)."""
    from transformers import CLIPModel

    torch.manual_seed(1)
    config = CLIPViPConfig.from_name("clipvip-tiny", num_proxies=1)
    hf = CLIPModel(config.to_hf()).eval()
    model = CLIPViP(config).eval()
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    state["vision_model.embeddings.temporal_embedding"] = torch.zeros_like(
        model.vision_model.embeddings.temporal_embedding)
    model.load_state_dict(state, strict=True)
    return hf, model


def test_parameter_names_follow_transformers(twins):
    hf, _ = twins
    full = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    hf_keys = {k for k in hf.state_dict() if not k.endswith("position_ids")}
    new = {"vision_model.embeddings.added_cls", "vision_model.embeddings.temporal_embedding"}
    assert set(full.state_dict()) == hf_keys | new
    assert full.vision_model.embeddings.added_cls.shape == (3, 48)
    assert full.vision_model.embeddings.temporal_embedding.shape == (1, 12, 48)


@pytest.mark.parametrize("mode", ["proxy", "masked", "full"])
def test_one_frame_equals_transformers_image_features(twins, mode):
    hf, model = twins
    model.set_attention(mode)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_features(hf.get_image_features(pixel_values=images)), dim=-1)
        ours = model.encode_video(images[:, None])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    model.set_attention("proxy")


def test_text_equals_transformers_text_features_with_padding(twins):
    hf, model = twins
    eot = 49407
    ids = torch.randint(1, 49000, (3, 12))
    ids[:, 0] = 49406
    lengths = [12, 7, 3]  # number of real tokens incl. start and EOT; rest padded with EOT (pad == EOT)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, n - 1:] = eot
        mask[row, :n] = 1
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            _features(hf.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
        ours = model.encode_text(ids, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_eot_pooling_takes_the_first_eot(twins):
    _, model = twins
    ids = torch.tensor([[49406, 320, 1929, 49407, 49407, 49407]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    changed = ids.clone()
    changed[0, 4:] = torch.tensor([500, 600])  # tokens after the first EOT must not matter (causal mask)
    with torch.no_grad():
        a = model.encode_text(ids, mask)
        b = model.encode_text(changed, mask)
    torch.testing.assert_close(a, b)


def test_temporal_interpolation_hand_worked():
    table = torch.arange(12, dtype=torch.float32).view(1, 12, 1).expand(1, 12, 3) * torch.tensor([1.0, 2.0, -1.0])
    one = interpolate_temporal(table, 1)
    torch.testing.assert_close(one, (table[:, 5:6] + table[:, 6:7]) / 2)
    assert interpolate_temporal(table, 32).shape == (1, 32, 3)
    assert interpolate_temporal(table, 12) is table
    # align_corners=False on 12 -> 24: output i samples source (i + 0.5) / 2 - 0.5, clamped at 0
    two = interpolate_temporal(table, 24)[0, :, 0]
    expected = torch.tensor([max((i + 0.5) / 2 - 0.5, 0.0) for i in range(24)]).clamp(max=11)
    torch.testing.assert_close(two, expected)


def test_encode_video_any_length_and_normalised():
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny")).eval()
    with torch.no_grad():
        for frames in (1, 3, 12, 20):
            out = model.encode_video(torch.randn(2, frames, 3, 32, 32))
            assert out.shape == (2, 32)
            torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_forward_is_scaled_text_by_video_cosine():
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny")).eval()
    assert math.isclose(model.temperature, math.exp(4.60), rel_tol=1e-5)  # the official init, e^4.60
    ids = torch.tensor([[49406, 320, 49407, 49407], [49406, 1929, 2533, 49407]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    pixels = torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        logits = model(ids, mask, pixels)
        t, v = model.encode_text(ids, mask), model.encode_video(pixels)
    expected = torch.tensor([[math.exp(4.60) * float(t[i] @ v[j]) for j in range(3)] for i in range(2)])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model.encode_video(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="32x32"):
        model.encode_video(torch.randn(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(torch.tensor([[49406, 99999, 49407]]))
    with pytest.raises(ValueError, match="attention"):
        model.set_attention("sparse")
