"""Text → ranked videos over a loaded index: the one object the CLI ``search`` verb and the HTTP server share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipvip.search.engine import make_engine
from clipvip.search.index import ModelMismatchError, VideoIndex

MAX_K = 100


class SearchService:
    """An index, the model that built it, and a search backend.

    The model is loaded from the spec recorded in ``index.json`` (or given), and its ``model_id`` must equal
    the index's: a query embedded by another model would be compared against incompatible vectors.
    """

    def __init__(self, index_dir: str | Path, pipeline: Any = None, *, backend: str = "auto",
                 device: str | None = None, tokenizer: Any = None):
        self.index = VideoIndex.open(index_dir)
        if pipeline is None:
            from clipvip.pipeline import load

            meta = self.index.meta
            pipeline = load(meta["model_spec"], device=device,
                            tokenizer=tokenizer if tokenizer is not None else meta.get("tokenizer_spec"),
                            num_frames=meta.get("num_frames"))
        if pipeline.model_id != self.index.model_id:
            raise ModelMismatchError(
                f"{index_dir} was built with model id {self.index.model_id} ({self.index.meta.get('model_spec')}), "
                f"but the loaded model has id {pipeline.model_id} ({pipeline.spec}): the weights changed since "
                f"indexing; re-run `clipvip index --rebuild`"
            )
        self.pipeline = pipeline
        self.engine = make_engine(np.asarray(self.index.embeddings), backend)

    def __len__(self) -> int:
        return len(self.index)

    def search(self, text: str, k: int = 10) -> list[dict[str, Any]]:
        """Top-``k`` videos for ``text``: ``[{rank, row, score, path, duration, thumb}]``, best first.

        Raises ``ValueError`` for an empty or too long query or a ``k`` outside 1..MAX_K.
        """
        return self.search_many([text], k)[0]

    def search_many(self, texts: list[str], k: int = 10) -> list[list[dict[str, Any]]]:
        """:meth:`search` for several texts at once: one text-encoder batch and one matrix product."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
            raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        queries = self.pipeline.encode_texts(list(texts))
        if len(self.index) == 0:
            return [[] for _ in texts]
        scores, rows = self.engine.search(queries, int(k))
        out = []
        for q_scores, q_rows in zip(scores.tolist(), rows.tolist()):
            results = []
            for rank, (score, row) in enumerate(zip(q_scores, q_rows), start=1):
                entry = self.index.entries[row]
                results.append({
                    "rank": rank,
                    "row": int(row),
                    "score": round(float(score), 6),
                    "path": entry.path,
                    "duration": entry.duration,
                    "thumb": entry.thumb is not None,
                })
            out.append(results)
        return out
