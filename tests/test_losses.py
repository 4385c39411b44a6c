"""Losses against direct, loop-based computations of their definitions (reference section 3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipvip import losses

B, D = 5, 8


def _unit(x: torch.Tensor) -> list[list[float]]:
    """L2-normalised rows as Python lists (the loop reference works on plain floats)."""
    out = []
    for row in x.tolist():
        n = math.sqrt(sum(v * v for v in row))
        out.append([v / n for v in row])
    return out


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _nll(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    m = max(logits)
    lse = m + math.log(sum(math.exp(v - m) for v in logits))
    return lse - logits[target]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def loop_info_nce(x, y, scale, y_valid=None):
    """Symmetric InfoNCE with optional missing y rows, one row at a time, per the documented rule."""
    xs, ys = _unit(x), _unit(y)
    n = len(xs)
    valid = [True] * n if y_valid is None else [bool(v) for v in y_valid]
    present = [j for j in range(n) if valid[j]]
    y2x = [_nll([scale * _dot(ys[i], xs[j]) for j in range(n)], i) for i in present]
    x2y = [_nll([scale * _dot(xs[i], ys[j]) for j in present], present.index(i)) for i in present]
    return _mean(y2x) + _mean(x2y)


def loop_vsc(v, s, c, scale, has_caption=None):
    """L(V<->S,C): t2v subtitle CE, t2v caption CE, and the two v2t rows per video (target 0)."""
    vs_, ss, cs = _unit(v), _unit(s), _unit(c)
    n = len(vs_)
    valid = [True] * n if has_caption is None else [bool(h) for h in has_caption]
    t2v_s = _mean([_nll([scale * _dot(ss[i], vs_[j]) for j in range(n)], i) for i in range(n)])
    t2v_c = _mean([_nll([scale * _dot(cs[i], vs_[j]) for j in range(n)], i) for i in range(n) if valid[i]])
    rows_s, rows_c = [], []
    for i in range(n):
        negatives = [scale * _dot(vs_[i], ss[j]) for j in range(n) if j != i]
        negatives += [scale * _dot(vs_[i], cs[j]) for j in range(n) if j != i and valid[j]]
        rows_s.append(_nll([scale * _dot(vs_[i], ss[i])] + negatives, 0))
        if valid[i]:
            rows_c.append(_nll([scale * _dot(vs_[i], cs[i])] + negatives, 0))
    return t2v_s + t2v_c + _mean(rows_s) + _mean(rows_c)


def loop_variant(variant, v, f, s, c, scale, has_caption=None):
    if variant == "vs":
        return loop_info_nce(v, s, scale)
    if variant == "a":
        return loop_info_nce(v, s, scale) + loop_info_nce(f, c, scale, has_caption)
    if variant == "b":
        return loop_info_nce(v, s, scale) + loop_info_nce(v, c, scale, has_caption)
    if variant == "c":
        return (
            loop_info_nce(v, s, scale)
            + loop_info_nce(v, c, scale, has_caption)
            + loop_info_nce(f, c, scale, has_caption)
        )
    assert variant == "d"
    return loop_vsc(v, s, c, scale, has_caption) + loop_info_nce(f, c, scale, has_caption)


def _features(seed: int = 0, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, D, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.slow  # importing transformers' CLIP module takes ~5 s on a cold start
def test_info_nce_matches_loop_and_twice_hf_clip_loss():
    v, s, _, _ = _features()
    logit_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    got = losses.info_nce(v, s, logit_scale)
    assert got.item() == pytest.approx(loop_info_nce(v, s, 20.0), rel=1e-10)
    # transformers' clip_loss is the mean of the two directions; ours is their sum.
    from transformers.models.clip import modeling_clip

    # Named clip_loss before transformers 5, image_text_contrastive_loss since.
    clip_loss = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    logits = 20.0 * F.normalize(s, dim=-1) @ F.normalize(v, dim=-1).t()
    assert got.item() == pytest.approx(2.0 * clip_loss(logits).item(), rel=1e-10)


def test_info_nce_is_idempotent_on_normalised_features():
    v, s, _, _ = _features(1)
    v.requires_grad_(True)
    vn, sn = F.normalize(v, dim=-1), F.normalize(s, dim=-1)
    a = losses.info_nce(vn, sn, 2.0)
    b = losses.info_nce(vn, sn, 2.0, normalize=False)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    (ga,) = torch.autograd.grad(a, v, retain_graph=True)
    (gb,) = torch.autograd.grad(b, v)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("variant", ["vs", "a", "b", "c", "d"])
@pytest.mark.parametrize(
    "has_caption",
    [None, [True] * B, [True, False, True, True, False], [False, True, False, False, False], [False] * B],
    ids=["none", "all", "two-missing", "one-present", "no-captions"],
)
def test_ocl_variants_match_loop(variant, has_caption):
    v, f, s, c = _features(3)
    scale = 7.5
    logit_scale = torch.tensor(math.log(scale), dtype=torch.float64, requires_grad=True)
    feats = [t.clone().requires_grad_(True) for t in (v, f, s, c)]
    hc = None if has_caption is None else torch.tensor(has_caption)
    total, parts = losses.ocl_loss(
        variant,
        video=feats[0],
        frame=feats[1],
        subtitle=feats[2],
        caption=feats[3],
        logit_scale=logit_scale,
        has_caption=hc,
    )
    expected = loop_variant(variant, v, f, s, c, scale, has_caption if variant != "vs" else None)
    assert total.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-12)
    assert set(parts) == set(losses.OCL_VARIANTS[variant])
    total.backward()
    for t in feats + [logit_scale]:
        if t.grad is not None:
            assert torch.isfinite(t.grad).all()
    assert feats[0].grad is not None and logit_scale.grad is not None


def test_vsc_row_construction_with_all_captions_equals_reference_layout():
    """All captions present: equals the reference's cat([pos, v.s_j!=i, v.c_j!=i]) rows built by hand."""
    v, _, s, c = _features(5)
    got = losses.vsc_loss(v, s, c, 0.0)  # scale exp(0) = 1
    assert got.item() == pytest.approx(loop_vsc(v, s, c, 1.0), rel=1e-10)
    # With no caption at all, L(V<->S,C) keeps only subtitle rows: it must reduce to plain L(V<->S).
    no_caps = torch.zeros(B, dtype=torch.bool)
    vsc_only = losses.vsc_loss(v, s, c, 0.0, has_caption=no_caps)
    assert vsc_only.item() == pytest.approx(losses.info_nce(v, s, 0.0).item(), rel=1e-10)


def test_missing_caption_features_do_not_matter():
    """A missing caption's features (whatever the placeholder) must not change the loss or get gradient."""
    v, f, s, c = _features(7)
    hc = torch.tensor([True, True, False, True, True])
    c2 = c.clone()
    c2[2] = torch.randn(D, dtype=torch.float64) * 50
    c2.requires_grad_(True)
    for variant in ("a", "b", "c", "d"):
        a, _ = losses.ocl_loss(variant, video=v, frame=f, subtitle=s, caption=c, logit_scale=2.0, has_caption=hc)
        b, _ = losses.ocl_loss(variant, video=v, frame=f, subtitle=s, caption=c2, logit_scale=2.0, has_caption=hc)
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
        (g,) = torch.autograd.grad(b, c2)
        assert torch.all(g[2] == 0)


def test_float32_gradients_finite_and_batch_of_one():
    v, f, s, c = (t.float() for t in _features(9, batch=1))
    ls = torch.tensor(losses.LOGIT_SCALE_INIT, requires_grad=True)
    total, _ = losses.ocl_loss("d", video=v, frame=f, subtitle=s, caption=c, logit_scale=ls)
    total.backward()
    assert total.item() == pytest.approx(0.0, abs=1e-6)  # one pair: every CE has a single class
    assert torch.isfinite(ls.grad)


def test_image_text_loss_is_info_nce():
    v, s, _, _ = _features(11)
    assert losses.image_text_loss(v, s, 1.0).item() == pytest.approx(loop_info_nce(v, s, math.e), rel=1e-10)


def test_bad_inputs_raise_clear_errors():
    v, f, s, c = _features(2)
    with pytest.raises(ValueError, match="unknown OCL variant"):
        losses.ocl_loss("e", video=v, subtitle=s, caption=c, frame=f, logit_scale=0.0)
    with pytest.raises(ValueError, match="needs caption"):
        losses.ocl_loss("d", video=v, subtitle=s, frame=f, logit_scale=0.0)
    with pytest.raises(ValueError, match="frame"):
        losses.ocl_loss("a", video=v, subtitle=s, caption=c, logit_scale=0.0)
    with pytest.raises(ValueError, match="subtitle has batch 4"):
        losses.ocl_loss("vs", video=v, subtitle=s[:4], logit_scale=0.0)
    with pytest.raises(ValueError, match="has_caption has 3"):
        losses.vsc_loss(v, s, c, 0.0, has_caption=torch.ones(3, dtype=torch.bool))


def test_clamp_logit_scale():
    p = torch.nn.Parameter(torch.tensor(9.0))
    losses.clamp_logit_scale_(p)
    assert p.item() == pytest.approx(math.log(200.0))
    p.data.fill_(-1.0)
    losses.clamp_logit_scale_(p)
    assert p.item() == 0.0
    p.data.fill_(3.0)
    losses.clamp_logit_scale_(p)
    assert p.item() == 3.0
