"""clipvip: CLIP-ViP video-text retrieval, installable, tested and fast.

The public surface is small on purpose: ``CLIPViPConfig``, ``CLIPViP`` and ``load``. Heavy modules are
imported on first use so that ``import clipvip`` and ``clipvip --help`` stay quick.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CLIPViP", "CLIPViPConfig", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "CLIPViPConfig":
        from clipvip.config import CLIPViPConfig

        return CLIPViPConfig
    if name == "CLIPViP":
        from clipvip.model.clipvip import CLIPViP

        return CLIPViP
    if name == "load":
        from clipvip.pipeline import load

        return load
    raise AttributeError(f"module 'clipvip' has no attribute {name!r}")
