"""CLIP's byte-level BPE tokenizer, loaded through transformers, with OpenAI CLIP's exact ids.

Sources (:func:`load_tokenizer`): OpenAI's vocabulary **bundled with the package**
(``clipvip/assets/bpe_simple_vocab_16e6.txt.gz``, MIT, see ``NOTICE-openai-clip.txt``; the default, so
registry models and official checkpoints work offline), a saved tokenizer directory, a hub name, or any
``bpe_simple_vocab_16e6.txt.gz`` (turned into ``vocab.json`` + ``merges.txt`` the way OpenAI's
``SimpleTokenizer`` builds its vocabulary, cached under ``~/.cache/clipvip/tokenizers``).
:func:`build_word_tokenizer` writes a tiny CLIP-format tokenizer whose vocabulary is a given word list, for
the synthetic world and the demo (nothing to download).

**One clean-up path.** OpenAI CLIP cleans every text before BPE (``ftfy.fix_text``, HTML entities unescaped
twice, whitespace runs collapsed, stripped, lower-cased: :func:`clean_text`); transformers' CLIP normaliser
does only NFC, whitespace and lower case, so curly quotes, ligatures, fullwidth letters, mojibake and
entities gave other ids. CLIP tokenizers returned by :func:`load_tokenizer` are
:class:`OpenAICLIPTokenizer`, which applies :func:`clean_text` inside its own encoding, so its HF-style
``__call__``/``encode``/``tokenize`` and :func:`tokenize` all give OpenAI's ids. :func:`tokenize` also keeps
EOT as the last token of a truncated text, as OpenAI's ``tokenize(truncate=True)`` does.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from clipvip.atomic import atomic_write_text

#: OpenAI CLIP's BPE vocabulary shipped inside the package (MIT; licence in NOTICE-openai-clip.txt).
BUNDLED_BPE = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"

START = "<|startoftext|>"
END = "<|endoftext|>"
#: OpenAI keeps the first 49152 - 256 - 2 merges of the file (after its header line).
NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters: printable
    latin-1 bytes map to themselves, the rest to code points 256, 257, … in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _byte_alphabet() -> list[str]:
    """The 256 base symbols in OpenAI's vocabulary order (printable first, then the remapped ones)."""
    m = bytes_to_unicode()
    printable = [b for b in m if m[b] == chr(b) and b >= 33]
    rest = [b for b in m if b not in printable]
    return [m[b] for b in sorted(printable)] + [m[b] for b in rest]


def _write_tokenizer_files(vocab: list[str], merges: Sequence[tuple[str, str]], out_dir: Path) -> None:
    """Write ``vocab.json`` / ``merges.txt`` atomically (:mod:`clipvip.atomic`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payloads = {
        "vocab.json": json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
    }
    for name, text in payloads.items():
        atomic_write_text(out_dir / name, text)


def _from_files(directory: Path, max_length: int) -> Any:
    """A fast CLIP tokenizer from ``vocab.json`` + ``merges.txt`` (transformers 5 takes ``vocab``/``merges``,
    4.x ``vocab_file``/``merges_file``)."""
    import transformers

    cls = openai_clip_tokenizer_class()
    vocab, merges = str(directory / "vocab.json"), str(directory / "merges.txt")
    if int(transformers.__version__.split(".")[0]) >= 5:
        return cls(vocab=vocab, merges=merges, model_max_length=max_length)
    return cls(vocab_file=vocab, merges_file=merges, model_max_length=max_length)


def bpe_to_tokenizer_dir(bpe_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Turn OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` into a transformers CLIP tokenizer directory.

    Vocabulary order (so ids equal OpenAI's): the 256 byte symbols, the same with ``</w>``, each kept merge
    joined, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    bpe_path = Path(bpe_path)
    try:
        lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{bpe_path} is not a gzip'd CLIP BPE merges file: {exc}") from exc
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: expected {NUM_MERGES} merge lines of two symbols after the header")
    if out_dir is None:
        digest = hashlib.sha256(bpe_path.read_bytes()).hexdigest()[:16]
        out_dir = Path(os.environ.get("CLIPVIP_CACHE", Path.home() / ".cache" / "clipvip")) / "tokenizers" / digest
    out_dir = Path(out_dir)
    if not ((out_dir / "vocab.json").is_file() and (out_dir / "merges.txt").is_file()):
        base = _byte_alphabet()
        vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [START, END]
        _write_tokenizer_files(vocab, merges, out_dir)  # type: ignore[arg-type]
    return out_dir


#: One of these makes a directory a tokenizer directory.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve_hub_name(name: str, what: str = "files", needs: Sequence[str] = ()) -> str:
    """Where to load hub repo ``name`` from: its cached snapshot directory if there is one, else ``name``
    itself when the hub can be reached; otherwise a :class:`FileNotFoundError` at once.

    Why: offline, transformers retries a missing hub file for about a minute and a half before failing with
    a message about connections. Looking in the cache first, honouring ``HF_HUB_OFFLINE`` /
    ``TRANSFORMERS_OFFLINE`` (read now, not at import time) and probing the hub's DNS name once turns that
    into an immediate error naming ``name`` and the two ways out (the internet, or a local directory).
    ``what`` says what was being loaded ("tokenizer", "CLIP model") in that message. A cached snapshot
    counts only if it holds at least one of ``needs`` (a model downloaded without its tokenizer files is
    not a cached tokenizer).
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = Path(snapshot_download(name, local_files_only=True, cache_dir=constants.HF_HUB_CACHE))
        if not needs or any((snapshot / n).is_file() for n in needs):
            return str(snapshot)
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id: decided below
        pass
    where = (f"the {what} {name!r} is not a local path and not in the Hugging Face cache "
             f"({constants.HF_HUB_CACHE})")
    fix = "hub names need the internet (download it once while online) or pass a local directory instead"
    if not _REPO_ID.match(name) or ".." in name:
        raise FileNotFoundError(f"{name} does not exist (and is not a hub repo id like 'openai/clip-vit-base-"
                                f"patch32'): pass an existing local directory or file")
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{where}, and offline mode is on (HF_HUB_OFFLINE): {fix}")
    import socket

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise FileNotFoundError(f"{where}, and {host} cannot be reached ({exc}): {fix}") from exc
    return name


def load_tokenizer(spec: str | Path | None = None, max_length: int = 77) -> Any:
    """A CLIP tokenizer from the bundled vocabulary (``spec=None``), a directory, a hub name, or an OpenAI
    BPE ``.txt.gz`` file.

    CLIP-class tokenizers come back as :class:`OpenAICLIPTokenizer` (OpenAI's clean-up inside, module doc);
    a directory or hub repo holding another tokenizer class is loaded by ``AutoTokenizer`` unchanged.
    ``max_length`` becomes ``model_max_length`` (77 for CLIP; the recipes use 50 or 70). The pad token is
    ``<|endoftext|>``, as in the official pipeline (reference §2). A hub name is taken from the cache when
    there, and fails at once when neither cached nor reachable (:func:`resolve_hub_name`).
    """
    text = str(BUNDLED_BPE if spec is None else spec)
    path = Path(text)
    if text.endswith(".gz"):
        if not path.is_file():
            raise FileNotFoundError(f"BPE file {path} does not exist")
        directory = bpe_to_tokenizer_dir(path)
        tok = _from_files(directory, max_length)
    else:
        if not path.is_dir():
            path = Path(resolve_hub_name(text, "tokenizer", needs=TOKENIZER_FILES))
        if path.is_dir() and not any((path / n).is_file() for n in TOKENIZER_FILES):
            raise FileNotFoundError(f"{path} holds no tokenizer files (vocab.json/merges.txt or tokenizer.json)")
        if path.is_dir() and not (path / "tokenizer_config.json").is_file():
            tok = _from_files(path, max_length)
        else:
            source = str(path) if path.is_dir() else text
            try:
                tok = _from_pretrained(source, local_files_only=path.is_dir())
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(f"cannot load a tokenizer from {text}: {exc}") from exc
    tok.model_max_length = max_length
    if tok.pad_token is None or tok.pad_token != END:
        tok.pad_token = END
    # Where it came from (an absolute path, or the hub name), recorded by clipvip.load for indexes.
    tok.clipvip_source = str(Path(text).resolve()) if Path(text).exists() else text
    return tok


def _from_pretrained(source: str, local_files_only: bool) -> Any:
    """``from_pretrained`` with :class:`OpenAICLIPTokenizer` when the saved class is CLIP's, else AutoTokenizer."""
    from transformers import AutoTokenizer

    config_file = Path(source) / "tokenizer_config.json"
    saved_class = None
    if config_file.is_file():
        try:
            saved_class = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"{config_file}: not a readable tokenizer config ({exc})") from exc
    if saved_class in (None, "CLIPTokenizer", "CLIPTokenizerFast", "OpenAICLIPTokenizer"):
        try:
            return openai_clip_tokenizer_class().from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError):
            if saved_class is not None:
                raise
    return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)


def _whitespace_pattern() -> Any:
    """OpenAI cleans whitespace with the ``regex`` module's ``\\s`` (Unicode White_Space), which differs from
    ``re``'s for a few control characters; ``regex`` comes with transformers, ``re`` is the fallback."""
    try:
        import regex
    except ImportError:  # pragma: no cover - transformers depends on regex
        return re.compile(r"\s+")
    return regex.compile(r"\s+")


_WHITESPACE = _whitespace_pattern()


def clean_text(text: str) -> str:
    """OpenAI CLIP's clean-up before BPE: ``ftfy.fix_text`` (mojibake, curly quotes, ligatures, fullwidth
    letters, NFC), HTML entities unescaped twice (``&amp;amp;`` -> ``&``), whitespace runs to one space,
    stripped, lower-cased: the text OpenAI's ``SimpleTokenizer.encode`` splits into words."""
    if not _PLAIN.fullmatch(text):  # ftfy leaves plain printable ASCII without '&' unchanged: skip its cost
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


#: Printable ASCII, tab and line breaks, no '&' (entities): text on which ``ftfy.fix_text`` is the identity
#: (its fixes concern non-ASCII text, control characters and HTML entities; checked on every test sentence).
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def _clean_input(text: Any) -> Any:
    """:func:`clean_text` on a string or each string of a (nested) list; anything else unchanged."""
    if isinstance(text, str):
        return clean_text(text)
    if isinstance(text, (list, tuple)):
        return type(text)(_clean_input(t) for t in text)
    return text


_TOKENIZER_CLASS: type | None = None


def openai_clip_tokenizer_class() -> type:
    """:class:`OpenAICLIPTokenizer`: transformers' CLIP tokenizer that applies :func:`clean_text` itself.

    Built on first use (transformers is imported lazily), on ``CLIPTokenizer`` in transformers 5 and
    ``CLIPTokenizerFast`` in 4.x. Every encoding entry point (``__call__``, ``encode``, ``encode_plus``,
    ``tokenize``, batches) goes through ``_encode_plus`` (and 4.x's ``_batch_encode_plus``), which clean the
    text first; pre-split words (``is_split_into_words=True``) are passed through unchanged. Saved folders
    record ``tokenizer_class: CLIPTokenizer`` so other libraries load them as plain CLIP tokenizers.
    """
    global _TOKENIZER_CLASS
    if _TOKENIZER_CLASS is not None:
        return _TOKENIZER_CLASS
    import transformers

    base = transformers.CLIPTokenizer if int(transformers.__version__.split(".")[0]) >= 5 else transformers.CLIPTokenizerFast

    class OpenAICLIPTokenizer(base):  # type: ignore[misc, valid-type]
        """A transformers CLIP tokenizer giving OpenAI CLIP's exact ids (clean-up inside; module doc)."""

        #: :func:`tokenize` reads this to know the text needs no clean-up before calling the tokenizer.
        cleans_text = True

        def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("is_split_into_words", False):
                text, text_pair = _clean_input(text), _clean_input(text_pair)
            return super()._encode_plus(text, text_pair, *args, **kwargs)

        if hasattr(base, "_batch_encode_plus"):
            def _batch_encode_plus(self, batch_text_or_text_pairs: Any, *args: Any, **kwargs: Any) -> Any:
                if not kwargs.get("is_split_into_words", False):
                    batch_text_or_text_pairs = _clean_input(batch_text_or_text_pairs)
                return super()._batch_encode_plus(batch_text_or_text_pairs, *args, **kwargs)

        def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
            out = super().save_pretrained(save_directory, *args, **kwargs)
            config_file = Path(save_directory) / "tokenizer_config.json"
            if config_file.is_file():
                config = json.loads(config_file.read_text(encoding="utf-8"))
                if config.get("tokenizer_class") == type(self).__name__:
                    config["tokenizer_class"] = "CLIPTokenizer"
                    atomic_write_text(config_file, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
            return out

    OpenAICLIPTokenizer.__module__ = __name__
    OpenAICLIPTokenizer.__qualname__ = "OpenAICLIPTokenizer"
    _TOKENIZER_CLASS = OpenAICLIPTokenizer
    return OpenAICLIPTokenizer


def __getattr__(name: str) -> Any:
    """``clipvip.tokenizer.OpenAICLIPTokenizer`` on demand (PEP 562), so tokenizers pickle by reference into
    DataLoader workers started with ``spawn`` without importing transformers when the module is imported."""
    if name == "OpenAICLIPTokenizer":
        return openai_clip_tokenizer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tokenize(tokenizer: Any, texts: str | Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Texts -> ``{"input_ids", "attention_mask"}`` int64 ``[N, max_length]``, padded with the EOT id.

    The clean-up is the tokenizer's own when it has one (``cleans_text``, :class:`OpenAICLIPTokenizer`);
    for any other tokenizer object :func:`clean_text` is applied here, once. A text longer than
    ``max_length`` is cut so that its last token is EOT (OpenAI's truncate=True behaviour), which EOT
    pooling relies on; the attention mask is 1 up to and including that EOT.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not getattr(tokenizer, "cleans_text", False):
        texts = [clean_text(t) for t in texts]
    max_length = int(max_length or tokenizer.model_max_length or 77)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"].to(torch.int64)
    mask = enc["attention_mask"].to(torch.int64)
    eot = tokenizer.convert_tokens_to_ids(END)
    full = mask[:, -1] == 1
    ids[full, -1] = eot
    return {"input_ids": ids, "attention_mask": mask}


def _bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one pre-tokenised word (symbols already byte-mapped), with the given merge ranks."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_word_tokenizer(words: Iterable[str], out_dir: str | Path, max_length: int = 77) -> Path:
    """Write a small CLIP-format tokenizer to ``out_dir`` in which each given word is one token.

    Vocabulary: the 512 byte symbols (with and without ``</w>``), one merge per step needed to build each
    word as a whole token, then the start/end tokens, so ids stay small (a few hundred for a few dozen
    words) and a tiny model can use a small ``vocab_size`` (``len(vocab)``; EOT is the largest id, as EOT
    pooling by argmax requires). Other text still tokenizes (into characters). Loadable offline with
    ``load_tokenizer(out_dir)``.
    """
    out_dir = Path(out_dir)
    byte_map = bytes_to_unicode()
    ranks: dict[tuple[str, str], int] = {}
    merges: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw in words:
        for word in raw.lower().split():
            if not word or word in seen:
                continue
            seen.add(word)
            symbols = "".join(byte_map[b] for b in word.encode("utf-8"))
            # Appending a merge of the two leftmost pieces never changes earlier words: it has the worst
            # rank, and BPE only uses it when no better merge applies.
            while len(pieces := _bpe_pieces(symbols, ranks)) > 1:
                pair = (pieces[0], pieces[1])
                ranks[pair] = len(merges)
                merges.append(pair)
    base = _byte_alphabet()
    vocab = base + [s + "</w>" for s in base]
    known = set(vocab)
    for a, b in merges:
        if a + b not in known:
            vocab.append(a + b)
            known.add(a + b)
    vocab += [START, END]
    _write_tokenizer_files(vocab, merges, out_dir)
    tok = _from_files(out_dir, max_length)
    tok.save_pretrained(str(out_dir))
    return out_dir
