"""The benchmark scripts' model builders still produce valid configs (strict config validation once broke
them: a 1000-word text vocabulary with CLIP's special-token ids outside it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("width", ["b32", "b16"])
def test_attention_benchmark_builds_its_models(width: str) -> None:
    mod = _module("attention")
    model, x = mod.build(mod.Setting(width=width, frames=1, layers=1, batch=1, device="cpu", dtype="fp32"), "proxy")
    assert x.shape == (1, 1, 3, 224, 224) and model.config.vision.num_hidden_layers == 1


def test_ops_benchmark_builds_its_model() -> None:
    model = _module("ops").build("b32", 1, None)
    assert model.config.text.vocab_size == 1000
