"""Inference dtype: ``auto`` resolution from (fake) cpuinfo, bf16 embeddings close to fp32, ids that differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipvip
from clipvip.device import auto_prefers_bf16, cpu_flags, cpu_has_fast_bf16, dtype_name, resolve_dtype
from clipvip.pipeline import VideoTextPipeline
from conftest import ASSETS
from test_pipeline import CAPTION, make_video, shared_tokenizer

# Trimmed /proc/cpuinfo of real machines (one processor each; the flags lines are abridged).
CPUINFO_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
CPUINFO_SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
CPUINFO_COOPER_LAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8380H
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""
CPUINFO_SKYLAKE_AVX512 = """processor\t: 0
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl avx512_vnni
"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16
"""


# ------------------------------------------------------------------ auto resolution
@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (CPUINFO_AVX2, torch.float32),
    (CPUINFO_SKYLAKE_AVX512, torch.float32),  # AVX-512 without the bf16 dot product: emulated, slow
    (CPUINFO_COOPER_LAKE, torch.bfloat16),  # AVX512-BF16
    (CPUINFO_SAPPHIRE_RAPIDS, torch.bfloat16),  # AMX-BF16
    (CPUINFO_ARM, torch.float32),  # not measured on aarch64: stay fp32
    ("", torch.float32),
])
def test_auto_on_cpu_follows_the_bf16_flags(cpuinfo: str, expected: torch.dtype):
    assert resolve_dtype("auto", "cpu", cpuinfo=cpuinfo) == expected
    assert cpu_has_fast_bf16(cpuinfo) == (expected == torch.bfloat16)


def test_cpuinfo_file_read_and_missing_file(tmp_path: Path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO_SAPPHIRE_RAPIDS + "\n" + CPUINFO_SAPPHIRE_RAPIDS.replace("processor\t: 0", "processor\t: 1"))
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= cpu_flags(fake)
    assert resolve_dtype("auto", "cpu", cpuinfo=fake) == torch.bfloat16
    assert cpu_flags(tmp_path / "absent") == set()  # macOS / Windows: no /proc/cpuinfo -> fp32
    assert resolve_dtype("auto", "cpu", cpuinfo=tmp_path / "absent") == torch.float32


def test_auto_on_cuda_needs_bf16_support(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda", cpuinfo=CPUINFO_AVX2) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or T4
    assert resolve_dtype("auto", "cuda:0", cpuinfo=CPUINFO_SAPPHIRE_RAPIDS) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not auto_prefers_bf16("cuda")
    assert not auto_prefers_bf16("meta", cpuinfo=CPUINFO_SAPPHIRE_RAPIDS)


def test_explicit_values_and_errors():
    assert resolve_dtype(None) == torch.float32
    assert resolve_dtype("fp32", cpuinfo=CPUINFO_SAPPHIRE_RAPIDS) == torch.float32
    assert resolve_dtype("BF16", cpuinfo=CPUINFO_AVX2) == torch.bfloat16  # explicit bf16 is honoured anywhere
    assert resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert dtype_name(torch.bfloat16) == "bf16" and dtype_name(torch.float32) == "fp32"
    with pytest.raises(ValueError, match="fp32, bf16, auto"):
        resolve_dtype("fp16")
    with pytest.raises(ValueError, match="unsupported"):
        resolve_dtype(torch.float16)


# ------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def pair() -> tuple[VideoTextPipeline, VideoTextPipeline]:
    tok = shared_tokenizer()
    return (clipvip.load("clipvip-tiny", device="cpu", tokenizer=tok),
            clipvip.load("clipvip-tiny", device="cpu", tokenizer=tok, dtype="bf16"))


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def test_model_id_includes_the_dtype(pair):
    fp32, bf16 = pair
    assert bf16.dtype == torch.bfloat16 and bf16.dtype_name == "bf16" and fp32.dtype_name == "fp32"
    assert fp32.model_id != bf16.model_id
    # fp32 is the default and keeps the id it always had: existing fp32 indexes stay valid
    again = clipvip.load("clipvip-tiny", device="cpu", tokenizer=fp32.tokenizer, dtype="fp32")
    assert again.model_id == fp32.model_id
    assert clipvip.load("clipvip-tiny", tokenizer=fp32.tokenizer, dtype=torch.bfloat16).model_id == bf16.model_id
    auto = clipvip.load("clipvip-tiny", device="cpu", tokenizer=fp32.tokenizer, dtype="auto")
    assert auto.dtype == resolve_dtype("auto", "cpu")  # this machine's own answer
    with pytest.raises(ValueError, match="dtype must be one of"):
        clipvip.load("clipvip-tiny", tokenizer=fp32.tokenizer, dtype="half")


def test_bf16_runs_the_matmuls_in_bf16_and_returns_float32(pair):
    fp32, bf16 = pair
    seen: list[torch.dtype] = []
    hooks = [p.model.visual_projection.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for p in (bf16, fp32)]
    try:
        bf16.encode_frames([torch.zeros(12, 40, 40, 3, dtype=torch.uint8)])
        fp32.encode_frames([torch.zeros(12, 40, 40, 3, dtype=torch.uint8)])
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert next(bf16.model.parameters()).dtype == torch.float32  # weights stay fp32 (autocast, not a cast)


def test_bf16_text_embeddings_within_cosine_0999_of_fp32(pair):
    fp32, bf16 = pair
    texts = [CAPTION, "a little girl does gymnastics", "x", "Un chien court dans l'herbe 🐕", " ".join(["dog"] * 90)]
    a, b = fp32.encode_texts(texts), bf16.encode_texts(texts)
    assert b.dtype == torch.float32
    torch.testing.assert_close(b.norm(dim=1), torch.ones(len(texts)), atol=1e-6, rtol=0)
    assert _cosines(a, b).min() >= 0.999
    assert not torch.equal(a, b)  # bf16 really changed the arithmetic


def test_bf16_video_embeddings_within_cosine_0999_of_fp32(pair, tmp_path: Path):
    fp32, bf16 = pair
    paths = [make_video(tmp_path / f"v{i}.mp4", seed=i, frames=5 + i) for i in range(3)]
    real = sorted((ASSETS / "videos").glob("*.mp4")) if (ASSETS / "videos").is_dir() else []
    paths += real[:3]  # real clips when the shared assets are present (MSR-VTT, portrait, 720p)
    a = fp32.encode_video_files(paths, batch_size=4)
    b = bf16.encode_video_files(paths, batch_size=4)
    assert a.paths == b.paths == [str(p) for p in paths] and not b.failures
    assert b.embeddings.dtype == torch.float32
    torch.testing.assert_close(b.embeddings.norm(dim=1), torch.ones(len(paths)), atol=1e-6, rtol=0)
    assert _cosines(a.embeddings, b.embeddings).min() >= 0.999
    assert not torch.equal(a.embeddings, b.embeddings)


def test_an_index_refuses_to_mix_fp32_and_bf16(pair, tmp_path: Path):
    from clipvip.search.index import ModelMismatchError, build_index

    fp32, bf16 = pair
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", seed=1)
    build_index(videos, tmp_path / "index", fp32, progress=False, workers=1)
    with pytest.raises(ModelMismatchError, match=bf16.model_id):
        build_index(videos, tmp_path / "index", bf16, progress=False, workers=1)


def test_a_bf16_index_is_searched_with_a_bf16_model(tmp_path: Path, bpe_path: Path, capsys: pytest.CaptureFixture[str]):
    """`clipvip index --dtype bf16` records the compute dtype, so `clipvip search` reloads the model in bf16
    (same model id) instead of refusing the index as another model's."""
    from clipvip.cli import main as cli_main

    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", seed=1)
    index = tmp_path / "index"
    assert cli_main(["index", str(videos), "--index", str(index), "--model", "clipvip-tiny", "--tokenizer",
                     str(bpe_path), "--dtype", "bf16", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["search", str(index), "a green dot", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert [h["path"] for h in hits] == ["a.mp4"]


# ------------------------------------------------------------------ eval CLI
def test_eval_cli_dtype(pair, tmp_path: Path, bpe_path: Path, capsys: pytest.CaptureFixture[str]):
    from clipvip.cli import main as cli_main
    from clipvip.data.annotations import write_jsonl

    fp32, bf16 = pair
    vids = [make_video(tmp_path / f"e{i}.mp4", seed=10 + i) for i in range(3)]
    data = tmp_path / "test.jsonl"
    write_jsonl([{"video": str(v), "texts": [f"clip number {i}"], "split": "test"} for i, v in enumerate(vids)], data)
    results = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.json"
        code = cli_main(["eval", "--model", "clipvip-tiny", "--tokenizer", str(bpe_path), "--data", str(data),
                         "--device", "cpu", "--dtype", dtype, "--out", str(out), "--no-progress"])
        assert code == 0
        assert f"({dtype})" in capsys.readouterr().out
        results[dtype] = json.loads(out.read_text())
    assert results["fp32"]["dtype"] == "fp32" and results["fp32"]["model_id"] == fp32.model_id
    assert results["bf16"]["dtype"] == "bf16" and results["bf16"]["model_id"] == bf16.model_id
    with pytest.raises(SystemExit):
        cli_main(["eval", "--model", "clipvip-tiny", "--data", str(data), "--dtype", "fp16"])
