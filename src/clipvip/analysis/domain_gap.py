"""Language domain gap between text corpora, measured as in the paper: K-means (k=2) + NMI.

CLIP-ViP argues that subtitles (ASR) are far from the descriptive sentences of downstream datasets, and that
auxiliary captions close that gap. The gap is measured by embedding N sentences of two corpora with the
text tower, clustering the 2N features into two clusters, and computing the normalised mutual information
between cluster and corpus: near 1 when the clusters recover the corpora (a large gap), near 0 when the
corpora are indistinguishable. Everything is seeded, so a table is reproducible.

Corpus specs (:func:`read_corpus`):

* ``texts.txt``: one text per line (blank lines skipped);
* ``data.jsonl:FIELD``: the field of each record (a string, or a list of strings that are all taken);
* ``data.jsonl``: a dataset JSONL of our schema: its ``texts`` (downstream), else ``subtitle``, else ``caption``;
* any of the above as ``NAME=SPEC`` to choose the label used in tables and plots.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipvip.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "Corpus",
    "parse_corpus_spec",
    "read_corpus",
    "sample_texts",
    "domain_gap_nmi",
    "nmi_matrix",
    "format_markdown",
    "run_domain_gap",
]

DATASET_FIELDS = ("texts", "subtitle", "caption")


@dataclass(frozen=True)
class Corpus:
    """A named corpus spec: ``name`` labels it, ``path`` is the file, ``field`` the JSONL field (or None)."""

    name: str
    path: str
    field: str | None = None


def parse_corpus_spec(spec: str) -> Corpus:
    """``[NAME=]PATH[:FIELD]`` → :class:`Corpus`. ``:FIELD`` is only read off a ``.jsonl`` path."""
    name = None
    if "=" in spec and not os.path.exists(spec):
        head, tail = spec.split("=", 1)
        if head and "/" not in head and os.sep not in head:
            name, spec = head, tail
    path, field = spec, None
    if not os.path.exists(spec) and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if head.endswith(".jsonl") and tail:
            path, field = head, tail
    if name is None:
        name = Path(path).stem + (f".{field}" if field else "")
    return Corpus(name=name, path=path, field=field)


def read_corpus(spec: str | Corpus) -> list[str]:
    """All texts of a corpus (see the module doc for the forms); errors name the file and the reason."""
    corpus = spec if isinstance(spec, Corpus) else parse_corpus_spec(spec)
    path = Path(corpus.path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {corpus.name}: {path}: no such file")
    if path.suffix != ".jsonl" and corpus.field is None:
        with open(path, encoding="utf-8") as fh:
            texts = [line.strip() for line in fh if line.strip()]
    else:
        texts = _read_jsonl_texts(path, corpus.field)
    if not texts:
        raise ValueError(f"corpus {corpus.name}: {path}: no texts found")
    return texts


def _read_jsonl_texts(path: Path, field: str | None) -> list[str]:
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: a record must be a JSON object")
            if field is not None:
                if field not in record:
                    raise ValueError(f"{path}:{lineno}: no field {field!r}")
                value = record[field]
            else:
                key = next((k for k in DATASET_FIELDS if record.get(k)), None)
                if key is None:
                    continue  # e.g. a pretraining record without a caption; not an error
                value = record[key]
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is None:
                    continue
                if not isinstance(v, str):
                    raise ValueError(f"{path}:{lineno}: field holds {type(v).__name__}, expected text")
                if v.strip():
                    texts.append(v.strip())
    return texts


def sample_texts(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` texts drawn without replacement (seeded); all of them, in order, when there are ``<= n``."""
    if n < 1:
        raise ValueError(f"the sample size must be >= 1, got {n}")
    if len(texts) <= n:
        return list(texts)
    return random.Random(seed).sample(list(texts), n)


def domain_gap_nmi(features_a: Any, features_b: Any, seed: int = 0, n_init: int = 10) -> float:
    """NMI between K-means (k=2) clusters and corpus membership for two sets of features ``[N, D]``.

    K-means runs on the stacked features as given (the text tower's output is already L2-normalised);
    NMI uses scikit-learn's default arithmetic normalisation. 1 means the two clusters are exactly the two
    corpora (a large gap); 0 means cluster membership says nothing about the corpus.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    a = _as_2d(features_a, "features_a")
    b = _as_2d(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 1 or len(b) < 1 or len(a) + len(b) < 2:
        raise ValueError("need at least one feature per corpus")
    x = np.concatenate([a, b]).astype(np.float64)
    corpus = np.concatenate([np.zeros(len(a), dtype=int), np.ones(len(b), dtype=int)])
    clusters = KMeans(n_clusters=2, n_init=n_init, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(corpus, clusters))


def _as_2d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {arr.shape}")
    return arr


def nmi_matrix(features: dict[str, Any], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Symmetric NMI matrix over all pairs of corpora.

    The diagonal is the noise floor: the corpus's sample split at random into two halves and treated as two
    corpora, which should score near 0. Comparing a cross-corpus cell with it says whether a gap is real.
    """
    names = list(features)
    mats = {k: _as_2d(v, k) for k, v in features.items()}
    n = len(names)
    m = np.full((n, n), np.nan)
    rng = np.random.default_rng(seed)
    for i, ni in enumerate(names):
        x = mats[ni]
        if len(x) >= 4:
            perm = rng.permutation(len(x))
            half = len(x) // 2
            m[i, i] = domain_gap_nmi(x[perm[:half]], x[perm[half:]], seed=seed)
        for j in range(i + 1, n):
            m[i, j] = m[j, i] = domain_gap_nmi(x, mats[names[j]], seed=seed)
    return names, m


def format_markdown(names: Sequence[str], matrix: np.ndarray, sizes: dict[str, int] | None = None) -> str:
    """The NMI table as markdown: pairs sorted from largest gap, then the full matrix."""
    lines = ["| corpus A | corpus B | NMI |", "|---|---|---|"]
    pairs = [(matrix[i, j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    for value, a, b in sorted(pairs, key=lambda p: -p[0]):
        lines.append(f"| {a} | {b} | {value:.3f} |")
    lines += ["", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, a in enumerate(names):
        cells = ["" if not np.isfinite(v) else f"{v:.3f}" for v in matrix[i]]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    if sizes:
        lines += ["", "Texts per corpus: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + "."]
    lines += ["", "The diagonal is the noise floor (a corpus split into two random halves)."]
    return "\n".join(lines) + "\n"


def run_domain_gap(
    corpora: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    encode: Callable[[list[str]], Any] | None = None,
    n: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
) -> dict[str, Any]:
    """Sample, encode, cluster and report: writes ``nmi.json``, ``nmi.md`` and ``nmi.png`` in ``out_dir``.

    Texts are encoded with ``encode`` (a function ``list[str] -> [N, D]``) or with the text tower of
    ``clipvip.load(model)`` (when both are given, ``model`` is only recorded in the report). Returns the
    JSON report (names, matrix, pairs, sizes, seed, model).
    """
    if len(corpora) < 2:
        raise ValueError("give at least two corpora to compare")
    specs = [parse_corpus_spec(c) for c in corpora]
    names = [c.name for c in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus names must be distinct, got {names}; label them as NAME=SPEC")
    if encode is None:
        if model is None:
            raise ValueError("give a model spec or an encode function")
        import clipvip

        pipe = clipvip.load(model, device=device)

        def encode(texts: list[str]) -> Any:
            return pipe.encode_texts(texts, batch_size=batch_size)

    features: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for corpus in specs:
        texts = sample_texts(read_corpus(corpus), n, seed)
        if len(texts) < n:
            log.warning("corpus %s has only %d texts (asked for %d); using all of them", corpus.name,
                        len(texts), n)
        sizes[corpus.name] = len(texts)
        log.info("encoding %d texts of %s", len(texts), corpus.name)
        features[corpus.name] = _as_2d(encode(texts), corpus.name)
    names, matrix = nmi_matrix(features, seed=seed)
    report = {
        "model": model,
        "seed": seed,
        "n": n,
        "sizes": sizes,
        "names": names,
        "matrix": [[None if not np.isfinite(v) else float(v) for v in row] for row in matrix],
        "pairs": [{"a": names[i], "b": names[j], "nmi": float(matrix[i, j])}
                  for i in range(len(names)) for j in range(i + 1, len(names))],
        "corpora": {c.name: {"path": c.path, "field": c.field} for c in specs},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "nmi.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "nmi.md", format_markdown(names, matrix, sizes))
    from clipvip.analysis.plots import plot_nmi_heatmap

    plot_nmi_heatmap(names, matrix, out / "nmi.png")
    return report
