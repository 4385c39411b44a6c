"""Plots: headless PNGs of the documented pixel size, written atomically, that open as images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipvip.analysis.plots import plot_curves, plot_nmi_heatmap, plot_seed_curves, retrieval_sheet


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


def _count(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).max(axis=-1) <= tol).sum())


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_identical_curves_stay_visible(tmp_path):
    """Two identical series: the second (orange, dashed, hollow squares) is drawn over the first (blue,
    solid, circles) yet the first still shows, in the gaps of the dashes and inside the hollow markers."""
    pts = [(0, 10.0), (50, 20.0), (100, 15.0), (150, 30.0)]
    rgb = _rgb(plot_curves({"frame": pts, "proxy": list(pts)}, tmp_path / "c.png"))
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
    assert _count(rgb, blue) > 200 and _count(rgb, orange) > 200


def test_seed_curves_mean_band_and_every_group_visible(tmp_path):
    steps = (0, 50, 100)
    same = {0: [(s, 10 + s / 10) for s in steps], 1: [(s, 12 + s / 10) for s in steps]}
    curves = {"frame": same, "full": {k: list(v) for k, v in same.items()}, "proxy": {0: [(s, 5.0) for s in steps]}}
    out = plot_seed_curves(curves, tmp_path / "s.png", size=(500, 400))
    assert _size(out) == (500, 400)
    rgb = _rgb(out)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)):  # C0, C1, C2
        assert _count(rgb, colour) > 100, colour
    with pytest.raises(ValueError):
        plot_seed_curves({"frame": {0: []}}, tmp_path / "x.png")


def test_nmi_colour_scale_is_fitted_to_the_values(tmp_path):
    """Every value <= 0.13: the largest still gets the top colour of viridis (yellow), the smallest the
    bottom one (dark purple); on a fixed [0, 1] scale no cell would be yellow. Cells carry their values."""
    m = np.array([[0.004, 0.13, 0.026], [0.13, 0.002, 0.033], [0.026, 0.033, 0.001]])
    rgb = _rgb(plot_nmi_heatmap(["subtitles", "captions", "downstream"], m, tmp_path / "nmi.png"))
    yellow, purple = (253, 231, 37), (68, 1, 84)
    assert _count(rgb, yellow, 20) > 2000 and _count(rgb, purple, 20) > 2000
    rgb01 = _rgb(plot_nmi_heatmap(["a", "b", "c"], m, tmp_path / "fixed.png", vmin=0.0, vmax=1.0))
    assert _count(rgb01, yellow, 20) < 500  # only the colour bar
    one = plot_nmi_heatmap(["a"], [[0.05]], tmp_path / "one.png")  # a single value: no zero-width scale
    assert _size(one)[0] > 0


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


def test_retrieval_sheet_frame_strips_in_time_order_with_the_expected_clip_marked(tmp_path):
    """Strips of 3 frames (red, green, blue in time order for a.mp4, reversed for b.mp4), b expected."""
    seq = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)

    def loader(path: str) -> np.ndarray:
        order = seq if path.endswith("a.mp4") else seq[::-1]
        return np.repeat(np.repeat(order[:, None, None, :], 16, axis=1), 16, axis=2)  # [3, 16, 16, 3]

    tile = 40
    out = retrieval_sheet("red then green then blue", [("v/a.mp4", 0.9), ("v/b.mp4", 0.8)], tmp_path / "st.png",
                          tile=tile, num_frames=3, frame_loader=loader, expected="b.mp4",
                          notes={"a.mp4": "twin of expected (time-reversed)"})
    assert _size(out) == (3 * tile + 260, 2 * (tile + 24) + 50)
    rgb = _rgb(out)
    for row, order in ((0, seq), (1, seq[::-1])):
        y = 50 + row * (tile + 24) + 12 + tile // 2
        assert [tuple(rgb[y, 260 + t * tile + tile // 2]) for t in range(3)] == [tuple(c) for c in order]
    green_mark = (0x1A, 0x96, 0x41)
    top = rgb[50:50 + tile + 24], rgb[50 + tile + 24:]
    assert _count(top[0], green_mark, 30) == 0 and _count(top[1], green_mark, 30) > 100
