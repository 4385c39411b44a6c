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

__all__ = ["plot_curves", "plot_nmi_heatmap", "plot_seed_curves", "retrieval_sheet", "save_figure"]


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


#: Line styles and markers cycled per series, so that two identical curves stay visible (a dashed line
#: with square markers over a solid one with circles) instead of one hiding the other.
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of series ``i``: all three change together, and markers shrink with
    ``i`` so that coincident points show as nested shapes."""
    return {"color": f"C{i % 10}", "linestyle": _STYLES[i % len(_STYLES)], "marker": _MARKERS[i % len(_MARKERS)],
            "markersize": max(3.0, 8.0 - 1.2 * (i % 4)), "markerfacecolor": "none" if i % 2 else None}


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    out_png: str | Path,
    *,
    metric: str = "R@1",
    xlabel: str = "post-pretraining steps",
    title: str | None = None,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Line plot of a metric against steps, one line per run (paper Fig. 1, validation curves).

    ``series`` maps a run label (e.g. the pretraining corpus) to ``(step, value)`` points; points are
    sorted by step so a resumed, out-of-order table still draws a clean line. Each series gets its own
    colour, line style and marker (:func:`_style`), so identical curves do not hide each other.
    """
    if not series:
        raise ValueError("plot_curves: no series to plot")
    fig = _new_figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, points) in enumerate(series.items()):
        pts = sorted((float(s), float(v)) for s, v in points)
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=str(label), linewidth=1.6, **_style(i))
    return _finish_curves(fig, ax, out_png, xlabel=xlabel, metric=metric, title=title)


def _finish_curves(fig: Any, ax: Any, out_png: str | Path, *, xlabel: str, metric: str, title: str | None) -> Path:
    """Labels, grid, optional title and legend of a curve plot, then save it (shared by the curve plots)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_seed_curves(
    curves: Mapping[str, Mapping[Any, Sequence[tuple[float, float]]]],
    out_png: str | Path,
    *,
    metric: str = "R@1",
    xlabel: str = "fine-tuning steps",
    title: str | None = None,
    size: tuple[int, int] = (720, 480),
) -> Path:
    """Curves of several runs per group (e.g. attention mode x seed): per group, the mean over its runs as a
    thick line with markers, a band from the lowest to the highest run, and each run as a thin line.

    ``curves`` maps a group label to ``{run label (seed): [(step, value), ...]}``. The mean is taken at the
    steps every run of the group has. Groups differ in colour, line style and marker, so two groups with
    identical curves are both visible. A group with a single run is drawn as that run (no band).
    """
    groups = {str(g): {k: sorted((float(s), float(v)) for s, v in pts) for k, pts in runs.items() if pts}
              for g, runs in curves.items()}
    groups = {g: runs for g, runs in groups.items() if runs}
    if not groups:
        raise ValueError("plot_seed_curves: no curves to plot")
    fig = _new_figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    for i, (group, runs) in enumerate(groups.items()):
        style = _style(i)
        for pts in runs.values():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=0.7, alpha=0.35)
        common = sorted(set.intersection(*(set(x for x, _ in pts) for pts in runs.values())))
        if not common:
            continue
        table = np.array([[dict(pts)[x] for x in common] for pts in runs.values()])
        mean = table.mean(axis=0)
        if len(runs) > 1:
            ax.fill_between(common, table.min(axis=0), table.max(axis=0), color=style["color"], alpha=0.12,
                            linewidth=0)
        label = f"{group} (mean of {len(runs)}, band min-max)" if len(runs) > 1 else group
        ax.plot(common, mean, label=label, linewidth=2.2, **style)
    return _finish_curves(fig, ax, out_png, xlabel=xlabel, metric=metric, title=title)


def plot_nmi_heatmap(
    names: Sequence[str],
    matrix: Any,
    out_png: str | Path,
    *,
    title: str = "Language domain gap (NMI, higher = larger gap)",
    size: tuple[int, int] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Heat-map of the pairwise NMI matrix with the values written in the cells.

    The colour scale is fitted to the finite values (``vmin``/``vmax`` default to their minimum and
    maximum): NMI between text corpora is often below 0.2, and a fixed [0, 1] scale would paint every
    cell the same dark colour. Pass ``vmin=0, vmax=1`` to compare maps from different runs by eye; the
    colour bar always says which scale is used. NaN cells (pairs not computed) are left blank. The
    default size grows with the number of corpora.
    """
    m = np.asarray(matrix, dtype=float)
    n = len(names)
    if m.shape != (n, n):
        raise ValueError(f"plot_nmi_heatmap: matrix shape {m.shape} does not match {n} names")
    finite = m[np.isfinite(m)]
    lo = float(finite.min()) if vmin is None and finite.size else (0.0 if vmin is None else float(vmin))
    hi = float(finite.max()) if vmax is None and finite.size else (1.0 if vmax is None else float(vmax))
    if not hi > lo:  # one value (or all equal): a small window around it
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    if size is None:
        side = max(480, 120 + 90 * n)
        size = (side + 120, side)
    fig = _new_figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), vmin=lo, vmax=hi, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(x) for x in names], rotation=30, ha="right")
    ax.set_yticklabels([str(x) for x in names])
    digits = 3 if hi - lo < 0.5 else 2
    for i in range(n):
        for j in range(n):
            if math.isfinite(m[i, j]):
                bright = (m[i, j] - lo) / (hi - lo) > 0.6  # viridis is light at the top of its scale
                ax.text(j, i, f"{m[i, j]:.{digits}f}", ha="center", va="center",
                        color="black" if bright else "white", fontsize="small")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"NMI (scale {lo:.3g} to {hi:.3g})")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, out_png)


def _default_frame_loader(path: str) -> np.ndarray:
    from clipvip.analysis.captions import middle_frame

    return middle_frame(path)


def _strip_loader(num_frames: int) -> Callable[[str], np.ndarray]:
    def load(path: str) -> np.ndarray:
        from clipvip.data.video import load_frames

        return load_frames(path, num_frames=num_frames).numpy()

    return load


def _mark(ax: Any, colour: str = "#1a9641", width: float = 4.0) -> None:
    """A thick coloured frame around an axes: the expected result."""
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
        spine.set_visible(True)


def retrieval_sheet(
    query: str,
    results: Sequence[tuple[str, float]],
    out_png: str | Path,
    *,
    tile: int = 200,
    frame_loader: Callable[[str], np.ndarray] | None = None,
    num_frames: int = 1,
    expected: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """The top-k videos of a text query, best first, with rank, score and file name.

    ``results`` is ``[(video_path, score), ...]`` best first (what search returns). With ``num_frames=1``
    the sheet is one row of middle frames, ``len(results) * tile`` pixels wide and ``tile + 70`` high.
    With ``num_frames > 1`` each result is a row showing a strip of ``num_frames`` uniformly sampled frames
    left to right (when the query is about the order of events, one frame cannot show whether a clip
    matches): ``num_frames * tile + 260`` wide, ``len(results) * (tile + 24) + 50`` high. The result whose
    path (or file name) equals ``expected`` is framed in green and labelled "expected"; ``notes`` maps a
    path or file name to a short label printed under it (e.g. "twin of expected (reversed)").

    ``frame_loader(path)`` returns ``[H, W, 3]`` (one frame) or ``[T, H, W, 3]`` (a strip); the default
    decodes the middle frame or ``num_frames`` uniform frames. A video that cannot be decoded gets a grey
    tile saying so instead of failing the whole sheet, because a sheet is a report, not a pipeline stage.
    """
    if not results:
        raise ValueError("retrieval_sheet: no results to draw")
    if num_frames < 1:
        raise ValueError(f"retrieval_sheet: num_frames must be >= 1, got {num_frames}")
    load = frame_loader or (_default_frame_loader if num_frames == 1 else _strip_loader(num_frames))

    def is_expected(path: str) -> bool:
        return expected is not None and (str(path) == str(expected) or Path(str(path)).name == Path(str(expected)).name)

    def note(path: str) -> str:
        if not notes:
            return ""
        return str(notes.get(str(path)) or notes.get(Path(str(path)).name) or "")

    def unreadable(ax: Any, exc: Exception) -> None:
        ax.set_facecolor("0.8")
        ax.text(0.5, 0.5, f"unreadable\n{type(exc).__name__}", ha="center", va="center",
                transform=ax.transAxes, fontsize="small")

    k = len(results)
    if num_frames == 1:
        header, footer = 40, 30
        height = tile + header + footer
        fig = _new_figure(k * tile, height)
        fig.text(0.5, 1.0 - 6 / height, f"query: {query}", ha="center", va="top", fontsize="medium", wrap=True)
        for i, (path, score) in enumerate(results):
            ax = fig.add_axes((i / k + 0.01 / k, footer / height, 0.98 / k, tile / height))
            ax.set_xticks([])
            ax.set_yticks([])
            try:
                frame = np.asarray(load(str(path)))
                ax.imshow(frame[frame.shape[0] // 2] if frame.ndim == 4 else frame, aspect="auto")
            except Exception as exc:  # noqa: BLE001 - any decode problem becomes a labelled grey tile
                unreadable(ax, exc)
            mark = "  (expected)" if is_expected(path) else ""
            ax.set_title(f"#{i + 1}  {score:.3f}{mark}", fontsize="small")
            extra = note(path)
            ax.set_xlabel(Path(str(path)).name + (f"\n{extra}" if extra else ""), fontsize="x-small")
            if mark:
                _mark(ax)
        return save_figure(fig, out_png)

    label_w, header, gap = 260, 50, 24
    width = num_frames * tile + label_w
    height = k * (tile + gap) + header
    fig = _new_figure(width, height)
    fig.text(0.5, 1.0 - 8 / height, f"query: {query}", ha="center", va="top", fontsize="medium", wrap=True)
    fig.text(label_w / width, 1.0 - 30 / height, "time →", ha="left", va="top", fontsize="small", color="0.3")
    for i, (path, score) in enumerate(results):
        bottom = (height - header - (i + 1) * (tile + gap) + gap / 2) / height
        hit = is_expected(path)
        fig.text(8 / width, bottom + 0.5 * tile / height,
                 f"#{i + 1}  score {score:.4f}\n{Path(str(path)).name}" + ("\nexpected" if hit else "")
                 + (f"\n{note(path)}" if note(path) else ""),
                 ha="left", va="center", fontsize="small", color="#1a9641" if hit else "black",
                 fontweight="bold" if hit else "normal")
        ax = fig.add_axes((label_w / width, bottom, num_frames * tile / width, tile / height))
        ax.set_xticks([])
        ax.set_yticks([])
        try:
            frames = np.asarray(load(str(path)))
            if frames.ndim == 3:
                frames = frames[None]
            strip = np.concatenate(list(frames), axis=1)  # [H, T*W, 3], time left to right
            ax.imshow(strip, aspect="auto", interpolation="nearest")
            w = frames.shape[2]
            for t in range(1, len(frames)):  # thin separators between frames
                ax.axvline(t * w - 0.5, color="white", linewidth=1.0)
        except Exception as exc:  # noqa: BLE001 - any decode problem becomes a labelled grey tile
            unreadable(ax, exc)
        if hit:
            _mark(ax)
    return save_figure(fig, out_png)
