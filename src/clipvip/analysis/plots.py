"""Headless matplotlib figures for the paper's analyses: curves, NMI heat-map, retrieval sheet.

Every function draws on its own ``Figure`` (never pyplot's global state, so concurrent callers and
notebooks cannot trample each other), uses the Agg canvas (no display needed), and writes the PNG
atomically: a reader never sees half a file, and a killed run leaves the previous figure intact.
The pixel size is ``figsize * dpi`` exactly (no ``bbox_inches="tight"``), so callers and tests can rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import atomic_open

__all__ = ["plot_curves", "plot_nmi_heatmap", "retrieval_sheet", "save_figure"]


def _new_figure(width_px: int, height_px: int, dpi: int = 100) -> Any:
    """A stand-alone Agg figure of exactly ``width_px`` x ``height_px`` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out_png: str | Path) -> Path:
    """Render ``fig`` to ``out_png`` atomically (:mod:`clipvip.atomic`)."""
    out = Path(out_png)
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=fig.dpi)
    return out


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    out_png: str | Path,
    *,
    metric: str = "R@1",
    xlabel: str = "post-pretraining steps",
    title: str | None = None,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Line plot of a downstream metric against post-pretraining steps, one line per run (paper Fig. 1).

    ``series`` maps a run label (e.g. the pretraining corpus) to ``(step, value)`` points; points are
    sorted by step so a resumed, out-of-order table still draws a clean line.
    """
    if not series:
        raise ValueError("plot_curves: no series to plot")
    fig = _new_figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    for label, points in series.items():
        pts = sorted((float(s), float(v)) for s, v in points)
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_nmi_heatmap(
    names: Sequence[str],
    matrix: Any,
    out_png: str | Path,
    *,
    title: str = "Language domain gap (NMI, higher = larger gap)",
    size: tuple[int, int] | None = None,
) -> Path:
    """Heat-map of the pairwise NMI matrix with the values written in the cells.

    The colour scale is fixed to [0, 1] (the range of NMI) so maps from different runs compare by eye.
    NaN cells (pairs not computed) are left blank. The default size grows with the number of corpora.
    """
    m = np.asarray(matrix, dtype=float)
    n = len(names)
    if m.shape != (n, n):
        raise ValueError(f"plot_nmi_heatmap: matrix shape {m.shape} does not match {n} names")
    if size is None:
        side = max(480, 120 + 90 * n)
        size = (side + 120, side)
    fig = _new_figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(x) for x in names], rotation=30, ha="right")
    ax.set_yticklabels([str(x) for x in names])
    for i in range(n):
        for j in range(n):
            if math.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                        color="black" if m[i, j] > 0.6 else "white", fontsize="small")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="NMI")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, out_png)


def _default_frame_loader(path: str) -> np.ndarray:
    from clipvip.analysis.captions import middle_frame

    return middle_frame(path)


def retrieval_sheet(
    query: str,
    results: Sequence[tuple[str, float]],
    out_png: str | Path,
    *,
    tile: int = 200,
    frame_loader: Callable[[str], np.ndarray] | None = None,
) -> Path:
    """One row of the top-k videos' middle frames for a text query, each titled with rank, name and score.

    ``results`` is ``[(video_path, score), ...]`` best first (what search returns). The sheet is
    ``len(results) * tile`` pixels wide and ``tile + 70`` high. A video that cannot be decoded gets a grey
    tile saying so instead of failing the whole sheet, because a sheet is a report, not a pipeline stage.
    """
    if not results:
        raise ValueError("retrieval_sheet: no results to draw")
    load = frame_loader or _default_frame_loader
    k = len(results)
    header = 40
    footer = 30
    fig = _new_figure(k * tile, tile + header + footer)
    fig.text(0.5, 1.0 - 6 / (tile + header + footer), f"query: {query}", ha="center", va="top",
             fontsize="medium", wrap=True)
    height = tile + header + footer
    for i, (path, score) in enumerate(results):
        ax = fig.add_axes((i / k + 0.01 / k, footer / height, 0.98 / k, tile / height))
        ax.set_xticks([])
        ax.set_yticks([])
        try:
            frame = load(str(path))
            ax.imshow(frame, aspect="auto")
        except Exception as exc:  # noqa: BLE001 - any decode problem becomes a labelled grey tile
            ax.set_facecolor("0.8")
            ax.text(0.5, 0.5, f"unreadable\n{type(exc).__name__}", ha="center", va="center",
                    transform=ax.transAxes, fontsize="small")
        ax.set_title(f"#{i + 1}  {score:.3f}", fontsize="small")
        ax.set_xlabel(Path(str(path)).name, fontsize="x-small")
    return save_figure(fig, out_png)
