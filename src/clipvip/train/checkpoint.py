"""Run checkpoints: atomic ``last/`` and ``best/`` folders that resume exactly and load as models.

A checkpoint folder holds what ``model.save_pretrained(dir, tokenizer)`` writes (``config.json``,
``model.safetensors``, tokenizer files), so ``CLIPViP.from_pretrained`` and ``clipvip.load`` open any
checkpoint, plus ``trainer_state.pt`` (optimiser, scheduler, scaler, RNG states, epoch/step, data position,
best metric) and ``checkpoint.json`` (a human-readable summary, written last as the completeness marker).

Atomicity: the new checkpoint is written into a hidden temporary folder next to the target; the previous
folder is renamed aside, the new one renamed into place, and only then the old one deleted. A crash at any
moment leaves either the old or the new complete checkpoint (:func:`find_checkpoint` also recovers a folder
left aside by a crash between the two renames). ``trainer_state.pt`` holds only tensors and plain Python
values, so it loads with ``torch.load(weights_only=True)``: opening a checkpoint never runs pickle code.

Kept checkpoints (``run.keep_every``): ``step_{step:08d}/`` folders published from ``last/`` by hard links,
for the post-pretraining curves (``clipvip curve``). They hold the model, tokenizer and ``checkpoint.json``
(with ``step``) but not ``trainer_state.pt``: they are points of a curve, not resume points, and leaving the
optimiser state out keeps each one at the size of the model (a third of a full checkpoint with AdamW).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipvip.atomic import fsync_dir, make_temp_dir

class CheckpointStateError(ValueError):
    """A run checkpoint that cannot be resumed (empty, half-written, foreign or truncated files); the
    message is one line naming the file, the reason and the way out."""


STATE_FILE = "trainer_state.pt"
MARKER_FILE = "checkpoint.json"
KEPT_PREFIX = "step_"
_KEPT_NAME = re.compile(r"^step_(\d{8,})$")


# ---------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------------------------- folders
def _commit_folder(tmp: Path, final: Path) -> None:
    """Move a complete ``tmp`` folder to ``final``, keeping the previous one until the new is in place."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{time.time_ns()}"
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_complete(path: Path) -> bool:
    """A checkpoint folder is complete when its marker (written last) and model files exist."""
    return (path / MARKER_FILE).is_file() and (path / "config.json").is_file()


def find_checkpoint(run_dir: str | Path, name: str = "last") -> Path | None:
    """The complete ``run_dir/name`` folder, or a complete one left aside by an interrupted swap."""
    run_dir = Path(run_dir)
    final = run_dir / name
    if final.is_dir() and is_complete(final):
        return final
    aside = sorted(run_dir.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for cand in aside:
        if is_complete(cand):
            if not final.exists():
                os.replace(cand, final)  # finish the interrupted swap
                return final
            return cand
    return None


def save_checkpoint(run_dir: str | Path, name: str, model: torch.nn.Module, tokenizer: Any,
                    trainer_state: dict[str, Any] | None, summary: dict[str, Any] | None = None) -> Path:
    """Write ``run_dir/name`` atomically; returns the final path.

    ``model`` must offer ``save_pretrained(dir, tokenizer=...)`` (``clipvip.CLIPViP``). ``trainer_state`` is
    saved with ``torch.save`` and must be ``weights_only``-loadable (tensors, numbers, strings, containers).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(run_dir, f".{name}.tmp-")
    try:
        model.save_pretrained(tmp, tokenizer=tokenizer)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        marker = dict(summary or {})
        marker.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
        _commit_folder(tmp, run_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir / name


def copy_checkpoint(src: str | Path, run_dir: str | Path, name: str,
                    summary: dict[str, Any] | None = None, exclude: tuple[str, ...] = ()) -> Path:
    """Publish a copy of the complete folder ``src`` as ``run_dir/name`` (e.g. ``last`` -> ``best``).

    Files are hard-linked when possible (checkpoint files are never modified in place, only replaced), so
    keeping ``best/`` costs no extra disk space or time. Top-level entries named in ``exclude`` are left out.
    """
    src, run_dir = Path(src), Path(run_dir)
    tmp = make_temp_dir(run_dir, f".{name}.tmp-")
    try:
        for item in src.iterdir():
            if item.name == MARKER_FILE or item.name in exclude:
                continue
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
                continue
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
        marker = json.loads((src / MARKER_FILE).read_text())
        marker.update(summary or {})
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str) + "\n")
        _commit_folder(tmp, run_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir / name


def kept_name(step: int) -> str:
    """Folder name of the kept checkpoint of ``step``: ``step_00000100`` (sorts by step as text)."""
    return f"{KEPT_PREFIX}{int(step):08d}"


def keep_checkpoint(src: str | Path, run_dir: str | Path, step: int) -> Path:
    """Publish the complete checkpoint ``src`` (``last/`` at ``step``) as ``run_dir/step_{step:08d}``.

    Atomic like every checkpoint write, hard-linked, without ``trainer_state.pt`` (see the module doc).
    Writing the same step again replaces the folder, so a re-run step never leaves a duplicate.
    """
    return copy_checkpoint(src, run_dir, kept_name(step), summary={"step": int(step), "kept": True},
                           exclude=(STATE_FILE,))


def kept_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The kept ``step_*`` folders of a run, ``[(step, path)]`` sorted by step (complete or not)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = _KEPT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune_kept(run_dir: str | Path, after_step: int) -> list[Path]:
    """Remove kept checkpoints with a step above ``after_step``; returns the removed folders.

    A run that starts over (``after_step=-1``) or resumes from an earlier point must not leave kept folders
    of another history next to its own: the curves would mix two runs. Each folder is first renamed to a
    hidden name (ignored by the curve tool), so an interruption never leaves a half-deleted visible folder.
    """
    removed = []
    for step, path in kept_checkpoints(run_dir):
        if step > after_step:
            aside = path.parent / f".{path.name}.stale-{os.getpid()}-{time.time_ns()}"
            os.replace(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
            removed.append(path)
    return removed


_FIX = "remove the folder or start over with run.resume=never (or another run.output_dir)"


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint folder, loaded without executing pickle code and checked
    against the schema :func:`clipvip.train.loop` writes (so a foreign or damaged file fails here, in
    one line naming it, instead of deep inside the optimiser)."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointStateError(f"{file}: no trainer state (not a resumable run checkpoint); {_FIX}")
    if file.stat().st_size == 0:
        raise CheckpointStateError(f"{file}: empty file (an interrupted write?); {_FIX}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupted, truncated or pickled code: say which file and why
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointStateError(f"{file}: not a readable trainer state ({type(exc).__name__}: {first:.200}); "
                                   f"{_FIX}") from None
    check_trainer_state(state, file)
    return state


def check_trainer_state(state: Any, file: str | Path) -> None:
    """Raise :class:`CheckpointStateError` unless ``state`` has the trainer-state schema."""
    def bad(what: str) -> CheckpointStateError:
        return CheckpointStateError(f"{file}: not a clipvip trainer state ({what}); {_FIX}")

    if not isinstance(state, dict):
        raise bad(f"holds a {type(state).__name__}, expected a dict")
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("run", dict), ("rng", list)):
        if key not in state:
            raise bad(f"no {key!r} entry")
        if not isinstance(state[key], kind):
            raise bad(f"{key!r} is a {type(state[key]).__name__}, expected a {kind.__name__}")
    opt = state["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        raise bad("'optimizer' lacks 'state'/'param_groups'")
    run = state["run"]
    for key in ("step", "epoch", "step_in_epoch"):
        value = run.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"run.{key} is {value!r}, expected an integer >= 0")
    if not isinstance(run.get("history", []), list):
        raise bad("run.history is not a list")
    best = run.get("best_metric")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise bad(f"run.best_metric is {best!r}, expected a number or null")
    if not state["rng"] or not all(isinstance(r, dict) and {"torch", "python", "numpy"} <= set(r)
                                   for r in state["rng"]):
        raise bad("'rng' holds no RNG states")
    if "scaler" in state and not isinstance(state["scaler"], dict):
        raise bad("'scaler' is not a dict")
    if "config" in state and not isinstance(state["config"], dict):
        raise bad("'config' is not a dict")


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove the hidden temporary folders an interrupted checkpoint write leaves in ``run_dir``
    (``.last.tmp-*``, ``.last.old-*``, ``.best.*``, ``.step_*.tmp-*``, ``.step_*.stale-*``: names only this
    module creates). Call it after :func:`find_checkpoint` has recovered a folder left aside, and only from the
    process that writes the run. An ``.old-*`` folder is removed only when the folder it stood in for exists."""
    run_dir = Path(run_dir)
    removed = []
    pattern = re.compile(r"^\.(last|best|step_\d{8,})\.(tmp-.+|old-\d+-\d+|stale-\d+-\d+)$")
    for child in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        match = pattern.match(child.name)
        if not match or child.is_symlink() or not child.is_dir():
            continue
        if match.group(2).startswith("old-") and not is_complete(run_dir / match.group(1)):
            continue  # the only copy of that checkpoint: find_checkpoint may still need it
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def load_model_weights_(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights of the saved model in ``path`` into ``model`` (strict: any mismatch is an error)."""
    from safetensors.torch import load_file

    file = Path(path) / "model.safetensors"
    if file.is_file():
        try:
            state = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - SafetensorError (truncated, empty, not safetensors), OSError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointStateError(f"{file}: unreadable weights ({first:.200}); {_FIX}") from None
    else:  # a model format we do not know file-wise: let the model class read it
        from clipvip.model.clipvip import CLIPViP

        state = CLIPViP.from_pretrained(str(path)).state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    # Non-persistent buffers may legitimately be absent from the file; parameters may not.
    param_names = {n for n, _ in model.named_parameters()}
    missing_params = [n for n in missing if n in param_names]
    unexpected = sorted(set(state) - set(own))
    if missing_params or unexpected:
        raise CheckpointStateError(f"{file}: weights do not match the model (missing {missing_params[:5]}, "
                                   f"unexpected {unexpected[:5]}); {_FIX}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointStateError(f"{file}: {key} has shape {tuple(value.shape)}, model has "
                                       f"{tuple(own[key].shape)}; {_FIX}")
    model.load_state_dict(state, strict=False)
