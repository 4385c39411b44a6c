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
