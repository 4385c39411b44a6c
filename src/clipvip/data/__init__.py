"""Everything that turns files on disk into tensors for the model.

Submodules (imported on demand so that ``import clipvip.data`` stays cheap):

- :mod:`clipvip.data.video`: decoding backends (PyAV default, decord optional), exact frame counts,
  seeking frame fetch, frame samplers;
- :mod:`clipvip.data.transforms`: pure-torch resize / crop / normalise;
- :mod:`clipvip.data.annotations`: dataset readers to one JSONL schema;
- :mod:`clipvip.data.datasets`: retrieval, post-pretraining (V, F, S, C) and image-text datasets, collation;
- :mod:`clipvip.data.shards`: WebDataset-format tar shards and the streaming dataset over them;
- :mod:`clipvip.data.synthetic`: the procedural video-text world used by the demo and tests.

``VideoDecodeError`` lives here because every layer raises or catches it.
"""

from __future__ import annotations

import os

__all__ = ["VideoDecodeError"]


class VideoDecodeError(RuntimeError):
    """A video (or image) could not be read; names the file and the reason.

    Datasets catch it, record ``(path, reason)`` and skip the item, so one bad file never crashes a run.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # keep picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))
