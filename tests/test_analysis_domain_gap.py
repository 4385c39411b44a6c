"""Language domain gap: K-means (k=2) + NMI between cluster and corpus, checked by hand-worked formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from clipvip.analysis.domain_gap import (
    domain_gap_nmi,
    nmi_matrix,
    parse_corpus_spec,
    read_corpus,
    run_domain_gap,
    sample_texts,
)

DIM = 16
_RNG = np.random.default_rng(123)
# A fixed "embedding" of 40 words: words 0-19 lie around one direction, words 20-39 around another
# (like two vocabularies, e.g. spoken subtitles and descriptive captions), with word-level noise.
_CENTRES = _RNG.normal(size=(2, DIM))
_TABLE = np.concatenate([_CENTRES[0] + _RNG.normal(size=(20, DIM)), _CENTRES[1] + _RNG.normal(size=(20, DIM))])


def _encode(texts: list[str]) -> np.ndarray:
    """Bag-of-words over a fixed random word table, L2-normalised: a stand-in text tower."""
    out = []
    for t in texts:
        ids = [int(w[1:]) for w in t.split()]
        v = _TABLE[ids].mean(0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def _corpus(words: range, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{w}" for w in rng.choice(list(words), size=5)) for _ in range(n)]


def _nmi_by_hand(labels: np.ndarray, clusters: np.ndarray) -> float:
    """MI / mean(H(labels), H(clusters)) from the contingency table, with explicit loops."""
    n = len(labels)
    mi = 0.0
    for a in set(labels.tolist()):
        for c in set(clusters.tolist()):
            nac = sum(1 for x, y in zip(labels, clusters) if x == a and y == c)
            if nac:
                na = sum(1 for x in labels if x == a)
                nc = sum(1 for y in clusters if y == c)
                mi += nac / n * math.log(n * nac / (na * nc))

    def entropy(v):
        return -sum((v.tolist().count(k) / n) * math.log(v.tolist().count(k) / n) for k in set(v.tolist()))

    h = (entropy(labels) + entropy(clusters)) / 2
    return 0.0 if h == 0 else mi / h


def test_different_corpora_score_near_one_and_match_hand_nmi():
    from sklearn.cluster import KMeans

    a = _encode(_corpus(range(0, 20), 200, 1))
    b = _encode(_corpus(range(20, 40), 200, 2))
    value = domain_gap_nmi(a, b, seed=0)
    assert value > 0.9
    clusters = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(np.concatenate([a, b]))
    labels = np.array([0] * 200 + [1] * 200)
    assert value == pytest.approx(_nmi_by_hand(labels, clusters), abs=1e-9)


def test_two_samples_of_one_corpus_score_near_zero():
    a = _encode(_corpus(range(0, 40), 200, 3))
    b = _encode(_corpus(range(0, 40), 200, 4))
    assert domain_gap_nmi(a, b, seed=0) < 0.05


def test_partial_overlap_in_between_and_deterministic():
    a = _encode(_corpus(range(0, 25), 150, 5))
    b = _encode(_corpus(range(15, 40), 150, 6))
    v = domain_gap_nmi(a, b, seed=7)
    assert 0.05 < v < 0.95
    assert domain_gap_nmi(a, b, seed=7) == v


def test_nmi_rejects_bad_shapes():
    with pytest.raises(ValueError, match="feature sizes differ"):
        domain_gap_nmi(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        domain_gap_nmi(np.zeros(3), np.zeros((3, 3)))


def test_matrix_symmetric_with_noise_floor_diagonal():
    feats = {"x": _encode(_corpus(range(0, 20), 100, 1)), "y": _encode(_corpus(range(20, 40), 100, 2))}
    names, m = nmi_matrix(feats, seed=0)
    assert names == ["x", "y"]
    assert m[0, 1] == m[1, 0] > 0.9
    assert m[0, 0] < 0.1 and m[1, 1] < 0.1


def test_read_corpus_forms(tmp_path):
    (tmp_path / "subs.txt").write_text("hello there\n\n  so um yeah \n")
    with open(tmp_path / "msrvtt.jsonl", "w") as fh:
        fh.write(json.dumps({"video": "a.mp4", "texts": ["a dog runs", "a dog"]}) + "\n\n")
        fh.write(json.dumps({"video": "b.mp4", "texts": ["a cat"]}) + "\n")
    with open(tmp_path / "pre.jsonl", "w") as fh:
        fh.write(json.dumps({"video": "a.mp4", "subtitle": "so today we", "caption": "a man"}) + "\n")
        fh.write(json.dumps({"video": "b.mp4", "subtitle": "and then", "caption": None}) + "\n")
    assert read_corpus(str(tmp_path / "subs.txt")) == ["hello there", "so um yeah"]
    assert read_corpus(str(tmp_path / "msrvtt.jsonl")) == ["a dog runs", "a dog", "a cat"]
    assert read_corpus(str(tmp_path / "pre.jsonl")) == ["so today we", "and then"]
    assert read_corpus(f"{tmp_path}/pre.jsonl:caption") == ["a man"]
    spec = parse_corpus_spec(f"caps={tmp_path}/pre.jsonl:caption")
    assert (spec.name, spec.field) == ("caps", "caption")
    assert parse_corpus_spec(f"{tmp_path}/pre.jsonl:caption").name == "pre.caption"


def test_read_corpus_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"texts": ["ok"]}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_corpus(str(bad))
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: no field 'subtitle'"):
        read_corpus(f"{bad}:subtitle")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no texts"):
        read_corpus(str(tmp_path / "empty.txt"))


def test_sample_texts_seeded_without_replacement():
    texts = [f"t{i}" for i in range(100)]
    s = sample_texts(texts, 10, seed=3)
    assert s == sample_texts(texts, 10, seed=3) and len(set(s)) == 10
    assert s != sample_texts(texts, 10, seed=4)
    assert sample_texts(texts[:5], 10) == texts[:5]


def test_run_domain_gap_writes_table_and_heatmap(tmp_path):
    for name, words, seed in (("subs", range(0, 20), 1), ("caps", range(20, 40), 2), ("more_subs", range(0, 20), 3)):
        (tmp_path / f"{name}.txt").write_text("\n".join(_corpus(words, 300, seed)) + "\n")
    corpora = [str(tmp_path / f"{n}.txt") for n in ("subs", "caps", "more_subs")]
    report = run_domain_gap(corpora, tmp_path / "out", encode=_encode, n=100, seed=0)
    assert report["names"] == ["subs", "caps", "more_subs"] and report["sizes"] == {"subs": 100, "caps": 100,
                                                                                  "more_subs": 100}
    m = np.array(report["matrix"])
    assert m[0, 1] > 0.9 and m[1, 2] > 0.9 and m[0, 2] < 0.1
    on_disk = json.loads((tmp_path / "out" / "nmi.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    md = (tmp_path / "out" / "nmi.md").read_text()
    assert "| subs | caps |" in md
    with Image.open(tmp_path / "out" / "nmi.png") as im:
        im.load()
        assert im.size[0] > 400 and im.size[1] > 400
    again = run_domain_gap(corpora, tmp_path / "out2", encode=_encode, n=100, seed=0)
    assert again["matrix"] == report["matrix"]
    with pytest.raises(ValueError, match="distinct"):
        run_domain_gap([corpora[0], corpora[0]], tmp_path / "o3", encode=_encode)


@pytest.mark.slow
def test_domain_gap_cli_with_a_tiny_saved_model(tmp_path, capsys):
    """End to end through `clipvip domain-gap`: a tiny random CLIP-ViP and an offline word tokenizer."""
    import torch

    from clipvip.cli import main as cli_main
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import build_word_tokenizer, load_tokenizer

    words = [f"w{i}" for i in range(40)]
    tok = load_tokenizer(build_word_tokenizer(words, tmp_path / "tok"))
    torch.manual_seed(0)
    CLIPViP(CLIPViPConfig.from_name("clipvip-tiny")).save_pretrained(tmp_path / "model", tokenizer=tok)
    (tmp_path / "a.txt").write_text("\n".join(_corpus(range(0, 20), 60, 1)) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(_corpus(range(20, 40), 60, 2)) + "\n")
    argv = ["domain-gap", f"subs={tmp_path / 'a.txt'}", f"caps={tmp_path / 'b.txt'}", "--model",
            str(tmp_path / "model"), "--out", str(tmp_path / "out"), "-n", "50", "--device", "cpu"]
    assert cli_main(argv) == 0
    assert "| subs | caps |" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "nmi.json").read_text())
    assert report["names"] == ["subs", "caps"] and report["sizes"] == {"subs": 50, "caps": 50}
    assert 0.0 <= report["pairs"][0]["nmi"] <= 1.0
    assert report["model"] == str(tmp_path / "model")
    assert cli_main(argv) == 0
    assert json.loads((tmp_path / "out" / "nmi.json").read_text())["matrix"] == report["matrix"]
