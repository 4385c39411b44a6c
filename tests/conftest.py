"""Shared test fixtures: the real assets in ../shared (skipped when absent) and tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("CLIPVIP_ASSETS", REPO.parent / "shared" / "assets"))


def asset(relpath: str) -> Path:
    """Path of a file under ../shared/assets, or skip the calling test with the reason."""
    path = ASSETS / relpath
    if not path.exists():
        pytest.skip(f"real asset {relpath} not found under {ASSETS} (../shared is absent on this machine)")
    return path


@pytest.fixture
def assets_dir() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"real assets not found at {ASSETS} (../shared is absent on this machine)")
    return ASSETS


@pytest.fixture
def bpe_path() -> Path:
    return asset("clip/bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    torch.manual_seed(0)
    yield
