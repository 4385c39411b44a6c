"""Export: torch.export and ONNX graphs of both towers take a batch other than the traced one and give eager
PyTorch's embeddings; the preprocessing JSON says what the pipeline does; failures are clear and leave
nothing behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import clipvip
from clipvip.cli import main as cli_main
from clipvip.config import CLIPViPConfig
from clipvip.data.transforms import CLIP_MEAN, CLIP_STD
from clipvip.export import ExportError, example_inputs, export_program, require_onnx, verify_onnx
from clipvip.model import CLIPViP
from clipvip.tokenizer import build_word_tokenizer, tokenize

WORDS = ["a", "dog", "runs", "on", "the", "beach", "cat", "sleeps"]


def tiny(**overrides) -> CLIPViP:
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny", **overrides)).eval()
    with torch.no_grad():  # frames must differ, or a wrong frame layout would go unnoticed
        model.vision_model.embeddings.temporal_embedding.normal_()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["proxy", "masked"])
def test_torch_export_video_tower_dynamic_batch(mode):
    model = tiny(attention=mode)
    program = export_program(model, "video", frames=3, context_length=77)
    run = program.module()
    for batch in (1, 3):  # traced at 2
        pixels = torch.randn(batch, 3, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(run(pixels), model.encode_video(pixels), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_torch_export_text_tower_dynamic_batch_with_padding():
    model = tiny()
    program = export_program(model, "text", frames=3, context_length=16)
    run = program.module()
    for batch in (1, 3):
        ids, mask = example_inputs(model, "text", batch, frames=3, context_length=16)
        with torch.no_grad():
            torch.testing.assert_close(run(ids, mask), model.encode_text(ids, mask), atol=1e-5, rtol=0)


def test_token_id_check_stays_at_the_eager_entry():
    model = tiny()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 49408\)"):
        model.encode_text(torch.tensor([[49406, 49408, 49407]]))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(torch.tensor([[-1, 5, 49407]]))


def test_missing_extra_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"onnxruntime.*clipvip\[export\]"):
        require_onnx()
    assert cli_main(["export", "clipvip-tiny", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'clipvip[export]'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One CLI export of the tiny registry model with a word-level tokenizer (5 frames, context 16)."""
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("export")
    tok = build_word_tokenizer(WORDS, root / "tok")
    out = root / "onnx"
    rc = cli_main(["export", "clipvip-tiny", "--tokenizer", str(tok), "--out", str(out), "--frames", "5",
                   "--context-length", "16"])
    assert rc == 0
    return out, tok


@pytest.mark.slow
def test_onnx_towers_match_eager_at_other_batch_sizes(exported):
    import onnxruntime as ort

    out, tok = exported
    pipe = clipvip.load("clipvip-tiny", device="cpu", tokenizer=tok)  # the same seeded weights
    video = ort.InferenceSession(str(out / "video.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out / "text.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(video.get_inputs()[0].shape[0], str)  # a symbolic batch, not a number
    assert video.get_inputs()[0].shape[1:] == [5, 3, 32, 32]
    for batch in (1, 3):
        pixels = torch.randn(batch, 5, 3, 32, 32)
        (got,) = video.run(None, {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            want = pipe.model.encode_video(pixels)
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)
    sentences = ["a dog runs on the beach", "a cat sleeps", "the dog"]
    for batch in (1, 3):
        enc = tokenize(pipe.tokenizer, sentences[:batch], 16)
        (got,) = text.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})
        with torch.no_grad():
            want = pipe.model.encode_text(enc["input_ids"], enc["attention_mask"])
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_preprocessing_json_describes_the_pipeline(exported):
    out, tok = exported
    spec = json.loads((out / "preprocessing.json").read_text())
    assert spec["embedding_dim"] == 32 and spec["normalized"] is True
    v, t = spec["video"], spec["text"]
    assert v["frames"] == 5 and v["image_size"] == 32 and v["shape"] == ["batch", 5, 3, 32, 32]
    assert v["mean"] == pytest.approx(CLIP_MEAN) and v["std"] == pytest.approx(CLIP_STD)
    assert v["resize"]["mode"] == "squash" and v["resize"]["interpolation"] == "bicubic"
    assert t["context_length"] == 16 and t["tokenizer"]["files"] == "tokenizer/"
    assert t["tokenizer"]["eot_id"] == t["tokenizer"]["pad_id"] == t["tokenizer"]["size"] - 1
    assert set(spec["verified"]["video"]) == {"1", "3"} and spec["verified"]["traced_batch"] == 2
    assert all(d <= 1e-4 for d in spec["verified"]["text"].values())
    # the saved tokenizer gives the same ids as the one exported from
    from clipvip.tokenizer import load_tokenizer

    a = tokenize(load_tokenizer(out / "tokenizer"), ["a dog runs"], 16)
    b = tokenize(load_tokenizer(tok), ["a dog runs"], 16)
    assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.slow
def test_verification_rejects_a_static_batch_graph(exported, tmp_path):
    """The failure the issue saw (a graph pinned to the traced batch) must fail the export's own check."""
    import onnx

    out, _ = exported
    graph = onnx.load(str(out / "video.onnx"))
    dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 2
    static = tmp_path / "static.onnx"
    onnx.save(graph, str(static))
    model = clipvip.load("clipvip-tiny", device="cpu", tokenizer=out / "tokenizer").model
    with pytest.raises(ExportError, match="batch of 1"):
        verify_onnx(model, "video", static, frames=5, context_length=16)


@pytest.mark.slow
def test_existing_directories_are_not_clobbered(exported, tmp_path, capsys):
    out, tok = exported
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli_main(["export", "clipvip-tiny", "--tokenizer", str(tok), "--out", str(mine)]) == 2
    assert "not empty and is not a clipvip export" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    # a previous export is replaced only with --overwrite (checked before any work is done)
    assert cli_main(["export", "clipvip-tiny", "--tokenizer", str(tok), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_export_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path):
    from clipvip.export import check_tokenizer
    from clipvip.tokenizer import load_tokenizer

    tok = load_tokenizer(build_word_tokenizer(WORDS, tmp_path / "tok"))
    check_tokenizer(tok, 49408)
    with pytest.raises(ExportError, match="tokenizer and model disagree"):
        check_tokenizer(tok, len(tok) - 1)
