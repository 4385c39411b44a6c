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


# ------------------------------------------------------------------------------------------------------
# An independent reference of OpenAI CLIP's tokenizer, written here from the algorithm (clean-up, word
# pattern, byte-to-symbol map, greedy lowest-rank BPE), sharing no code with clipvip.tokenizer.
class _ReferenceCLIPTokenizer:
    SOT, EOT = 49406, 49407

    def __init__(self, bpe_file):
        import gzip

        import regex

        # Bytes that print as themselves keep their code point; the other 68 take 256, 257, ... in order.
        keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        others = [b for b in range(256) if b not in keep]
        self.byte_symbol = {b: chr(b) for b in keep} | {b: chr(256 + k) for k, b in enumerate(others)}
        symbols = [self.byte_symbol[b] for b in keep + others]
        with gzip.open(bpe_file, "rt", encoding="utf-8") as fh:
            merge_lines = fh.read().split("\n")[1 : 1 + 48894]  # header line, then 49152 - 256 - 2 merges
        merges = [tuple(line.split()) for line in merge_lines]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        assert len(self.ids) == self.SOT
        self.rank = {m: r for r, m in enumerate(merges)}
        self.word_pattern = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE)
        self.space = regex.compile(r"\s+")
        self.memo = {}

    def clean(self, text):
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return self.space.sub(" ", text).strip().lower()

    def bpe(self, word):
        if word in self.memo:
            return self.memo[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.rank.get(p, float("inf")))
            if best not in self.rank:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.memo[word] = parts
        return parts

    def encode(self, text):
        out = []
        for word in self.word_pattern.findall(self.clean(text)):
            if word in ("<|startoftext|>", "<|endoftext|>"):
                out.append(self.SOT if word == "<|startoftext|>" else self.EOT)
                continue
            symbols = "".join(self.byte_symbol[b] for b in word.encode("utf-8"))
            out += [self.ids[p] for p in self.bpe(symbols)]
        return [self.SOT, *out, self.EOT]


#: Strings where a tokenizer without OpenAI's clean-up gives other ids: curly quotes, ligatures, fullwidth,
#: mojibake, (double) entities, emoji, no-break and odd spaces, decomposed accents, special tokens.
TRICKY = [
    "the man’s dog isn’t “happy”", "ﬁnally the ﬂoor is ﬀ", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３", "cafÃ© crÃ¨me",
    "â€œquotedâ€\x9d mojibake", "tom &amp;amp; jerry &lt;3 &quot;hi&quot;", "&#39;single&#39; &eacute;t&eacute;",
    "emoji 🎉👍🏽 family 👨‍👩‍👧", "no\u00a0break\u2003em\u200bzero", "Cafe\u0301 de\u0301ja\u0300",
    "İSTANBUL ΣΟΦΟΣ straße", "a <|endoftext|> b", "tab\tnew\nline\r\n end", "x" * 300,
]


@pytest.fixture(scope="module")
def reference():
    return _ReferenceCLIPTokenizer(asset("clip/bpe_simple_vocab_16e6.txt.gz"))


def _real_sentences():
    didemo = json.loads(asset("annotations/didemo/test_data.json").read_text())
    anet = json.loads(asset("annotations/activitynet/val_1.json").read_text())
    return [d["description"] for d in didemo] + [s for v in anet.values() for s in v["sentences"]]


def test_reference_reproduces_openai_ids(reference):
    # The reference itself against ids computed by OpenAI's own tokenizer (shared asset).
    records = json.loads(asset("clip/openai_ids_msrvtt_test.json").read_text())
    assert [reference.encode(r["text"]) for r in records] == [r["ids"] for r in records]


@pytest.mark.slow
def test_bundled_tokenizer_call_and_tokenize_give_openai_ids(reference):
    """The object load_tokenizer returns (bundled vocabulary, no argument) gives OpenAI's ids through its own
    HF-style __call__ AND through tokenize(), on every DiDeMo test and ActivityNet val_1 sentence (21,526,
    7 with curly quotes) and on the tricky strings."""
    tok = load_tokenizer()
    texts = _real_sentences() + TRICKY
    assert len(texts) == 4021 + 17505 + len(TRICKY)
    expected = [reference.encode(t) for t in texts]
    got = tok(texts)["input_ids"]  # no truncation: the full sequences
    wrong = [t for t, e, g in zip(texts, expected, got) if list(g) != e]
    assert wrong == []
    assert tok.encode(TRICKY[0]) == expected[len(texts) - len(TRICKY)]
    assert tok("the man’s car")["input_ids"] == reference.encode("the man's car")
    enc = tokenize(tok, texts, 77)
    for i, e in enumerate(expected):
        e = e if len(e) <= 77 else e[:76] + [reference.EOT]  # OpenAI's truncate=True keeps EOT last
        n = int(enc["attention_mask"][i].sum())
        assert enc["input_ids"][i, :n].tolist() == e, texts[i]


def test_clean_up_is_inside_the_tokenizer_object(reference, tmp_path):
    tok = load_tokenizer()
    for text in TRICKY[:7]:
        assert tok(text)["input_ids"] == reference.encode(text), text
        assert tok.tokenize(text) == tok.convert_ids_to_tokens(reference.encode(text)[1:-1]), text
    # Saved and reloaded: still OpenAI's ids, and saved as a plain CLIP tokenizer for other libraries.
    tok.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"
    again = load_tokenizer(tmp_path / "saved")
    assert again(TRICKY[0])["input_ids"] == reference.encode(TRICKY[0])
    # Picklable (DataLoader workers started with spawn receive the collator's tokenizer by pickle).
    import pickle

    copy = pickle.loads(pickle.dumps(tok))
    assert type(copy) is type(tok) and copy(TRICKY[0])["input_ids"] == reference.encode(TRICKY[0])


def test_bundled_vocabulary_is_openais_and_ships_with_a_licence():
    from pathlib import Path

    import clipvip.tokenizer as t

    shared = asset("clip/bpe_simple_vocab_16e6.txt.gz")
    assert t.BUNDLED_BPE.is_file() and t.BUNDLED_BPE.read_bytes() == shared.read_bytes()
    notice = (t.BUNDLED_BPE.parent / "NOTICE-openai-clip.txt").read_text()
    assert "MIT License" in notice and "OpenAI" in notice
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"assets/*"' in pyproject and "ftfy>=6" in pyproject


def test_registry_and_official_models_need_no_tokenizer_offline(tmp_path):
    """A registry model loads offline with no tokenizer given (the bundled vocabulary), in a fresh process
    with an empty cache and the hub unreachable."""
    import os
    import subprocess
    import sys

    probe = ("import clipvip; p = clipvip.load('clipvip-tiny', device='cpu'); "
             "print(p.tokenizer_spec); print(p.encode_texts(['the man’s dog']).shape)")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), CLIPVIP_CACHE=str(tmp_path / "c"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].endswith("bpe_simple_vocab_16e6.txt.gz") and "clipvip" in lines[-2]
    assert lines[-1] == "torch.Size([1, 32])"
