"""Post-pretraining curves (the paper's Figure 1): downstream R@1/5/10 against post-pretraining steps.

For every checkpoint of one or more post-pretraining runs, in step order, the tool either fine-tunes it
with a given recipe (``model.init=pretrained:<checkpoint>``) and records the fine-tuned test metrics, or
evaluates it zero-shot. One line per run (e.g. one per pretraining corpus) shows which data makes
post-pretraining pay off downstream.

Checkpoint discovery (:func:`find_checkpoints`): a run directory is searched (two levels deep, hidden
folders skipped) for model folders in our format (``config.json`` + ``*.safetensors``). A folder's step is
read, first found wins, from ``checkpoint.json`` or ``trainer_state.json`` (``step`` / ``global_step``), then
``trainer_state.pt`` (loaded with ``weights_only=True``), then the trailing number of its name
(``step_000100``, ``ckpt_step_100``, ``checkpoint-100``). Folders without a step are skipped with a
warning; two folders with the same step (``last/`` is often a copy of the latest periodic checkpoint)
count once, the explicitly numbered one winning.

The table (``curve.json``) is rewritten atomically after every checkpoint, and checkpoints already in it
are skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipvip.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointRef",
    "checkpoint_step",
    "find_checkpoints",
    "is_model_dir",
    "run_curve",
    "curve_series",
]

STEP_KEYS = ("step", "global_step")
METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint folder of a run and its post-pretraining step."""

    run: str
    step: int
    path: str


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    """A folder that ``CLIPViP.from_pretrained`` can open: ``config.json`` plus safetensors weights."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _step_from_json(file: Path) -> int | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); ignoring it for the step", file, exc)
        return None
    if isinstance(data, dict):
        for key in STEP_KEYS:
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
    return None


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The post-pretraining step of a checkpoint folder (see the module doc for where it is looked up)."""
    p = Path(path)
    for name in ("checkpoint.json", "trainer_state.json"):
        step = _step_from_json(p / name)
        if step is not None:
            return step
    state_file = p / "trainer_state.pt"
    if state_file.is_file():
        import torch

        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged state file must not hide the folder name
            log.warning("%s: cannot read (%s); falling back to the folder name", state_file, exc)
            state = None
        if isinstance(state, dict):
            for key in STEP_KEYS:
                value = state.get(key)
                if hasattr(value, "item"):
                    value = value.item()
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return int(value)
    match = _TRAILING_NUMBER.search(p.name)
    return int(match.group(1)) if match else None


def find_checkpoints(run_dir: str | os.PathLike[str], run: str | None = None) -> list[CheckpointRef]:
    """The checkpoints of one run, sorted by step (see the module doc for the conventions)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such checkpoint directory")
    label = run or root.name
    if is_model_dir(root):
        candidates = [root]
    else:
        candidates = []
        for child in sorted(root.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if is_model_dir(child):
                candidates.append(child)
            else:
                candidates += [g for g in sorted(child.iterdir())
                               if not g.name.startswith(".") and is_model_dir(g)]
    by_step: dict[int, Path] = {}
    for cand in candidates:
        step = checkpoint_step(cand)
        if step is None:
            log.warning("%s: no step found (no checkpoint.json/trainer_state and no number in its name); "
                        "skipped", cand)
            continue
        numbered = _TRAILING_NUMBER.search(cand.name) is not None
        if step in by_step and not numbered:
            continue
        by_step[step] = cand
    if not by_step:
        raise ValueError(f"{root}: no model checkpoints with a known step found (looked for folders with "
                         f"config.json + *.safetensors, two levels deep)")
    return [CheckpointRef(run=label, step=s, path=str(by_step[s])) for s in sorted(by_step)]


# ------------------------------------------------------------------------------------------ evaluation
Evaluator = Callable[[CheckpointRef], dict[str, Any]]


def _eval_data(cfg: Any) -> tuple[str, str]:
    """(split name, path) of the split a zero-shot evaluation uses: test when configured, else val."""
    for split in ("test", "val"):
        path = cfg.data.resolve(getattr(cfg.data, split))
        if path:
            return split, path
    raise ValueError("the recipe has neither data.test nor data.val to evaluate on")


def zero_shot_evaluator(cfg: Any, device: str | None = None, progress: bool = False,
                        frames_given: bool = False) -> Evaluator:
    """Evaluate each checkpoint as it is, on the recipe's test (else val) split, with its eval settings.

    Frames: those recorded in each checkpoint's ``config.json`` (what it was validated with, see
    :class:`clipvip.config.FrameRecord`), unless ``frames_given`` (``model.num_frames`` or
    ``model.eval_num_frames`` given on the command line), else the recipe's.

    The tokenizer is the recipe's ``model.tokenizer`` when set, else the one saved in the checkpoint;
    ``model.attention`` switches the attention mode as fine-tuning would.
    """

    def evaluate(ref: CheckpointRef) -> dict[str, Any]:
        import torch

        from clipvip.model.clipvip import CLIPViP
        from clipvip.tokenizer import load_tokenizer
        from clipvip.train.evaluate import evaluate_retrieval

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = CLIPViP.from_pretrained(ref.path)
        if cfg.model.attention:
            model.set_attention(cfg.model.attention)
        model.to(dev).eval()
        tokenizer = load_tokenizer(_tokenizer_spec(cfg, ref))
        split, data = _eval_data(cfg)
        num_frames = cfg.model.eval_num_frames or cfg.model.num_frames
        record = model.config.frames
        if not frames_given and record is not None and record.eval_num_frames:
            num_frames = record.eval_num_frames
            log.info("%s: using %d frames recorded in the model (what it was validated with)", ref.path, num_frames)
        results = evaluate_retrieval(
            model, tokenizer, data,
            num_frames=num_frames,
            image_size=cfg.model.image_size or model.config.vision.image_size,
            max_length=cfg.model.max_length,
            batch_size=cfg.data.eval_batch_size,
            device=dev,
            video_root=cfg.data.resolve(cfg.data.video_root),
            paragraph=cfg.data.paragraph,
            progress=progress,
        )
        results["split"] = split
        return results

    return evaluate


def _tokenizer_spec(cfg: Any, ref: CheckpointRef) -> str:
    """The recipe's ``model.tokenizer`` (under ``data.root`` when it exists there, as training resolves it),
    else the tokenizer saved with the checkpoint."""
    spec = cfg.model.tokenizer
    if not spec:
        return ref.path
    under_root = cfg.data.resolve(spec)
    return under_root if under_root and Path(under_root).exists() else spec


def finetune_evaluator(config: str | os.PathLike[str] | dict[str, Any], out_dir: Path,
                       overrides: Sequence[str] = ()) -> Evaluator:
    """Fine-tune each checkpoint with the recipe and return the run's test metrics (else best val)."""

    def evaluate(ref: CheckpointRef) -> dict[str, Any]:
        from clipvip.train.config import load_config
        from clipvip.train.loop import train

        run_dir = out_dir / "runs" / _safe(ref.run) / f"step_{ref.step:08d}"
        cfg = load_config(config, [*overrides, f"model.init=pretrained:{ref.path}",
                                   f"run.output_dir={run_dir}"])
        result = train(cfg)
        if result.get("test"):
            metrics, split = dict(result["test"]), "test"
        elif result.get("best"):
            metrics, split = dict(result["best"]), "val"
        else:
            raise RuntimeError(f"fine-tuning {ref.path} produced neither test nor validation metrics")
        metrics["split"] = split
        metrics["output_dir"] = str(result.get("output_dir", run_dir))
        return metrics

    return evaluate


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "run"


# ------------------------------------------------------------------------------------------ the sweep
def _row(ref: CheckpointRef, metrics: dict[str, Any], table: str) -> dict[str, Any]:
    if table not in metrics:
        raise KeyError(f"metrics of {ref.path} have no table {table!r} (have {sorted(metrics)})")
    row: dict[str, Any] = {"run": ref.run, "step": ref.step, "checkpoint": ref.path,
                           "split": metrics.get("split")}
    for key in METRIC_KEYS:
        if key in metrics[table]:
            row[key] = float(metrics[table][key])
    failures = metrics.get("failures") or []
    row["failures"] = len(failures)
    row["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    if "output_dir" in metrics:
        row["output_dir"] = metrics["output_dir"]
    return row


def curve_series(rows: Sequence[dict[str, Any]], metric: str = "R1") -> dict[str, list[tuple[int, float]]]:
    """Rows of a curve table → ``{run: [(step, metric), ...]}`` sorted by step, ready for ``plot_curves``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if metric in row:
            series.setdefault(row["run"], []).append((int(row["step"]), float(row[metric])))
    return {k: sorted(v) for k, v in series.items()}


def _markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | step | R@1 | R@5 | R@10 | MdR | split |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["run"], r["step"])):
        cells = [f"{r[k]:.1f}" if k in r else "" for k in ("R1", "R5", "R10", "MdR")]
        lines.append(f"| {r['run']} | {r['step']} | " + " | ".join(cells) + f" | {r.get('split') or ''} |")
    return "\n".join(lines) + "\n"


def run_curve(
    runs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    finetune: str | os.PathLike[str] | dict[str, Any] | None = None,
    zero_shot: bool = False,
    labels: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    table: str = "t2v",
    device: str | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every checkpoint of every run; write ``curve.json``, ``curve.md`` and ``curve.png`` in ``out_dir``.

    ``finetune`` is the fine-tuning recipe (YAML path or dict). With ``zero_shot`` the recipe only supplies
    the evaluation data and settings. ``overrides`` are ``section.key=value`` applied to the recipe.
    ``table`` picks which metrics table is recorded (``t2v``, ``t2v_dsl``, ...). ``evaluator`` replaces the
    built-in evaluation (a function ``CheckpointRef -> metrics dict``), for custom protocols.
    Returns the table as written.
    """
    from tqdm.auto import tqdm

    from clipvip.analysis.plots import plot_curves

    if not runs:
        raise ValueError("give at least one checkpoint directory")
    if labels and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} checkpoint directories")
    names = list(labels) if labels else [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run labels must be distinct, got {names}; pass --label for each directory")
    mode = "zero-shot" if zero_shot else "finetune"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if evaluator is None:
        if finetune is None:
            raise ValueError("a recipe is needed: the fine-tuning config (or, with zero-shot, the data config)")
        if zero_shot:
            from clipvip.train.config import load_config

            given = any(o.partition("=")[0].strip() in ("model.num_frames", "model.eval_num_frames")
                        for o in overrides)
            evaluator = zero_shot_evaluator(load_config(finetune, overrides), device=device, frames_given=given)
        else:
            evaluator = finetune_evaluator(finetune, out, overrides)

    refs = [ref for run, name in zip(runs, names) for ref in find_checkpoints(run, name)]
    table_path = out / "curve.json"
    recipe = str(finetune) if not isinstance(finetune, dict) else "<dict>"
    header = {"mode": mode, "recipe": recipe, "overrides": list(overrides), "table": table}
    rows: list[dict[str, Any]] = []
    if table_path.is_file():
        try:
            previous = json.loads(table_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{table_path}: not valid JSON ({exc.msg}); move it away to start afresh") from None
        old = {k: previous.get(k) for k in header}
        if old != header:
            raise ValueError(f"{table_path} was made with different settings {old}, not {header}; "
                             f"use another --out or delete it")
        rows = list(previous.get("rows", []))
    done = {(r["run"], os.path.realpath(r["checkpoint"])) for r in rows}

    def write() -> dict[str, Any]:
        rows.sort(key=lambda r: (names.index(r["run"]) if r["run"] in names else len(names), r["step"]))
        doc = {**header, "rows": rows}
        atomic_write_text(table_path, json.dumps(doc, indent=2) + "\n")
        atomic_write_text(out / "curve.md", _markdown(rows))
        series = curve_series(rows, "R1")
        if series:
            title = "Zero-shot" if zero_shot else "Fine-tuned"
            plot_curves(series, out / "curve.png", metric=f"{table} R@1 (%)",
                        title=f"{title} downstream R@1 vs post-pretraining steps")
        return doc

    todo = [ref for ref in refs if (ref.run, os.path.realpath(ref.path)) not in done]
    if len(todo) < len(refs):
        log.info("%d of %d checkpoints already in %s; skipping them", len(refs) - len(todo), len(refs),
                 table_path)
    doc = write()
    for ref in tqdm(todo, desc=f"curve ({mode})", unit="ckpt", disable=not progress):
        log.info("%s step %d: %s", ref.run, ref.step, ref.path)
        metrics = evaluator(ref)
        rows.append(_row(ref, metrics, table))
        doc = write()
    return doc
