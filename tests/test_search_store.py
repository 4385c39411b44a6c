"""The on-disk store: SQLite rows + append-only vector file, without a model (vectors are planted).

References are plain Python/numpy over what the test wrote, never the store's own output.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clipvip.search.store import (
    HEADER,
    FailureRow,
    IndexFormatError,
    IndexLockedError,
    IndexWriter,
    ModelMismatchError,
    escape_path,
    read_snapshot,
    vectors_name,
)
from conftest import REPO

DIM = 8


def meta(model_id: str = "m1", root: bytes = b"/videos", dtype: str = "float32") -> dict:
    return {"model_id": model_id, "model_spec": "test", "dim": DIM, "video_root": root, "dtype": dtype,
            "window": 10.0, "stride": 5.0}


def item(path: bytes, n: int, seed: int, duration: float = 30.0) -> dict:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return {"path": path, "size": 100 + seed, "mtime_ns": seed, "mode": 0o100644, "duration": duration,
            "windows": [(5.0 * i, 5.0 * i + 10.0, None) for i in range(n)], "vectors": v}


def contents(index_dir: Path) -> dict[bytes, list[tuple[float, float, tuple]]]:
    """path → [(start, end, vector)] read through a snapshot (the reader's view)."""
    snap = read_snapshot(index_dir)
    out: dict[bytes, list] = {}
    for w in range(len(snap.slots)):
        v = snap.videos[snap.video_index[w]]
        out.setdefault(v.path, []).append((snap.starts[w], snap.ends[w], tuple(np.asarray(snap.vectors[snap.slots[w]]).round(5))))
    return out


def test_append_replace_delete_and_compact(tmp_path: Path):
    d = tmp_path / "idx"
    a, b, c = item(b"a.mp4", 3, 1), item(b"b.mp4", 1, 2), item(b"c.mp4", 2, 3)
    with IndexWriter(d, meta()) as w:
        w.replace_videos([a, b])
        w.replace_videos([c], [FailureRow(b"bad.mp4", 1, 2, 0o100644, "corrupt")])
    snap = read_snapshot(d)
    assert snap.vectors.shape == (6, DIM) and snap.dead == 0
    assert [v.path for v in snap.videos] == [b"a.mp4", b"b.mp4", b"c.mp4"]
    got = contents(d)
    for it in (a, b, c):
        assert [(s, e) for s, e, _ in got[it["path"]]] == [(s, e) for s, e, _ in it["windows"]]
        np.testing.assert_allclose(np.array([v for _, _, v in got[it["path"]]]), it["vectors"], atol=1e-5)

    a2 = item(b"a.mp4", 2, 11)  # a changed: 3 old windows out, 2 new in
    with IndexWriter(d, meta()) as w:
        assert set(w.failures()) == {b"bad.mp4"}
        w.replace_videos([a2])
        w.delete_videos([b"b.mp4"])
        assert w.slots == 8 and w.live == 4  # 4 dead slots, below the compaction minimum
        assert not w.compact()
    snap = read_snapshot(d)
    assert snap.dead == 4 and len(snap.slots) == 4
    got = contents(d)
    assert set(got) == {b"a.mp4", b"c.mp4"}
    np.testing.assert_allclose(np.array([v for _, _, v in got[b"a.mp4"]]), a2["vectors"], atol=1e-5)

    with IndexWriter(d, meta()) as w:
        assert w.compact(force=True)
    snap2 = read_snapshot(d)
    assert snap2.generation == snap.generation + 1 and snap2.dead == 0 and snap2.vectors.shape == (4, DIM)
    assert contents(d) == got
    assert sorted(p.name for p in d.glob("vectors-*.bin")) == [vectors_name(snap2.generation)]


def test_float16_storage(tmp_path: Path):
    d = tmp_path / "idx"
    a = item(b"a.mp4", 3, 1)
    with IndexWriter(d, meta(dtype="float16")) as w:
        w.replace_videos([a])
    snap = read_snapshot(d)
    assert snap.vectors.dtype == np.float16
    assert (d / vectors_name(0)).stat().st_size == HEADER + 3 * DIM * 2
    np.testing.assert_allclose(np.asarray(snap.vectors, np.float32), a["vectors"], atol=1e-3)


def test_unreferenced_tail_of_a_killed_run_is_invisible_and_dropped(tmp_path: Path):
    d = tmp_path / "idx"
    with IndexWriter(d, meta()) as w:
        w.replace_videos([item(b"a.mp4", 2, 1)])
    vf = d / vectors_name(0)
    with open(vf, "ab") as fh:  # appended, never committed (a SIGKILL before the transaction)
        fh.write(os.urandom(3 * DIM * 4 + 5))
    assert read_snapshot(d).vectors.shape == (2, DIM)
    with IndexWriter(d, meta()):
        pass
    assert vf.stat().st_size == HEADER + 2 * DIM * 4


def test_one_writer_at_a_time(tmp_path: Path):
    d = tmp_path / "idx"
    with IndexWriter(d, meta()):
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            IndexWriter(d, meta())
    with IndexWriter(d, meta()):  # released on close
        pass


def test_model_folder_and_settings_are_checked(tmp_path: Path):
    d = tmp_path / "idx"
    with IndexWriter(d, meta()) as w:
        w.replace_videos([item(b"a.mp4", 1, 1)])
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        IndexWriter(d, meta(model_id="m2"))
    with pytest.raises(IndexFormatError, match="another --index"):
        IndexWriter(d, meta(root=b"/elsewhere"))
    with pytest.raises(IndexFormatError, match="window"):
        IndexWriter(d, {**meta(), "window": 20.0}, must_match=("window",))
    with IndexWriter(d, meta(model_id="m2"), rebuild=True) as w:
        assert w.videos() == {} and w.slots == 0
    assert read_snapshot(d).model_id == "m2"


def _damage(d: Path, sql: str) -> None:
    con = sqlite3.connect(d / "index.sqlite")
    con.execute(sql)
    con.commit()
    con.close()


@pytest.mark.parametrize("how, fragment", [
    ("truncate", "vectors-000000.bin"),
    ("missing", "vectors-000000.bin"),
    ("format", "index.sqlite"),
    ("type", "index.sqlite"),
    ("slot", "index.sqlite"),
    ("model", "index.sqlite"),
    ("order", "index.sqlite"),
    ("garbage", "index.sqlite"),
])
def test_damaged_index_is_an_error_naming_the_file(tmp_path: Path, how: str, fragment: str):
    d = tmp_path / "idx"
    with IndexWriter(d, meta()) as w:
        w.replace_videos([item(b"a.mp4", 3, 1), item(b"b.mp4", 2, 2)])
    vf = d / vectors_name(0)
    if how == "truncate":
        os.truncate(vf, HEADER + 2 * DIM * 4)
    elif how == "missing":
        vf.unlink()
    elif how == "format":
        _damage(d, "UPDATE meta SET value = 1 WHERE key = 'format'")
    elif how == "type":
        _damage(d, "UPDATE windows SET start = 'soon' WHERE id = 2")
    elif how == "slot":
        _damage(d, "UPDATE windows SET slot = 99 WHERE id = 1")
    elif how == "model":
        _damage(d, "UPDATE windows SET model_id = 'other' WHERE id = 1")
    elif how == "order":
        _damage(d, 'UPDATE windows SET "end" = -1 WHERE id = 1')
    elif how == "garbage":
        for p in d.glob("index.sqlite*"):
            p.unlink()
        (d / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexFormatError, match=fragment):
        read_snapshot(d)


def test_previous_format_is_refused_with_the_rebuild_command(tmp_path: Path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "index.json").write_text(json.dumps({"format": 1, "model_spec": "clipvip-tiny", "video_root": "/v"}))
    (d / "manifest.json").write_text("{}")
    np.save(d / "embeddings-000001.npy", np.zeros((1, DIM), np.float32))
    for call in (lambda: read_snapshot(d), lambda: IndexWriter(d, meta())):
        with pytest.raises(IndexFormatError, match=r"clipvip index /v --model clipvip-tiny .* --rebuild"):
            call()
    with IndexWriter(d, meta(), rebuild=True):
        pass
    assert not (d / "manifest.json").exists() and not list(d.glob("*.npy"))
    assert read_snapshot(d).vectors.shape == (0, DIM)


def test_escape_path_is_printable_and_unambiguous():
    assert escape_path(b"plain/caf\xc3\xa9.mp4") == "plain/café.mp4"
    assert escape_path(b"latin\xe9.mp4") == "latin\\xe9.mp4"
    assert escape_path(b"two\nlines.mp4") == "two\\nlines.mp4"
    assert escape_path(b"tab\tbell\x07.mp4") == "tab\\tbell\\x07.mp4"
    assert escape_path(b"back\\xe9.mp4") == "back\\\\xe9.mp4"  # a literal backslash cannot forge an escape
    assert escape_path("<script>.mp4") == "<script>.mp4"  # HTML escaping is the page's job
    json.loads(json.dumps(escape_path(b"\xff\xfe\n")))


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from clipvip.search.store import IndexWriter
    d, rounds = sys.argv[1], int(sys.argv[2])
    meta = {"model_id": "m1", "dim": 8, "video_root": b"/videos", "dtype": "float32", "window": 10.0, "stride": 5.0}

    def item(path, version):
        n = 1 + (version % 4)           # the number of windows changes with every version
        v = np.zeros((n, 8), np.float32)
        v[:, 0] = version               # every window of a version carries it: a reader can check
        v[:, 1] = n
        v[:, 2] = np.arange(n)
        return {"path": path, "size": version, "mtime_ns": version, "mode": 0, "duration": 1.0,
                "windows": [(float(i), float(i) + 1, None) for i in range(n)], "vectors": v}

    with IndexWriter(d, meta) as w:
        for r in range(1, rounds + 1):
            w.replace_videos([item(b"v%d.mp4" % (r % 5), r), item(b"w%d.mp4" % (r % 3), r)])
            if r % 7 == 0:
                w.delete_videos([b"v%d.mp4" % ((r + 1) % 5)])
            if r % 5 == 0:
                w.compact(force=True)
    print("done")
""")


@pytest.mark.slow
def test_reader_polling_during_writes_and_compactions_sees_whole_videos(tmp_path: Path):
    """A reader in this process polls while another process appends, replaces, deletes and compacts."""
    d = tmp_path / "idx"
    with IndexWriter(d, meta()):
        pass
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(d), "150"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, generations = 0, set()
    while proc.poll() is None or reads == 0:
        snap = read_snapshot(d)  # must never raise
        generations.add(snap.generation)
        for v in range(len(snap.videos)):
            a, b = snap.offsets[v], snap.offsets[v + 1]
            vec = np.asarray(snap.vectors[snap.slots[a:b]])
            # all windows of a video come from one version, and all of them are there
            assert len(set(vec[:, 0].tolist())) == 1, "a video mixes windows of two versions"
            assert b - a == int(vec[0, 1]) and vec[:, 2].tolist() == list(range(b - a))
        reads += 1
    out, err = proc.communicate()
    assert proc.returncode == 0 and "done" in out, err
    assert reads > 5 and len(generations) > 1, (reads, generations)
