"""clipvip.atomic: files and folders follow the umask; ownership markers guard every replace."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from clipvip import atomic


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask_027) -> None:
    assert atomic.current_umask() == 0o027
    assert atomic.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # still what the fixture set


def test_atomic_files_follow_the_umask(tmp_path: Path, umask_027) -> None:
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    atomic.atomic_write_json(tmp_path / "b.json", {"a": 1})
    # what a plain open() would give under the same umask
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.json") == _mode(tmp_path / "plain") == 0o640


def test_atomic_files_follow_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        atomic.atomic_write_bytes(tmp_path / "a.bin", b"x")
        folder = atomic.make_temp_dir(tmp_path, ".t-")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == 0o664
    assert _mode(folder) == 0o775


def test_saved_model_folder_follows_the_umask(tmp_path: Path, umask_027) -> None:
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP
    from clipvip.weights import save_pretrained

    torch.manual_seed(0)
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    out = save_pretrained(model, tmp_path / "m")
    assert _mode(out) == 0o750
    assert _mode(out / "config.json") == 0o640 and _mode(out / "model.safetensors") == 0o640


def test_checkpoint_folders_follow_the_umask(tmp_path: Path, umask_027) -> None:
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP
    from clipvip.train import checkpoint as ckpt

    torch.manual_seed(0)
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    last = ckpt.save_checkpoint(tmp_path, "last", model, None, {"run": {"step": 1}}, {"step": 1})
    best = ckpt.copy_checkpoint(last, tmp_path, "best")
    for folder in (last, best):
        assert _mode(folder) == 0o750
        assert all(_mode(f) == 0o640 for f in folder.iterdir()), {f.name: oct(_mode(f)) for f in folder.iterdir()}


def test_replace_only_folders_we_marked(tmp_path: Path) -> None:
    atomic.check_replaceable(tmp_path / "absent", "clipvip demo")
    (tmp_path / "empty").mkdir()
    atomic.check_replaceable(tmp_path / "empty", "clipvip demo")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="theirs.*not written by clipvip demo"):
        atomic.remove_owned(theirs, "clipvip demo")
    assert (theirs / "thesis.tex").read_text() == "years of work"
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "x").write_text("1")
    atomic.mark_owned(ours, "clipvip demo")
    with pytest.raises(FileExistsError):  # another command's marker is not ours
        atomic.check_replaceable(ours, "clipvip convert")
    atomic.remove_owned(ours, "clipvip demo")
    assert not ours.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        atomic.check_replaceable(tmp_path / "file", "clipvip demo")


def test_demo_out_never_replaces_folders_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipvip.cli import main
    from clipvip.demo.run import DEMO_FOLDERS

    out = tmp_path / "demo"
    for name in DEMO_FOLDERS:
        (out / name).mkdir(parents=True)
        (out / name / "mine.txt").write_text(name)
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "was not written by clipvip demo" in err and err.count("\n") == 1
    for name in DEMO_FOLDERS:  # refused before any work: everything is still there
        assert sorted(p.name for p in (out / name).iterdir()) == ["mine.txt"]
