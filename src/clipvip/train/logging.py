"""Run outputs for people and tools: a JSON-lines evaluation log and TensorBoard scalars.

Only the main rank writes; the other ranks get no-op objects so that the loop has one code path.
The JSON-lines log gets one complete line per evaluation, written with a single ``write`` + flush + fsync, so
a killed run leaves a log that every line of which parses.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping


def flatten_metrics(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"t2v": {"R1": 1.0}}`` -> ``{"t2v.R1": 1.0}`` (numbers only), for selection and TensorBoard."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class JsonlLog:
    """Append-only JSON-lines file (``eval_log.jsonl``)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(_jsonable(record), sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Scalars:
    """TensorBoard ``SummaryWriter`` on the main rank, nothing elsewhere (or when TensorBoard is missing)."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a declared dependency
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def add(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(float(value)):
            self.writer.add_scalar(tag, float(value), step)

    def add_many(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.add(f"{prefix}/{key}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temporary file + ``os.replace``)."""
    from clipvip.atomic import atomic_write_text

    atomic_write_text(Path(path), json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")
