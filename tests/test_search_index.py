"""``clipvip index``: bad files reported, incremental re-runs, model mixing refused, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import clipvip
from clipvip.search import index as index_mod
from clipvip.search.index import ModelMismatchError, VideoIndex, build_index, thumb_name
from conftest import REPO
from test_pipeline import make_video, shared_tokenizer

GOOD = ["a.mp4", "b.mkv", "sub/c.mp4", "sub/deeper/d.avi", "e.mov"]
BAD = {"corrupt.mp4": "corrupt", "empty.mp4": "zero-byte", "notes.mp4": "not a video"}


@pytest.fixture(scope="module")
def pipe():
    return clipvip.load("clipvip-tiny", device="cpu", tokenizer=shared_tokenizer())


def make_folder(root: Path, names: list[str] = GOOD, bad: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        make_video(root / name, seed=10 + i, frames=4 + i % 3)
    if bad:
        good_bytes = (root / names[0]).read_bytes()
        (root / "corrupt.mp4").write_bytes(good_bytes[:40] + os.urandom(300))  # header then garbage
        (root / "empty.mp4").write_bytes(b"")
        (root / "notes.mp4").write_text("shopping list: eggs, milk\n")
        (root / "readme.txt").write_text("not a video extension: never looked at\n")
    return root


def _rows(index_dir: Path) -> dict[str, np.ndarray]:
    idx = VideoIndex.open(index_dir)
    return {e.path: np.asarray(idx.embeddings[e.row]) for e in idx.entries}


@pytest.mark.slow
def test_build_reports_bad_files_and_is_incremental(pipe, tmp_path: Path):
    videos = make_folder(tmp_path / "videos")
    out = tmp_path / "index"
    messages: list[str] = []
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, echo=messages.append)
    assert (stats.found, stats.new, stats.encoded, stats.failed, stats.total) == (8, 8, 5, 3, 5)
    assert sorted(f["path"] for f in stats.failures) == sorted(BAD)
    assert all(f["reason"] for f in stats.failures)
    assert len(messages) == 3 and all("cannot index" in m for m in messages)

    idx = VideoIndex.open(out)
    assert [e.path for e in idx.entries] == sorted(GOOD)
    assert [e.row for e in idx.entries] == list(range(5))
    assert idx.embeddings.shape == (5, 32) and idx.embeddings.dtype == np.float32
    assert idx.meta["model_id"] == pipe.model_id and idx.meta["video_root"] == str(videos.resolve())
    for e in idx.entries:
        st = (videos / e.path).stat()
        assert (e.size, e.mtime_ns, e.model_id) == (st.st_size, st.st_mtime_ns, pipe.model_id)
        assert e.duration and e.duration > 0
        assert (out / "thumbs" / e.thumb).read_bytes()[:2] == b"\xff\xd8"  # JPEG
    # each stored row is the embedding of its own file, encoded on its own
    ref = pipe.encode_video_files([videos / e.path for e in idx.entries], batch_size=1)
    np.testing.assert_allclose(np.asarray(idx.embeddings), ref.embeddings.numpy(), atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["failed"] == 3 and sorted(f["path"] for f in report["failures"]) == sorted(BAD)

    # second run: nothing to encode, bad files still reported (not retried)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, echo=messages.append)
    assert (stats.encoded, stats.unchanged, stats.failed, stats.total, stats.commits) == (0, 8, 3, 5, 0)

    # touching one file re-encodes only it
    target = videos / "sub/c.mp4"
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    before = _rows(out)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert stats.encoded_paths == ["sub/c.mp4"] and stats.changed == 1
    after = _rows(out)
    for path in GOOD:
        np.testing.assert_allclose(after[path], before[path], atol=1e-5)

    # deleting one drops it (and its thumbnail); rows stay dense
    (videos / "b.mkv").unlink()
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert (stats.deleted, stats.encoded, stats.total) == (1, 0, 4)
    idx = VideoIndex.open(out)
    assert [e.path for e in idx.entries] == sorted(set(GOOD) - {"b.mkv"})
    assert not (out / "thumbs" / thumb_name("b.mkv")).exists()
    for e in idx.entries:
        np.testing.assert_allclose(idx.embeddings[e.row], after[e.path], atol=1e-5)

    # a fixed file leaves the failure list
    make_video(videos / "empty.mp4", seed=99)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert stats.encoded_paths == ["empty.mp4"] and stats.failed == 2

    # a bad file after the last good batch is remembered too: the next run does not retry it
    make_video(videos / "f.mp4", seed=7)
    (videos / "zz.mp4").write_bytes(b"\x00" * 64)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert stats.encoded_paths == ["f.mp4"] and stats.failed == 3
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, workers=1)
    assert (stats.encoded, stats.commits, stats.failed) == (0, 0, 3)


def test_refuses_another_model_unless_rebuild(pipe, tmp_path: Path):
    videos = make_folder(tmp_path / "videos", GOOD[:2], bad=False)
    out = tmp_path / "index"
    build_index(videos, out, pipe, progress=False)
    other = clipvip.load("clipvip-tiny@seed1", tokenizer=pipe.tokenizer)
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        build_index(videos, out, other, progress=False)
    stats = build_index(videos, out, other, rebuild=True, progress=False)
    assert stats.encoded == 2 and VideoIndex.open(out).model_id == other.model_id
    assert len(list(out.glob("embeddings-*.npy"))) == 1


def test_damaged_index_files_are_named_in_the_error(pipe, tmp_path: Path):
    videos = make_folder(tmp_path / "videos", GOOD[:1], bad=False)
    out = tmp_path / "index"
    build_index(videos, out, pipe, progress=False)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        VideoIndex.open(out)
    with pytest.raises(ValueError, match="not a clipvip index"):
        VideoIndex.open(tmp_path / "videos")


def test_crash_at_any_commit_step_leaves_a_loadable_index(pipe, tmp_path: Path, monkeypatch):
    """Simulated kills: between the embeddings file and the manifest, and right after a commit."""
    videos = make_folder(tmp_path / "videos", [f"v{i:02d}.mp4" for i in range(7)], bad=False)
    ref_dir, out = tmp_path / "ref", tmp_path / "index"
    build_index(videos, ref_dir, pipe, batch_size=2, progress=False)

    real_json = index_mod.atomic_write_json
    calls = {"n": 0}

    def dying_json(path, obj):
        if Path(path).name == "manifest.json":
            calls["n"] += 1
            if calls["n"] == 3:  # embeddings-3 written, manifest-3 never lands
                raise KeyboardInterrupt("simulated kill")
        real_json(path, obj)

    monkeypatch.setattr(index_mod, "atomic_write_json", dying_json)
    with pytest.raises(KeyboardInterrupt):
        build_index(videos, out, pipe, batch_size=2, progress=False)
    monkeypatch.setattr(index_mod, "atomic_write_json", real_json)
    partial = VideoIndex.open(out)
    assert 0 < len(partial) < 7  # loadable, with the committed batches only
    build_index(videos, out, pipe, batch_size=2, progress=False)
    ref, got = _rows(ref_dir), _rows(out)
    assert list(got) == list(ref)
    for path in ref:
        np.testing.assert_allclose(got[path], ref[path], atol=1e-5)
    assert len(list(out.glob("embeddings-*.npy"))) == 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipvip", *args]


@pytest.mark.slow
def test_cli_exit_status_and_sigkill_mid_run(pipe, tmp_path: Path, bpe_path: Path, capsys):
    """SIGKILL `clipvip index` after its first batch commits, re-run: same index as an uninterrupted run."""
    from clipvip.cli import main

    names = [f"clip{i:03d}.mp4" for i in range(16)]
    videos = make_folder(tmp_path / "videos", names, bad=True)
    build_index(videos, tmp_path / "ref", pipe, progress=False)  # uninterrupted; same seeded model as the CLI's
    common = ["--model", "clipvip-tiny", "--tokenizer", str(bpe_path), "--no-progress"]

    out = tmp_path / "index"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(_cli("index", str(videos), "--index", str(out), "--batch-size", "1", *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    manifest = out / "manifest.json"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            count = json.loads(manifest.read_text())["count"]
        except (OSError, ValueError, KeyError):
            count = 0
        if count >= 2:
            proc.send_signal(signal.SIGKILL)
            killed_at = count
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    partial = VideoIndex.open(out)  # always loadable
    assert len(partial) < len(names)

    capsys.readouterr()
    assert main(["index", str(videos), "--index", str(out), *common]) == 1  # documented: 1 = some unreadable
    printed = capsys.readouterr()
    assert "unreadable: empty.mp4" in printed.out and "corrupt.mp4" in printed.err
    want, got = _rows(tmp_path / "ref"), _rows(out)
    assert list(got) == list(want) == sorted(names)
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=1e-5)
    assert not list(out.glob(".*.tmp")) and len(list(out.glob("embeddings-*.npy"))) == 1

    # another model into the same index: usage error (2) that names the way out
    assert main(["index", str(videos), "--index", str(out), "--model", "clipvip-tiny@seed5",
                 "--tokenizer", str(bpe_path), "--no-progress"]) == 2
    assert "--rebuild" in capsys.readouterr().err
