"""``clipvip demo``: the offline end-to-end run (synthetic world -> image-text CLIP -> CLIP-ViP
post-pretraining -> fine-tuning -> evaluation, ablations, report, search). See ``docs/demo.md``."""

from __future__ import annotations

from typing import Any

__all__ = ["run_demo"]


def run_demo(out_dir: Any, quick: bool = False, seed: int = 0, progress: bool = True, **kwargs: Any) -> dict:
    """Run the demo into ``out_dir``; see :func:`clipvip.demo.run.run_demo`."""
    from clipvip.demo.run import run_demo as _run

    return _run(out_dir, quick=quick, seed=seed, progress=progress, **kwargs)
