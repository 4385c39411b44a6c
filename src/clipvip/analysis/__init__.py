"""The paper's analysis tools, beside the model: what users with their own pretraining data need.

- :mod:`clipvip.analysis.captions`: auxiliary captions C of each clip's middle frame F (``clipvip caption``);
- :mod:`clipvip.analysis.domain_gap`: the language domain gap between corpora, K-means + NMI
  (``clipvip domain-gap``); :func:`domain_gap_nmi` is the pure function;
- :mod:`clipvip.analysis.curves`: downstream R@k against post-pretraining steps (``clipvip curve``);
- :mod:`clipvip.analysis.order`: order accuracy and pair R@1 on twin clips (a clip and its time reversal);
- :mod:`clipvip.analysis.plots`: headless figures (curves, NMI heat-map, retrieval sheet).

Submodules are imported on first use so that ``import clipvip.analysis`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["domain_gap_nmi", "caption_clips", "merge_captions", "run_domain_gap", "run_curve",
           "plot_curves", "plot_nmi_heatmap", "retrieval_sheet", "order_accuracy", "pair_recall_at_1"]

_WHERE = {
    "domain_gap_nmi": "domain_gap",
    "run_domain_gap": "domain_gap",
    "caption_clips": "captions",
    "merge_captions": "captions",
    "run_curve": "curves",
    "plot_curves": "plots",
    "plot_nmi_heatmap": "plots",
    "retrieval_sheet": "plots",
    "order_accuracy": "order",
    "pair_recall_at_1": "order",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'clipvip.analysis' has no attribute {name!r}")
