"""``clipvip index``: moments, bad and hostile files, incremental re-runs, one model and one writer, kills."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import clipvip
from clipvip.data import VideoDecodeError
from clipvip.data.video import load_frames
from clipvip.search import index as index_mod
from clipvip.search.index import ModelMismatchError, build_index, decode_windows, plan_windows
from clipvip.search.store import IndexWriter, read_snapshot
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


def windows_of(index_dir: Path) -> dict[bytes, list[tuple[float, float, np.ndarray]]]:
    """What a reader sees: relpath → [(start, end, vector)], in time order."""
    snap = read_snapshot(index_dir)
    out: dict[bytes, list] = {}
    for w in range(len(snap.slots)):
        v = snap.videos[snap.video_index[w]]
        out.setdefault(v.path, []).append((float(snap.starts[w]), float(snap.ends[w]),
                                           np.asarray(snap.vectors[snap.slots[w]], np.float32)))
    return out


def assert_same_index(got: dict, want: dict) -> None:
    assert list(sorted(got)) == list(sorted(want))
    for path in want:
        assert [(s, e) for s, e, _ in got[path]] == [(s, e) for s, e, _ in want[path]], path
        for (_, _, a), (_, _, b) in zip(got[path], want[path]):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_build_reports_bad_files_and_is_incremental(pipe, tmp_path: Path):
    videos = make_folder(tmp_path / "videos")
    out = tmp_path / "index"
    messages: list[str] = []
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, echo=messages.append, workers=2)
    assert (stats.found, stats.new, stats.encoded, stats.failed, stats.total) == (8, 8, 5, 3, 5)
    assert sorted(f["path"] for f in stats.failures) == sorted(BAD)
    assert len(messages) == 3 and all("cannot index" in m for m in messages)

    snap = read_snapshot(out)
    assert sorted(v.path.decode() for v in snap.videos) == sorted(GOOD)
    assert snap.model_id == pipe.model_id and snap.video_root == videos.resolve()
    for v in snap.videos:
        st = (videos / v.path.decode()).stat()
        assert (v.size, v.mtime_ns, v.model_id) == (st.st_size, st.st_mtime_ns, pipe.model_id)
        assert v.duration and v.duration > 0
    assert all((out / "thumbs" / t).read_bytes()[:2] == b"\xff\xd8" for t in snap.thumbs)  # JPEG per window
    # short clips are one window over the whole clip: the same vector as encoding the file on its own
    rows = windows_of(out)
    ref = pipe.encode_video_files([videos / p.decode() for p in sorted(rows)], batch_size=1)
    for i, p in enumerate(sorted(rows)):
        assert len(rows[p]) == 1 and rows[p][0][0] == 0.0
        np.testing.assert_allclose(rows[p][0][2], ref.embeddings[i].numpy(), atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["failed"] == 3 and sorted(f["path"] for f in report["failures"]) == sorted(BAD)

    # second run: nothing to encode, bad files still reported (not retried)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, echo=messages.append)
    assert (stats.encoded, stats.unchanged, stats.failed, stats.total, stats.commits) == (0, 8, 3, 5, 0)

    # touching one file re-encodes only it; the others keep their vectors
    target = videos / "sub/c.mp4"
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert stats.encoded_paths == ["sub/c.mp4"] and stats.changed == 1
    assert_same_index(windows_of(out), rows)

    # deleting one drops it and its thumbnails
    (videos / "b.mkv").unlink()
    before = {t for t in read_snapshot(out).thumbs}
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert (stats.deleted, stats.encoded, stats.total) == (1, 0, 4)
    after = windows_of(out)
    assert sorted(after) == sorted(p.encode() for p in GOOD if p != "b.mkv")
    assert len(list((out / "thumbs").iterdir())) == len(before) - 1

    # a fixed file leaves the failure list; a bad file after the last good batch is remembered too
    make_video(videos / "empty.mp4", seed=99)
    make_video(videos / "f.mp4", seed=7)
    (videos / "zz.mp4").write_bytes(b"\x00" * 64)
    stats = build_index(videos, out, pipe, batch_size=2, progress=False)
    assert sorted(stats.encoded_paths) == ["empty.mp4", "f.mp4"] and stats.failed == 3
    stats = build_index(videos, out, pipe, batch_size=2, progress=False, workers=1)
    assert (stats.encoded, stats.commits, stats.failed) == (0, 0, 3)


def test_long_video_windows_match_an_independent_decode(pipe, tmp_path: Path):
    """Each window's vector = the model on load_frames(path, start, end) (the plain decoder, its own reader)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "long.mp4", seed=3, frames=6 * 23)  # 23 s at 6 fps
    stats = build_index(videos, tmp_path / "index", pipe, window=10.0, stride=5.0, batch_size=3, progress=False,
                        workers=2)
    got = windows_of(tmp_path / "index")[b"long.mp4"]
    spans = plan_windows(23.0, 10.0, 5.0)
    assert [(s, e) for s, e, _ in got] == spans == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (13.0, 23.0)]
    assert stats.windows == 4
    for i, (s, e, vec) in enumerate(got):
        last = i == len(got) - 1
        frames = load_frames(str(videos / "long.mp4"), num_frames=pipe.num_frames, start=s, end=e if last else e - 1e-3)
        ref = pipe.encode_frames([frames])[0].numpy()
        np.testing.assert_allclose(vec, ref, atol=1e-5)

    # the file changes (now 12 s): all its windows are replaced by the new ones in one commit
    make_video(videos / "long.mp4", seed=4, frames=6 * 12)
    build_index(videos, tmp_path / "index", pipe, window=10.0, stride=5.0, batch_size=3, progress=False)
    assert [(s, e) for s, e, _ in windows_of(tmp_path / "index")[b"long.mp4"]] == [(0.0, 10.0), (2.0, 12.0)]
    # other window settings are refused on an existing index
    with pytest.raises(index_mod.IndexFormatError, match="window"):
        build_index(videos, tmp_path / "index", pipe, window=4.0, stride=2.0, progress=False)


def test_worker_transform_equals_main_thread_transform(pipe, tmp_path: Path):
    """decode_windows (run in a worker thread) hands the model exactly what the main-thread transform makes."""
    path = make_video(tmp_path / "v.mp4", seed=5, frames=6 * 12)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(chunks=list(decode_windows(
        os.fsencode(path), b"v.mp4", pipe.num_frames, pipe.transform, 10.0, 5.0, chunk=8))))
    t.start()
    t.join()
    (chunk,) = box["chunks"]
    assert chunk.spans == [(0.0, 10.0), (2.0, 12.0)]
    for i, (s, e) in enumerate(chunk.spans):
        frames = load_frames(str(path), num_frames=pipe.num_frames, start=s, end=e - 1e-3 if i == 0 else e)
        assert torch.equal(chunk.pixels[i], pipe.transform(frames))


@pytest.mark.slow
def test_hostile_names_symlinks_and_permission_retry(pipe, tmp_path: Path, bpe_path: Path, capsys, monkeypatch):
    from clipvip.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    odd = [b"latin\xe9.mp4", b"two\nlines.mp4", b"<script>alert(1)<\\script>.mp4", b"caf\xc3\xa9 \xf0\x9f\x8e\xac.mp4"]
    for i, name in enumerate(odd):  # written under a plain name, then renamed (the encoder wants UTF-8 names)
        make_video(videos / f"tmp{i}.mp4", seed=20 + i)
        os.rename(os.path.join(os.fsencode(videos), b"tmp%d.mp4" % i), os.path.join(os.fsencode(videos), name))
    os.symlink("missing-target.mp4", videos / "dangling.mp4")
    os.symlink("loop.mp4", videos / "loop.mp4")
    locked = make_video(videos / "locked.mp4", seed=30)
    os.chmod(locked, 0)
    real_open = index_mod._open_reader

    def open_honouring_mode(full: bytes):  # tests run as root, where mode 000 does not stop a read
        if os.stat(full).st_mode & 0o444 == 0:
            raise VideoDecodeError(os.fsdecode(full), "cannot open: Permission denied")
        return real_open(full)

    monkeypatch.setattr(index_mod, "_open_reader", open_honouring_mode)
    out = tmp_path / "index"
    args = ["index", str(videos), "--index", str(out), "--model", "clipvip-tiny", "--tokenizer", str(bpe_path),
            "--no-progress", "--workers", "1"]
    assert main(args) == 1
    printed = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"dangling.mp4", "loop.mp4", "locked.mp4"}
    assert "dangling symlink" in reasons["dangling.mp4"] and "loop" in reasons["loop.mp4"]
    assert "Permission denied" in reasons["locked.mp4"]
    assert "unreadable: dangling.mp4" in printed.out and "two\\nlines.mp4" not in printed.out  # not encoded yet
    shown = sorted(v.path for v in read_snapshot(out).videos)
    assert shown == sorted(odd)
    assert sorted(report["encoded"]) == sorted(["latin\\xe9.mp4", "two\\nlines.mp4", "<script>alert(1)<\\\\script>.mp4",
                                                "café 🎬.mp4"])

    # unchanged: the permission failure is not retried; after chmod it is
    assert main(args) == 1
    assert "encoded (0 windows)" in capsys.readouterr().out.replace("0 encoded", "encoded")
    os.chmod(locked, 0o644)
    assert main(args) == 1  # the symlinks are still broken
    out_text = capsys.readouterr().out
    assert "1 encoded" in out_text and b"locked.mp4" in {v.path for v in read_snapshot(out).videos}

    # search: escaped names, valid JSON with start/end
    assert main(["search", str(out), "a video", "--json", "--tokenizer", str(bpe_path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["path"] for r in res["results"]} >= {"latin\\xe9.mp4", "two\\nlines.mp4"}
    assert all(r["end"] >= r["start"] == 0.0 and r["span"].startswith("00:00:00") for r in res["results"])
    assert main(["search", str(out), "a video", "--tokenizer", str(bpe_path), "--under", "/etc"]) == 2
    capsys.readouterr()


def test_nan_weights_are_refused_naming_the_model(tmp_path: Path):
    videos = make_folder(tmp_path / "videos", GOOD[:2], bad=False)
    bad = clipvip.load("clipvip-tiny", tokenizer=shared_tokenizer())
    with torch.no_grad():
        for param in bad.model.parameters():  # damaged weights: every tensor NaN
            param.fill_(float("nan"))
    with pytest.raises(ValueError, match="clipvip-tiny.*non-finite"):
        build_index(videos, tmp_path / "index", bad, progress=False)
    assert read_snapshot(tmp_path / "index").vectors.shape[0] == 0  # nothing was stored
    with pytest.raises(ValueError, match="non-finite text"):
        bad.encode_texts(["a dog"])


def test_refuses_another_model_unless_rebuild(pipe, tmp_path: Path):
    videos = make_folder(tmp_path / "videos", GOOD[:2], bad=False)
    out = tmp_path / "index"
    build_index(videos, out, pipe, progress=False)
    other = clipvip.load("clipvip-tiny@seed1", tokenizer=pipe.tokenizer)
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        build_index(videos, out, other, progress=False)
    stats = build_index(videos, out, other, rebuild=True, progress=False)
    assert stats.encoded == 2 and read_snapshot(out).model_id == other.model_id
    assert len(list(out.glob("vectors-*.bin"))) == 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipvip", *args]


def test_a_second_writer_exits_2_and_names_the_first(pipe, tmp_path: Path, bpe_path: Path):
    videos = make_folder(tmp_path / "videos", GOOD[:1], bad=False)
    out = tmp_path / "index"
    build_index(videos, out, pipe, progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with IndexWriter(out, {"model_id": pipe.model_id, "dim": pipe.dim, "video_root": os.fsencode(videos.resolve())}):
        proc = subprocess.run(_cli("index", str(videos), "--index", str(out), "--model", "clipvip-tiny@seed5",
                                   "--tokenizer", str(bpe_path), "--no-progress"),
                              env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"another `clipvip index` (pid {os.getpid()})" in proc.stderr
    assert read_snapshot(out).model_id == pipe.model_id  # untouched


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(pipe, tmp_path: Path, bpe_path: Path,
                                                                         capsys):
    from clipvip.cli import main

    names = [f"clip{i:03d}.mp4" for i in range(14)]
    videos = make_folder(tmp_path / "videos", names, bad=True)
    make_video(videos / "long.mp4", seed=77, frames=6 * 30)  # 30 s: 5 windows, committed together
    build_index(videos, tmp_path / "ref", pipe, progress=False, batch_size=2)  # same seeded model as the CLI's
    common = ["--model", "clipvip-tiny", "--tokenizer", str(bpe_path), "--no-progress"]
    out = tmp_path / "index"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["--batch-size", "2", "--workers", "1", *common]
    # Kill times are fractions of an uninterrupted run of the same command on this machine (fixed seconds
    # let a fast machine finish before the first kill).
    t0 = time.perf_counter()
    subprocess.run(_cli("index", str(videos), "--index", str(tmp_path / "timing"), *args),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=300)
    full_run = time.perf_counter() - t0
    rng = random.Random(0)
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen(_cli("index", str(videos), "--index", str(out), *args),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.3, 0.9) * full_run)  # from start-up and model load to the last commits
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=120)
        if (out / "index.sqlite").is_file():
            read_snapshot(out)  # always loadable
    assert kills >= 2, "the runs ended before they could be killed"
    capsys.readouterr()
    assert main(["index", str(videos), "--index", str(out), *common]) == 1  # documented: 1 = some unreadable
    printed = capsys.readouterr()
    # the per-file reasons are printed on stdout (the log warnings go wherever logging was first configured)
    assert "unreadable: empty.mp4" in printed.out and "unreadable: corrupt.mp4" in printed.out
    assert_same_index(windows_of(out), windows_of(tmp_path / "ref"))
    assert len(list(out.glob("vectors-*.bin"))) == 1 and not list((out / "thumbs").glob(".*tmp"))
    snap = read_snapshot(out)
    assert sorted(snap.thumbs) == sorted(p.name for p in (out / "thumbs").iterdir())

    # another model into the same index: usage error (2) that names the way out
    assert main(["index", str(videos), "--index", str(out), "--model", "clipvip-tiny@seed5",
                 "--tokenizer", str(bpe_path), "--no-progress"]) == 2
    assert "--rebuild" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(pipe, tmp_path: Path, bpe_path: Path):
    """torchrun, 2 ranks on gloo: rank 0 writes what the others encoded; the index equals a 1-process run."""
    names = [f"v{i:02d}.mp4" for i in range(7)]
    videos = make_folder(tmp_path / "videos", names, bad=True)
    make_video(videos / "long.mp4", seed=42, frames=6 * 17)  # 17 s: 3 windows
    build_index(videos, tmp_path / "ref", pipe, progress=False, batch_size=2)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clipvip",
           "index", str(videos), "--index", str(tmp_path / "index"), "--model", "clipvip-tiny", "--tokenizer",
           str(bpe_path), "--no-progress", "--batch-size", "2", "--workers", "1", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert "by 2 ranks" in proc.stdout, proc.stdout + proc.stderr
    assert "unreadable: empty.mp4" in proc.stdout
    assert_same_index(windows_of(tmp_path / "index"), windows_of(tmp_path / "ref"))
    report = json.loads((tmp_path / "index" / "report.json").read_text())
    assert sorted(f["path"] for f in report["failures"]) == sorted(BAD)
