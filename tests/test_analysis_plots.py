"""Plots: headless PNGs of the documented pixel size, written atomically, that open as images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipvip.analysis.plots import plot_curves, plot_nmi_heatmap, retrieval_sheet


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # decodes the whole file: a truncated PNG fails here
        return im.size


def test_plot_curves_size_and_no_leftovers(tmp_path):
    out = plot_curves({"HD-VILA (S)": [(200, 30.0), (0, 20.0), (100, 25.0)],
                       "+ captions": [(0, 20.0), (100, 28.0), (200, 33.0)]},
                      tmp_path / "curve.png", size=(640, 480), title="t")
    assert _size(out) == (640, 480)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]  # no temp file left behind


def test_plot_curves_refuses_empty(tmp_path):
    with pytest.raises(ValueError):
        plot_curves({}, tmp_path / "x.png")


def test_nmi_heatmap_size_and_nan_cells(tmp_path):
    m = np.array([[0.01, 0.8, np.nan], [0.8, 0.02, 0.3], [np.nan, 0.3, 0.0]])
    out = plot_nmi_heatmap(["subtitles", "captions", "msrvtt"], m, tmp_path / "nmi.png", size=(600, 500))
    assert _size(out) == (600, 500)
    with pytest.raises(ValueError, match="does not match"):
        plot_nmi_heatmap(["a", "b"], m, tmp_path / "bad.png")


def test_retrieval_sheet_uses_middle_frames_and_marks_unreadable(tmp_path):
    """Two readable 'videos' (solid colours) and one missing file: the sheet still renders, tile by tile."""
    colours = {"red.mp4": (255, 0, 0), "blue.mp4": (0, 0, 255)}

    def loader(path: str) -> np.ndarray:
        from clipvip.data import VideoDecodeError

        name = path.rsplit("/", 1)[-1]
        if name not in colours:
            raise VideoDecodeError(path, "file not found")
        return np.full((48, 64, 3), colours[name], dtype=np.uint8)

    out = retrieval_sheet("a red thing", [("v/red.mp4", 0.91), ("v/blue.mp4", 0.52), ("v/gone.mp4", 0.1)],
                          tmp_path / "sheet.png", tile=100, frame_loader=loader)
    assert _size(out) == (300, 170)
    with Image.open(out) as im:
        rgb = np.asarray(im.convert("RGB"))
    # The centre of tile 1 shows the red frame, tile 2 the blue one, tile 3 the grey placeholder.
    y = rgb.shape[0] - 30 - 50  # middle of the tiles: they sit on a 30 px footer
    assert tuple(rgb[y, 50]) == (255, 0, 0)
    assert tuple(rgb[y, 150]) == (0, 0, 255)
    r, g, b = rgb[y, 250 - 30]
    assert r == g == b and 150 < r < 230


def test_retrieval_sheet_real_video(tmp_path):
    from conftest import asset

    video = asset("videos/video9770.mp4")
    out = retrieval_sheet("a person is connecting something to system", [(str(video), 0.33)],
                          tmp_path / "sheet.png", tile=160)
    assert _size(out) == (160, 230)
