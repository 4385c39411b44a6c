"""Auxiliary captions: middle frame, <= 16 words, one line per clip, resumable, failures reported.

Videos are tiny generated clips whose frame i is a flat grey of level 16*i, so a captioner that reads the
grey level tells which frame it was shown; the reference is the pretraining rule "frame N // 2".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipvip.analysis.captions import (
    caption_clips,
    list_clips,
    load_captioner,
    merge_captions,
    read_captions,
    truncate_words,
)
from clipvip.cli import main as cli_main


def _write_video(path: Path, num_frames: int, size: int = 32, fps: int = 10) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "1"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 16 * i, np.uint8), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def frame_index_captioner(images):
    """Names the frame it saw (grey level / 16) and pads to 30 words, to exercise the 16-word cut."""
    out = []
    for im in images:
        level = float(np.asarray(im).mean())
        out.append(f"frame {round(level / 16)} " + " ".join(["word"] * 28))
    return out


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    _write_video(root / "a.mp4", 11)  # middle = frame 5
    _write_video(root / "sub" / "b.mp4", 8)  # middle = frame 4
    _write_video(root / "c.mp4", 3)  # middle = frame 1
    (root / "broken.mp4").write_bytes(b"this is not a video")
    (root / "notes.txt").write_text("ignored")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_truncate_words():
    assert truncate_words("  a\n dog   runs ") == "a dog runs"
    assert truncate_words(" ".join(str(i) for i in range(40))) == " ".join(str(i) for i in range(16))
    with pytest.raises(ValueError):
        truncate_words("x", 0)


def test_callable_captioner_middle_frame_resume_and_failures(video_dir, tmp_path):
    out = tmp_path / "caps.jsonl"
    report = caption_clips(video_dir, frame_index_captioner, out, batch_size=2, progress=False)
    assert (report.total, report.written, report.skipped) == (4, 3, 0)
    assert [(Path(p).name, "broken" in p) for p, _ in report.failures] == [("broken.mp4", True)]
    lines = _lines(out)
    assert sorted(r["video"] for r in lines) == ["a.mp4", "c.mp4", "sub/b.mp4"]
    by_video = {r["video"]: r["caption"] for r in lines}
    assert by_video["a.mp4"].startswith("frame 5 ")
    assert by_video["sub/b.mp4"].startswith("frame 4 ")
    assert by_video["c.mp4"].startswith("frame 1 ")
    assert all(len(c.split()) == 16 for c in by_video.values())
    failures = _lines(tmp_path / "caps.jsonl.failures.jsonl")
    assert len(failures) == 1 and failures[0]["path"].endswith("broken.mp4") and failures[0]["reason"]

    calls = []

    def counting(images):
        calls.append(len(images))
        return frame_index_captioner(images)

    again = caption_clips(video_dir, counting, out, progress=False)
    assert (again.written, again.skipped, len(again.failures)) == (0, 3, 1)  # the broken clip is retried
    assert calls == [] and _lines(out) == lines


def test_torn_last_line_is_repaired(video_dir, tmp_path):
    out = tmp_path / "caps.jsonl"
    out.write_text(json.dumps({"video": "a.mp4", "caption": "kept"}) + "\n" + '{"video": "c.mp4", "capt')
    assert set(read_captions(out)) == {("a.mp4", None, None)}
    caption_clips(video_dir, frame_index_captioner, out, progress=False)
    lines = _lines(out)  # every line parses
    assert sorted(r["video"] for r in lines) == ["a.mp4", "c.mp4", "sub/b.mp4"]
    assert {r["video"]: r["caption"] for r in lines}["a.mp4"] == "kept"


def test_jsonl_source_with_windows_and_merge(video_dir, tmp_path):
    pre = tmp_path / "pretrain.jsonl"
    records = [
        {"video": "a.mp4", "start": 0.0, "end": 0.4, "subtitle": "so here we go"},  # frames 0..4 -> 2
        {"video": "a.mp4", "start": 0.5, "end": 1.0, "subtitle": "and then"},  # frames 5..10 -> 8
        {"video": "sub/b.mp4", "subtitle": "hello", "caption": "already there"},
        {"video": "missing.mp4", "subtitle": "gone"},
    ]
    pre.write_text("".join(json.dumps(r) + "\n" for r in records))
    clips = list_clips(pre, video_root=video_dir)
    assert [(c.video, c.start, c.end) for c in clips] == [("a.mp4", 0.0, 0.4), ("a.mp4", 0.5, 1.0),
                                                          ("sub/b.mp4", None, None), ("missing.mp4", None, None)]
    caps = tmp_path / "caps.jsonl"
    report = caption_clips(pre, frame_index_captioner, caps, video_root=video_dir, max_words=2, progress=False)
    assert report.written == 3 and len(report.failures) == 1
    got = {(r["video"], r.get("start")): r["caption"] for r in _lines(caps)}
    assert got == {("a.mp4", 0.0): "frame 2", ("a.mp4", 0.5): "frame 8", ("sub/b.mp4", None): "frame 4"}

    merged = tmp_path / "merged.jsonl"
    counts = merge_captions(pre, caps, merged)
    assert counts == {"records": 4, "captioned": 3, "missing": 1}
    rows = _lines(merged)
    assert [r.get("caption") for r in rows] == ["frame 2", "frame 8", "already there", None]
    assert [r["subtitle"] for r in rows] == [r["subtitle"] for r in records]  # nothing else changes
    merge_captions(pre, caps, merged, overwrite=True)
    assert _lines(merged)[2]["caption"] == "frame 4"


def test_captioner_contract_errors(video_dir, tmp_path):
    with pytest.raises(ValueError, match="returned 1 captions for 2"):
        caption_clips(video_dir, lambda ims: ["one"], tmp_path / "x.jsonl", batch_size=2, progress=False)
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        load_captioner("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="does not exist"):
        load_captioner(str(tmp_path / "no-model-here"))
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ValueError, match="not a transformers model"):
        load_captioner(str(tmp_path / "not-a-model"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n{"subtitle": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: a record needs a 'video'"):
        list_clips(bad)


def test_offline_hub_captioner_fails_at_once_with_one_line_naming_the_flag(video_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """Before: ~28 s of retries, every warning printed twice, and "not a transformers model name"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    rc = cli_main(["caption", str(video_dir), "--captioner", "Salesforce/blip-image-captioning-base",
                   "--out", str(tmp_path / "c.jsonl"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("clipvip caption: error: --captioner Salesforce/blip-image-captioning-base: ")
    assert "offline" in lines[0] and "internet" in lines[0]
    assert not (tmp_path / "c.jsonl").exists()


def test_file_callable_spec_through_cli(video_dir, tmp_path, capsys):
    module = tmp_path / "my_captioner.py"
    module.write_text("def caption(images):\n    return ['a grey square'] * len(images)\n")
    out = tmp_path / "caps.jsonl"
    rc = cli_main(["caption", str(video_dir), "--captioner", f"{module}:caption", "--out", str(out),
                   "--no-progress"])
    assert rc == 1  # one unreadable clip
    text = capsys.readouterr().out
    assert "3 captioned" in text and "broken.mp4" in text
    assert {r["caption"] for r in _lines(out)} == {"a grey square"}


def _tiny_git_captioner(where: Path) -> Path:
    """A randomly initialised GIT captioner (vision + text decoder) with a BERT tokenizer built offline."""
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a the dog cat runs red ball on grass man".split()
    where.mkdir(parents=True)
    (where / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(where / "vocab.txt"), do_lower_case=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(where)
    config = GitConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    GitForCausalLM(config).save_pretrained(where)
    return where


@pytest.mark.slow
def test_transformers_captioner_end_to_end(video_dir, tmp_path, capsys):
    model_dir = _tiny_git_captioner(tmp_path / "tiny-git")
    out = tmp_path / "caps.jsonl"
    argv = ["caption", str(video_dir), "--captioner", str(model_dir), "--out", str(out), "--batch-size", "2",
            "--max-new-tokens", "40", "--no-progress"]
    assert cli_main(argv) == 1
    lines = _lines(out)
    assert sorted(r["video"] for r in lines) == ["a.mp4", "c.mp4", "sub/b.mp4"]
    vocab = set("a the dog cat runs red ball on grass man".split())
    for r in lines:
        words = r["caption"].split()
        assert len(words) <= 16 and set(words) <= vocab
    capsys.readouterr()
    assert cli_main(argv) == 1
    assert "0 captioned, 3 already done, 1 unreadable" in capsys.readouterr().out
    assert _lines(out) == lines


def test_non_utf8_jsonl_source_names_the_file_and_line(tmp_path):
    src = tmp_path / "clips.jsonl"
    src.write_bytes(b'{"video": "a.mp4"}\n' + '{"video": "caf\u00e9.mp4"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"clips\.jsonl:2: not UTF-8"):
        list_clips(src)
