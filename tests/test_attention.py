"""Attention modes: "proxy" (both implementations) equals the dense-mask reference "masked", forward and
backward; the mask is the table of reference §1.5; "frame" is per-frame transformers CLIP."""

from __future__ import annotations

import pytest
import torch

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP
from clipvip.model import attention as attn


def tiny(**overrides) -> CLIPViP:
    return CLIPViP(CLIPViPConfig.from_name("clipvip-tiny", **overrides)).eval()


def test_mask_matches_hand_written_table():
    # M=2 proxies, T=2 frames, L=2 patches: tokens [p0 p1 | f0a f0b | f1a f1b]
    expected = torch.tensor([
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(attn.proxy_attention_mask(2, 2, 2), expected)


def _outputs_and_grads(model: CLIPViP, pixels: torch.Tensor, weights: torch.Tensor):
    model.zero_grad()
    x = pixels.clone().requires_grad_(True)
    out = model.encode_video(x, normalize=False)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("frames,impl", [(1, "sdpa"), (2, "sdpa"), (8, "sdpa"), (12, "sdpa"), (32, "sdpa"),
                                         (12, "split")])  # "split": the alternative implementation
def test_proxy_equals_masked_forward_and_backward(frames, impl, monkeypatch):
    model = tiny()
    with torch.no_grad():  # a non-zero temporal table so that the frames differ
        model.vision_model.embeddings.temporal_embedding.normal_()
    pixels = torch.randn(3, frames, 3, 32, 32)
    weights = torch.randn(3, model.config.projection_dim)
    model.set_attention("masked")
    ref_out, ref_x, ref_grads = _outputs_and_grads(model, pixels, weights)
    monkeypatch.setattr(attn, "PROXY_IMPL", impl)
    model.set_attention("proxy")
    out, gx, grads = _outputs_and_grads(model, pixels, weights)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx, ref_x, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_full_differs_from_masked_except_for_one_frame():
    model = tiny()
    for frames, same in ((1, True), (4, False)):
        pixels = torch.randn(2, frames, 3, 32, 32)
        with torch.no_grad():
            masked = model.set_attention("masked").encode_video(pixels)
            full = model.set_attention("full").encode_video(pixels)
        assert torch.allclose(masked, full, atol=1e-6) == same


def test_frame_mode_is_mean_of_per_frame_transformers_clip():
    from transformers import CLIPModel

    model = tiny(attention="frame")
    hf = CLIPModel(model.config.to_hf()).eval()
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    own = model.state_dict()
    state.update({k: own[k] for k in own if k not in state})
    model.load_state_dict(state)
    pixels = torch.randn(2, 5, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_video(pixels)
        pooled = hf.vision_model(pixel_values=pixels.flatten(0, 1)).pooler_output  # post-LN [CLS]
        ref = hf.visual_projection(pooled).unflatten(0, (2, 5)).mean(1)
    torch.testing.assert_close(ours, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny().train()
    pixels = torch.randn(2, 3, 3, 32, 32)
    weights = torch.randn(2, model.config.projection_dim)
    _, _, plain = _outputs_and_grads(model, pixels, weights)
    model.set_gradient_checkpointing(True)
    _, _, ckpt = _outputs_and_grads(model, pixels, weights)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-6, msg=name)
