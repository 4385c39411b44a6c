"""Parameter groups, AdamW equivalence with the HF-style update, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipvip.train import optim


class Toy(nn.Module):
    """Parameter names that exercise every rule (HF CLIP spellings and a BERT-style ``LayerNorm``)."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.encoder = nn.ModuleDict(
            {
                "fc": nn.Linear(3, 3),  # encoder.fc.weight (decay), encoder.fc.bias (no decay)
                "layer_norm1": nn.LayerNorm(3),  # HF name: weight IS decayed, bias is not
                "LayerNorm": nn.LayerNorm(3),  # BERT name: both exempt
            }
        )
        self.frozen = nn.Linear(3, 3)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


def _names(groups):
    return [sorted(g["names"]) for g in groups]


def test_groups_without_prefix():
    groups = optim.param_groups(Toy(), weight_decay=0.2, lr=1e-6)
    assert _names(groups) == [
        ["encoder.fc.weight", "encoder.layer_norm1.weight"],
        [
            "encoder.LayerNorm.bias",
            "encoder.LayerNorm.weight",
            "encoder.fc.bias",
            "encoder.layer_norm1.bias",
            "logit_scale",
        ],
    ]
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    assert [g["lr"] for g in groups] == [1e-6, 1e-6]


def test_groups_with_substring_prefix_didemo_b16():
    # DiDeMo B/16: 10x LR on parameters whose name contains "logit_scale" (no-decay, so group 1 only).
    groups = optim.param_groups(Toy(), weight_decay=0.2, lr=1e-6, lr_mul=10.0, lr_mul_prefix="logit_scale")
    assert _names(groups) == [
        ["logit_scale"],
        ["encoder.fc.weight", "encoder.layer_norm1.weight"],
        ["encoder.LayerNorm.bias", "encoder.LayerNorm.weight", "encoder.fc.bias", "encoder.layer_norm1.bias"],
    ]
    assert [g["lr"] for g in groups] == pytest.approx([1e-5, 1e-6, 1e-6])
    assert [g["weight_decay"] for g in groups] == [0.0, 0.2, 0.0]
    # Substring, not prefix: "fc" matches "encoder.fc.*" although the name starts with "encoder".
    groups = optim.param_groups(Toy(), weight_decay=0.1, lr=1.0, lr_mul=2.0, lr_mul_prefix="fc")
    assert _names(groups)[:2] == [["encoder.fc.weight"], ["encoder.fc.bias"]]
    assert [g["lr"] for g in groups] == [2.0, 2.0, 1.0, 1.0]


def test_all_frozen_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        optim.param_groups(model, weight_decay=0.1, lr=1.0)


def test_groups_on_tiny_clipvip():
    import clipvip

    model = clipvip.CLIPViP(clipvip.CLIPViPConfig.from_name("clipvip-tiny"))
    for p in model.text_model.parameters():  # frozen text tower
        p.requires_grad_(False)
    groups = optim.param_groups(model, weight_decay=0.2, lr=1e-6)
    decay, no_decay = (set(g["names"]) for g in groups)
    # Checked by hand against the reference rule: LayerNorm weights with HF names are decayed,
    # the new CLIP-ViP parameters are decayed, biases and logit_scale are not.
    for name in (
        "vision_model.pre_layrnorm.weight",
        "vision_model.post_layernorm.weight",
        "vision_model.embeddings.added_cls",
        "vision_model.embeddings.temporal_embedding",
        "vision_model.embeddings.class_embedding",
        "visual_projection.weight",
        "text_projection.weight",
    ):
        assert name in decay, name
    for name in ("logit_scale", "vision_model.pre_layrnorm.bias", "vision_model.post_layernorm.bias"):
        assert name in no_decay, name
    assert not any(n.startswith("text_model.") for n in decay | no_decay)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_adamw_update_by_hand_and_closeness_to_hf_style():
    """torch AdamW with our groups, against the update written out; and its distance to the reference's
    HF-style AdamW (eps added to the uncorrected sqrt(v), decay applied after the step)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours, hf = dict(start), dict(start)
    lr, wd, (b1, b2), eps = 1e-3, 0.2, (0.9, 0.98), 1e-6
    opt = optim.build_optimizer(model, lr=lr, weight_decay=wd)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    m = {n: torch.zeros_like(p) for n, p in start.items()}
    v = {n: torch.zeros_like(p) for n, p in start.items()}
    x = torch.randn(5, 4, dtype=torch.float64)
    for t in range(1, 4):
        opt.zero_grad()
        model(x * t).pow(2).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        for n in start:
            decay = 0.0 if "bias" in n else wd  # the bias is in the no-decay group
            m[n] = b1 * m[n] + (1 - b1) * grads[n]
            v[n] = b2 * v[n] + (1 - b2) * grads[n] ** 2
            # torch: decay first, eps added to the bias-corrected sqrt(v).
            ours[n] = ours[n] * (1 - lr * decay) - (lr / bc1) * m[n] / (v[n].sqrt() / math.sqrt(bc2) + eps)
            # HF-style (reference optimization/adamw.py): step first, then decay.
            hf[n] = hf[n] - (lr * math.sqrt(bc2) / bc1) * m[n] / (v[n].sqrt() + eps)
            hf[n] = hf[n] - lr * decay * hf[n]
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ours[n], atol=1e-12, rtol=1e-12)
        # Differences are O(lr^2 * wd) and O(lr * eps / sqrt(v)): negligible at the recipes' lr 1e-6.
        torch.testing.assert_close(p.detach(), hf[n], atol=1e-6, rtol=0)
        assert not torch.equal(p.detach(), start[n])


def _closed_form(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_warmup_cosine_schedule_values():
    model = nn.Linear(2, 2)
    opt = optim.build_optimizer(model, lr=2.0, weight_decay=0.0, lr_mul=10.0, lr_mul_prefix="bias")
    total = optim.steps_for(epochs=2, dataset_len=1000, global_batch=16)
    assert total == 125  # ceil(2 * 1000 / 16)
    warmup = optim.warmup_steps_for(total)
    assert warmup == 1  # int(0.01 * 125)
    total, warmup = 40, 4  # bigger warmup to see the ramp
    sched = optim.build_scheduler(opt, warmup_steps=warmup, total_steps=total)
    seen = []
    for k in range(total):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # The k-th optimiser step runs at the reference's f(global_step = k + 1).
    assert seen[0] == pytest.approx([10 * 2.0 * 0.25, 2.0 * 0.25])  # bias group (x10) then weight group
    assert seen[2] == pytest.approx([20.0 * 0.75, 2.0 * 0.75])
    assert seen[3][1] == pytest.approx(2.0)  # step 4 = warmup: cosine starts at 1
    for k in (5, 13, 21, 30, 39):
        assert seen[k][1] == pytest.approx(2.0 * _closed_form(k + 1, warmup, total), abs=1e-12)
        assert seen[k][0] == pytest.approx(20.0 * _closed_form(k + 1, warmup, total), abs=1e-12)
    assert seen[21][1] == pytest.approx(1.0)  # halfway through the cosine: f(22) = 0.5
    assert seen[-2][1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 35 / 36)))
    assert seen[-1][1] == 0.0  # f(total) = 0: the reference's last step too (it floors it to 1e-8)


def test_constant_linear_and_zero_warmup():
    assert optim.lr_factor(0, 0, 10) == 1.0
    assert optim.lr_factor(1, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert optim.lr_factor(10, 0, 10) == pytest.approx(0.0, abs=1e-12)
    assert optim.lr_factor(3, 4, 10, "constant") == 0.75
    assert optim.lr_factor(7, 4, 10, "constant") == 1.0
    assert optim.lr_factor(7, 4, 10, "linear") == pytest.approx(0.5)
    assert optim.lr_factor(50, 4, 10) == 0.0  # past the end: clamped, never negative
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.lr_factor(1, 0, 10, "step")


def test_scheduler_state_resumes_exactly():
    def make():
        model = nn.Linear(2, 2)
        opt = optim.build_optimizer(model, lr=1.0, weight_decay=0.0)
        return opt, optim.build_scheduler(opt, 3, 20)

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]


def test_bad_schedule_arguments():
    opt = optim.build_optimizer(nn.Linear(2, 2), lr=1.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        optim.build_scheduler(opt, 0, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.build_scheduler(opt, 11, 10)
    with pytest.raises(ValueError, match="global_batch"):
        optim.steps_for(1, 10, 0)


def test_lr_mult_lands_in_optimiser_groups():
    """optim.lr_mult {name substring: multiplier} gives each key its own decay / no-decay groups at lr*mult."""
    import clipvip

    model = clipvip.CLIPViP(clipvip.CLIPViPConfig.from_name("clipvip-tiny"))
    opt = optim.build_optimizer(model, lr=1e-3, weight_decay=0.05,
                                lr_mult={"temporal_embedding": 10, "added_cls": 3})
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    all_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == all_names  # every trainable parameter exactly once
    assert sum(len(g["names"]) for g in opt.param_groups) == len(all_names)
    for name, group in by_name.items():
        want = 1e-2 if "temporal_embedding" in name else 3e-3 if "added_cls" in name else 1e-3
        assert group["lr"] == pytest.approx(want), name
    assert any("temporal_embedding" in n for n in by_name)
    # the scheduler scales every group by the same factor, so the ratio survives
    sched = optim.build_scheduler(opt, warmup_steps=2, total_steps=10)
    opt.step()  # no gradients: parameters unchanged
    sched.step()
    te = next(g for g in opt.param_groups if g["lr_mult_key"] == "temporal_embedding")
    rest = next(g for g in opt.param_groups if g["lr_mult_key"] == "")
    assert te["lr"] / rest["lr"] == pytest.approx(10.0)


def test_lr_mult_errors_name_the_key():
    with pytest.raises(ValueError, match="temporal_embeding"):
        optim.param_groups(Toy(), weight_decay=0.1, lr=1.0, lr_mult={"temporal_embeding": 10})
    with pytest.raises(ValueError, match="several"):
        optim.param_groups(Toy(), weight_decay=0.1, lr=1.0, lr_mult={"fc": 2, "fc.weight": 3})
    with pytest.raises(ValueError, match="positive"):
        optim.param_groups(Toy(), weight_decay=0.1, lr=1.0, lr_mult={"fc": 0})


def test_lr_mult_from_recipe_reaches_the_optimizer():
    from clipvip.train.config import ConfigError, load_config

    cfg = load_config({"optim": {"lr_mult": {"temporal_embedding": 10}}})
    assert cfg.optim.lr_mult == {"temporal_embedding": 10.0}
    assert load_config(None, ["optim.lr_mult={temporal_embedding: 5}"]).optim.lr_mult == {"temporal_embedding": 5.0}
    with pytest.raises(ConfigError, match="optim.lr_mult"):
        load_config(None, ["optim.lr_mult=10"])
