"""Tokenizer: OpenAI CLIP's exact ids from the BPE file, truncation keeping EOT, word tokenizers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from clipvip.tokenizer import build_word_tokenizer, load_tokenizer, tokenize
from tests.conftest import asset


@pytest.fixture(scope="module")
def openai_tok(tmp_path_factory):
    import os

    bpe = asset("clip/bpe_simple_vocab_16e6.txt.gz")
    os.environ["CLIPVIP_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return load_tokenizer(bpe)
    finally:
        del os.environ["CLIPVIP_CACHE"]


def test_hand_verified_example(openai_tok):
    # from ../shared/assets/README.md (OpenAI CLIP's tokenizer)
    enc = tokenize(openai_tok, ["a person is connecting something to system"], 77)
    assert enc["input_ids"][0, :9].tolist() == [49406, 320, 2533, 533, 41429, 2006, 531, 2422, 49407]
    assert enc["input_ids"][0, 9:].eq(49407).all()  # padded with EOT
    assert enc["attention_mask"][0].tolist() == [1] * 9 + [0] * 68
    assert enc["input_ids"].dtype == torch.int64


def test_all_msrvtt_test_captions_and_awkward_strings_match_openai(openai_tok):
    records = json.loads(asset("clip/openai_ids_msrvtt_test.json").read_text())
    with open(asset("annotations/msrvtt/MSRVTT_JSFUSION_test.csv"), newline="") as fh:
        sentences = {row["sentence"] for row in csv.DictReader(fh)}
    assert sum(r["text"] in sentences for r in records) == 1000  # the ids are for these captions
    enc = tokenize(openai_tok, [r["text"] for r in records], 77)
    wrong = [r["text"] for i, r in enumerate(records)
             if enc["input_ids"][i, : len(r["ids"])].tolist() != r["ids"]
             or int(enc["attention_mask"][i].sum()) != len(r["ids"])]
    assert wrong == []


def test_truncation_keeps_eot_last(openai_tok):
    enc = tokenize(openai_tok, ["a b c d e f g h", "a b"], 5)
    assert enc["input_ids"].tolist() == [[49406, 320, 321, 322, 49407], [49406, 320, 321, 49407, 49407]]
    assert enc["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 1, 0]]


def test_word_tokenizer_small_and_whole_words(tmp_path):
    words = ["red", "dog", "cat", "at", "a", "running", "dogs"]
    out = build_word_tokenizer(words + ["A red dog"], tmp_path / "tok")
    tok = load_tokenizer(out, max_length=16)
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    assert end == len(tok) - 1 < 1000 and tok.convert_tokens_to_ids("<|startoftext|>") == end - 1
    enc = tokenize(tok, ["A red  dog at the cat running dogs"], 16)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0, :12].tolist())
    assert tokens == ["<|startoftext|>", "a</w>", "red</w>", "dog</w>", "at</w>", "t", "h", "e</w>",
                      "cat</w>", "running</w>", "dogs</w>", "<|endoftext|>"]
    assert int(enc["input_ids"].max()) == end


def test_missing_sources_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "empty")


_OFFLINE_PROBE = r"""
import json, sys, time
out = {}
def attempt(name, fn):
    start = time.perf_counter()
    try:
        fn()
        out[name] = {"error": None}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    out[name]["seconds"] = time.perf_counter() - start

import clipvip
from clipvip.model import CLIPViP
from clipvip.tokenizer import load_tokenizer
# Import cost is not failure latency (seconds on a busy machine): load the libraries before timing.
import huggingface_hub, transformers
from transformers import AutoTokenizer, CLIPModel
spec = "openai/clip-vit-base-patch32"
attempt("tokenizer", lambda: load_tokenizer(spec))
attempt("from_clip", lambda: CLIPViP.from_clip(spec))
attempt("pipeline", lambda: clipvip.load(spec, device="cpu"))
print(json.dumps(out))
"""


@pytest.mark.parametrize("offline", [
    {"HF_HUB_OFFLINE": "1"},
    # No offline flag, but the hub cannot be resolved (.invalid never resolves, RFC 6761): this is the case
    # where transformers alone retries for ~90 s.
    {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://clipvip-hub.invalid"},
], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_uncached_hub_name_offline_fails_fast_and_says_why(tmp_path, offline):
    """An uncached hub name offline must fail in < 5 s with a message naming the spec and the way out
    (internet or a local directory), for the tokenizer, ``from_clip`` and ``clipvip.load``. A fresh process
    with an empty cache, so huggingface_hub reads the environment at import as it does for users."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), CLIPVIP_CACHE=str(tmp_path / "c"), **offline)
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_PROBE], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, res in results.items():
        assert res["error"] is not None, f"{name} loaded a hub name offline from an empty cache"
        assert res["seconds"] < 5, f"{name} took {res['seconds']:.1f} s to fail"
        message = res["error"]
        assert "openai/clip-vit-base-patch32" in message, message
        assert "internet" in message and "local" in message, message


def test_not_a_path_and_not_a_repo_id_is_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "no" / "such" / "tokenizer")
