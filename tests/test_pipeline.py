"""``clipvip.load``: every kind of spec, the file/text encoders, failures and the model id."""

from __future__ import annotations

import functools
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import clipvip
from clipvip.config import CLIPViPConfig
from clipvip.pipeline import EncodeResult, VideoTextPipeline
from conftest import asset

# OpenAI CLIP's ids for this caption (shared/assets/README.md), padded with EOT to the 77-token context.
CAPTION = "a person is connecting something to system"
CAPTION_IDS = [49406, 320, 2533, 533, 41429, 2006, 531, 2422, 49407]


def make_video(path: Path, seed: int, frames: int = 6, size: tuple[int, int] = (40, 56)) -> Path:
    """A small mpeg4 clip of random coloured blocks (distinct per seed)."""
    rng = np.random.default_rng(seed)
    h, w = size
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=6)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    for i in range(frames):
        img = np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1), np.uint8))
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@functools.lru_cache(maxsize=1)
def shared_tokenizer():
    """CLIP's tokenizer, built once per test session (about a second) and shared by the search tests."""
    from clipvip.tokenizer import load_tokenizer

    return load_tokenizer(asset("clip/bpe_simple_vocab_16e6.txt.gz"))


@pytest.fixture
def tokenizer():
    return shared_tokenizer()


@pytest.fixture
def tiny(tokenizer) -> VideoTextPipeline:
    return clipvip.load("clipvip-tiny", device="cpu", tokenizer=tokenizer)


def _reference_ids(n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((n, 77), 49407, dtype=torch.int64)
    ids[:, : len(CAPTION_IDS)] = torch.tensor(CAPTION_IDS)
    mask = torch.zeros((n, 77), dtype=torch.int64)
    mask[:, : len(CAPTION_IDS)] = 1
    return ids, mask


def test_registry_load_encodes_text_like_the_model_on_openai_ids(tiny: VideoTextPipeline):
    assert isinstance(tiny, VideoTextPipeline) and tiny.dim == 32 and tiny.num_frames == 12
    out = tiny.encode_texts([CAPTION, "  " + CAPTION + " "])
    ids, mask = _reference_ids(2)
    with torch.no_grad():
        ref = tiny.model.encode_text(ids, mask)
    assert out.shape == (2, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_bad_queries_are_refused_with_the_reason(tiny: VideoTextPipeline):
    with pytest.raises(ValueError, match="empty"):
        tiny.encode_texts(["   "])
    with pytest.raises(ValueError, match="1001 characters"):
        tiny.encode_texts(["a" * 1001])
    long = " ".join(["dog"] * 200)  # over the token context but under the character limit: truncated
    assert tiny.encode_texts([long]).shape == (1, 32)


def test_encode_video_files_keeps_order_and_reports_failures(tiny: VideoTextPipeline, tmp_path: Path):
    a = make_video(tmp_path / "a.mp4", 1)
    b = make_video(tmp_path / "b.mp4", 2, frames=3)  # fewer frames than sampled: indices repeat
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    res = tiny.encode_video_files([a, empty, b, text, tmp_path / "missing.mp4"], batch_size=2)
    assert isinstance(res, EncodeResult)
    assert res.paths == [str(a), str(b)]
    assert res.embeddings.shape == (2, 32)
    assert [p for p, _ in res.failures] == [str(empty), str(text), str(tmp_path / "missing.mp4")]
    assert all(reason for _, reason in res.failures)
    # batching does not change the numbers; a video's embedding is its own
    one = tiny.encode_video_files([b], batch_size=1)
    torch.testing.assert_close(one.embeddings[0], res.embeddings[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(res.embeddings[0], res.embeddings[1])


def test_video_embedding_equals_model_on_linspace_frames(tiny: VideoTextPipeline, tmp_path: Path):
    """Independent decode: PyAV every frame, pick round(linspace(0, N-1, T)), squash-resize, normalise."""
    path = make_video(tmp_path / "v.mp4", 3, frames=7)
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, tiny.num_frames).round().astype(int)
    clip = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).float() / 255
    clip = torch.nn.functional.interpolate(clip, size=(32, 32), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = tiny.model.encode_video(((clip - mean) / std)[None])[0]
    got = tiny.encode_video_files([path]).embeddings[0]
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.999


def test_model_id_is_a_fingerprint_of_weights_and_sampling(bpe_path: Path, tokenizer):
    a = clipvip.load("clipvip-tiny", tokenizer=bpe_path)  # by path: recorded for the index
    b = clipvip.load("clipvip-tiny", tokenizer=tokenizer)
    c = clipvip.load("clipvip-tiny@seed1", tokenizer=tokenizer)
    d = clipvip.load("clipvip-tiny", tokenizer=tokenizer, num_frames=4)
    assert a.model_id == b.model_id
    assert len({a.model_id, c.model_id, d.model_id}) == 3
    assert c.spec == "clipvip-tiny@seed1" and d.num_frames == 4
    assert a.tokenizer_spec == str(bpe_path.resolve())
    assert b.tokenizer_spec == tokenizer.clipvip_source  # an object from load_tokenizer records its source


def test_our_directory_round_trip(tiny: VideoTextPipeline, tmp_path: Path):
    tiny.model.save_pretrained(tmp_path / "m", tokenizer=tiny.tokenizer)
    again = clipvip.load(tmp_path / "m", device="cpu")  # tokenizer comes from the directory
    assert again.model_id == tiny.model_id
    torch.testing.assert_close(again.encode_texts([CAPTION]), tiny.encode_texts([CAPTION]))


@pytest.mark.slow
def test_transformers_clip_directory_is_zero_shot_clip(tmp_path: Path, tokenizer):
    """Text features of the loaded CLIP-ViP equal transformers' CLIPModel text features (reference §10 d)."""
    from transformers import CLIPModel

    hf_cfg = CLIPViPConfig.from_name("clipvip-tiny").to_hf()
    hf = CLIPModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hfclip")
    pipe = clipvip.load(tmp_path / "hfclip", device="cpu", tokenizer=tokenizer)
    ids, mask = _reference_ids()
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=ids, attention_mask=mask)
        ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(ref, dim=-1)
    torch.testing.assert_close(pipe.encode_texts([CAPTION]), ref, atol=1e-5, rtol=1e-4)


def test_official_checkpoint_layout(tiny: VideoTextPipeline, tmp_path: Path, tokenizer):
    """A ``clipmodel.``-prefixed flat state dict with ``position_ids`` (reference §7.2) loads to the same weights."""
    state = {f"clipmodel.{k}": v.half() if v.is_floating_point() else v for k, v in tiny.model.state_dict().items()}
    state["clipmodel.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(state, tmp_path / "official.pt")
    pipe = clipvip.load(tmp_path / "official.pt", tokenizer=tokenizer, config=tiny.model.config)
    ref = {k: v.half().float() if v.is_floating_point() else v for k, v in tiny.model.state_dict().items()}
    for k, v in pipe.model.state_dict().items():
        torch.testing.assert_close(v, ref[k])


def test_clear_errors(tmp_path: Path):
    from clipvip.tokenizer import BUNDLED_BPE

    # A registry model needs no tokenizer: OpenAI's vocabulary ships with the package (issue 10 item 5).
    assert clipvip.load("clipvip-tiny", device="cpu").tokenizer_spec == str(BUNDLED_BPE)
    junk = tmp_path / "weights.txt"
    junk.write_text("nope")
    with pytest.raises(ValueError, match="not a model"):
        clipvip.load(junk)
    with pytest.raises(ValueError, match="clipvip-tiny@seedx"):
        clipvip.load("clipvip-tiny@seedx")


def test_our_directory_without_tokenizer_files_says_so(tiny: VideoTextPipeline, tmp_path: Path):
    tiny.model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        clipvip.load(tmp_path / "bare")
    assert clipvip.load(tmp_path / "bare", tokenizer=tiny.tokenizer).model_id == tiny.model_id
