"""``clipvip convert``: never replaces a folder it did not write; errors are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipvip.cli import main
from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint in the official layout (``clipmodel.`` prefix)."""
    torch.manual_seed(0)
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    path = tmp_path_factory.mktemp("official") / "tiny.pt"
    torch.save({f"clipmodel.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["convert", *argv])
    err = capsys.readouterr().err
    return code, err


def test_convert_refuses_a_non_empty_folder_without_overwrite(official: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, err = _run(capsys, str(official), str(out), "--config", "clipvip-tiny")
    assert code == 2 and "folder is not empty" in err and "--overwrite" in err and err.count("\n") == 1
    code, err = _run(capsys, str(official), str(out), "--config", "clipvip-tiny", "--overwrite")
    assert code == 2 and "not a model folder written by clipvip" in err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_convert_overwrites_only_its_own_model_folders(official: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["convert", str(official), str(out), "--config", "clipvip-tiny"]) == 0
    code, err = _run(capsys, str(official), str(out), "--config", "clipvip-tiny")
    assert code == 2 and "--overwrite" in err  # even our own folder needs the flag
    assert main(["convert", str(official), str(out), "--config", "clipvip-tiny", "--overwrite"]) == 0
    assert CLIPViP.from_pretrained(out).config.num_proxies == 4
    # A user's folder that only looks like a model (a foreign safetensors file) is not replaced.
    from safetensors.torch import save_file

    (out / "model.safetensors").unlink()
    save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"), metadata={"library": "someone-else"})
    code, err = _run(capsys, str(official), str(out), "--config", "clipvip-tiny", "--overwrite")
    assert code == 2 and "not a model folder written by clipvip" in err
    # ... nor one of ours that a user has put a folder into
    assert main(["convert", str(official), str(tmp_path / "m2"), "--config", "clipvip-tiny"]) == 0
    (tmp_path / "m2" / "notes").mkdir()
    code, err = _run(capsys, str(official), str(tmp_path / "m2"), "--config", "clipvip-tiny", "--overwrite")
    assert code == 2 and (tmp_path / "m2" / "notes").is_dir()
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(official), str(tmp_path / "empty"), "--config", "clipvip-tiny"]) == 0


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_bytes(b""), "tiny.pt"),
    (lambda p: p.write_bytes(b"\x80\x02 not a checkpoint"), "tiny.pt"),
    (lambda p: torch.save({"clipmodel.x": torch.zeros(3)}, p), "tiny.pt"),
    (lambda p: None, "file not found"),
])
def test_convert_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, needle) -> None:
    src = tmp_path / "tiny.pt"
    make(src)
    code, err = _run(capsys, str(src), str(tmp_path / "out"), "--config", "clipvip-tiny")
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_convert_bad_config_flag_names_the_flag(official: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, str(official), str(tmp_path / "out"), "--config", "clipvip-huge")
    assert code == 2 and err.startswith("clipvip convert: error: --config clipvip-huge") and err.count("\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"use_temporal_embedding": "false"}')
    code, err = _run(capsys, str(official), str(tmp_path / "out"), "--config", str(bad))
    assert code == 2 and "use_temporal_embedding must be true or false" in err and str(bad) in err
