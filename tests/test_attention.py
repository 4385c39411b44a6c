"""Attention modes: "proxy" equals the dense-mask reference "masked", forward and backward; its op count does
not grow with batch or frames; it compiles; the mask is the table of reference §1.5; "frame" is per-frame
transformers CLIP."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP
from clipvip.model import attention as attn
from clipvip.model.opcount import count_forward_backward


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


@pytest.mark.parametrize("frames", [1, 2, 8, 12, 32])
def test_proxy_equals_masked_forward_and_backward(frames):
    model = tiny()
    with torch.no_grad():  # a non-zero temporal table so that the frames differ
        model.vision_model.embeddings.temporal_embedding.normal_()
    pixels = torch.randn(3, frames, 3, 32, 32)
    weights = torch.randn(3, model.config.projection_dim)
    model.set_attention("masked")
    ref_out, ref_x, ref_grads = _outputs_and_grads(model, pixels, weights)
    model.set_attention("proxy")
    out, gx, grads = _outputs_and_grads(model, pixels, weights)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx, ref_x, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_mask_is_built_per_call_not_cached():
    a = attn.proxy_attention_mask(2, 3, 4)
    b = attn.proxy_attention_mask(2, 3, 4)
    assert a is not b and torch.equal(a, b)
    a[0, 0] = False  # a caller mutating its mask must not change anyone else's
    assert bool(attn.proxy_attention_mask(2, 3, 4)[0, 0])
    assert not hasattr(attn, "_cached_mask")


def _layer_ops(batch: int, frames: int, layers: int) -> tuple[Counter, Counter]:
    model = tiny(vision={"num_hidden_layers": layers})
    fwd, bwd = count_forward_backward(model.vision_model, torch.randn(batch, frames, 3, 32, 32))
    return fwd.by_name, bwd.by_name


@pytest.mark.slow
def test_proxy_op_count_independent_of_batch_and_frames():
    """The ops one encoder layer dispatches (forward and backward) are the same at every batch and frame
    count: no Python loop over videos or frames (each op is a kernel launch on a GPU). A layer's ops are the
    difference between a 3-layer and a 2-layer tower (a middle layer; the last layer's patch branch gets no
    backward)."""
    per_layer = {}
    for batch, frames in ((2, 2), (5, 2), (2, 7), (5, 7)):
        f3, b3 = _layer_ops(batch, frames, 3)
        f2, b2 = _layer_ops(batch, frames, 2)
        per_layer[batch, frames] = (f3 - f2, b3 - b2)
        assert sum((f3 - f2).values()) > 0 and sum((b3 - b2).values()) > 0
        assert not (f2 - f3) and not (b2 - b3)  # a layer only adds ops
    first = per_layer[2, 2]
    for key, counts in per_layer.items():
        assert counts == first, key
    # No per-video product left: two SDPA calls per layer forward, whatever the batch.
    assert sum(n for op, n in first[0].items() if "scaled_dot_product" in op) == 2
    # Batch 1 may turn a few reshapes into views (size-1 dims): never more ops than batch 2.
    f3, b3 = _layer_ops(1, 2, 3)
    f2, b2 = _layer_ops(1, 2, 2)
    assert sum((f3 - f2).values()) <= sum(first[0].values())
    assert sum((b3 - b2).values()) <= sum(first[1].values())


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = tiny(vision={"num_hidden_layers": 1})  # one layer: inductor's C++ build dominates the time
    with torch.no_grad():
        model.vision_model.embeddings.temporal_embedding.normal_()
    pixels = torch.randn(2, 5, 3, 32, 32)
    compiled = torch.compile(model.vision_model, fullgraph=True)  # fullgraph: no graph break anywhere
    with torch.no_grad():
        eager = model.vision_model(pixels)
        out = compiled(pixels)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)


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
