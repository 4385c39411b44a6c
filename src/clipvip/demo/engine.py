"""The demo's small in-memory trainer: every clip of the tiny synthetic world is decoded once into a tensor,
so each stage (image-text CLIP, OCL post-pretraining, fine-tuning, the ablations) costs only model time.

Why not ``clipvip.train.loop``: the demo runs about a dozen short runs on two CPU cores within minutes.
Decoding the same 32x32 clips with PyAV on every step of every run would cost several times the model
itself, and the train loop has no image-text task for stage 0. The pieces that define the method are
*not* re-implemented here: the model (:class:`clipvip.CLIPViP`), the losses (:func:`clipvip.losses.info_nce`,
:func:`clipvip.losses.ocl_loss`), the image-to-video inflation (:func:`clipvip.weights.inflate`, the same
path as ``from_clip``), the optimiser and schedule (:mod:`clipvip.train.optim`), decoding and transforms (:mod:`clipvip.data`) and the metrics (:func:`clipvip.metrics.evaluate_similarity`) are the
library's own. What lives here is only the step loop over in-memory batches.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from clipvip.losses import clamp_logit_scale_, info_nce, ocl_loss


# ---------------------------------------------------------------------------------------------- data
@dataclass
class ClipBank:
    """Decoded, transformed clips ``pixels [N, T, 3, S, S]`` (float, CLIP-normalised) and their paths."""

    pixels: Tensor
    paths: list[str]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def middle(self) -> Tensor:
        """The middle frame of every clip as a one-frame video ``[N, 1, 3, S, S]`` (reference §6.2: F is
        frame ``total // 2`` of the decoded clip)."""
        t = self.pixels.shape[1]
        return self.pixels[:, t // 2 : t // 2 + 1]


def decode_clips(paths: Sequence[str | Path], num_frames: int, size: int, *, desc: str = "decode",
                 progress: bool = True) -> ClipBank:
    """Decode ``num_frames`` uniformly sampled frames of every file and apply the CLIP transform.

    A file that cannot be decoded is an error naming the file: the demo generated it, so a failure here
    means the world or the decoder is broken, not that the user has a bad video.
    """
    from tqdm import tqdm

    from clipvip.data.transforms import VideoTransform
    from clipvip.data.video import load_frames

    transform = VideoTransform(size=size)
    out: list[Tensor] = []
    for path in tqdm(list(paths), desc=desc, unit="clip", disable=not progress, leave=False):
        try:
            frames = load_frames(str(path), num_frames=num_frames, sampling="uniform")
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise RuntimeError(f"{path}: cannot decode generated clip: {exc}") from exc
        out.append(transform(frames))
    pixels = torch.stack(out) if out else torch.empty(0, num_frames, 3, size, size)
    return ClipBank(pixels=pixels, paths=[str(p) for p in paths])


@dataclass
class TextBank:
    """Tokenised texts ``input_ids``/``attention_mask`` ``[N, L]`` and the strings themselves."""

    input_ids: Tensor
    attention_mask: Tensor
    texts: list[str]

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.input_ids[index], self.attention_mask[index]


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> TextBank:
    from clipvip.tokenizer import tokenize

    texts = [str(t) for t in texts]
    if not texts:
        empty = torch.zeros(0, max_length, dtype=torch.long)
        return TextBank(empty, empty.clone(), [])
    enc = tokenize(tokenizer, texts, max_length)
    return TextBank(enc["input_ids"], enc["attention_mask"], texts)


# ---------------------------------------------------------------------------------------------- tasks
class Task:
    """One training objective over in-memory data: ``loss(model, batch_index) -> (total, parts)``.

    ``groups`` (optional) lists rows that should share a batch, e.g. the two clips of a reverse-order twin
    pair: then batches are drawn group by group (see :func:`fit`).
    """

    size: int
    groups: list[list[int]] | None = None

    def loss(self, model: Any, index: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


@dataclass
class PairTask(Task):
    """Symmetric InfoNCE between clips (or one-frame images) and one of their texts.

    ``text_rows[i]`` lists the rows of ``texts`` that describe clip ``i``; one is drawn per step, as the
    reference samples one caption per video per epoch.
    """

    clips: Tensor
    texts: TextBank
    text_rows: list[list[int]]
    groups: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.size = int(self.clips.shape[0])

    def loss(self, model: Any, index: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        rows = []
        for i in index.tolist():
            options = self.text_rows[i]
            rows.append(options[int(torch.randint(len(options), (1,), generator=generator))])
        ids, mask = self.texts.take(torch.tensor(rows))
        video = model.encode_video(self.clips[index])
        text = model.encode_text(ids, mask)
        total = info_nce(video, text, model.logit_scale)
        return total, {"nce": float(total.detach())}


@dataclass
class OCLTask(Task):
    """Omnisource post-pretraining: video V, middle frame F, subtitle S, auxiliary caption C (or none)."""

    clips: ClipBank
    subtitles: TextBank
    captions: TextBank
    has_caption: Tensor
    variant: str = "d"
    groups: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.size = len(self.clips)
        self._frames = self.clips.middle

    def loss(self, model: Any, index: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        video = model.encode_video(self.clips.pixels[index])
        s_ids, s_mask = self.subtitles.take(index)
        subtitle = model.encode_text(s_ids, s_mask)
        frame = caption = None
        has = self.has_caption[index]
        if self.variant != "vs":
            c_ids, c_mask = self.captions.take(index)
            caption = model.encode_text(c_ids, c_mask)
            frame = model.encode_video(self._frames[index])
        total, parts = ocl_loss(self.variant, video=video, subtitle=subtitle, frame=frame, caption=caption,
                                logit_scale=model.logit_scale, has_caption=has)
        return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- eval
@dataclass
class EvalSet:
    """A retrieval split held in memory: clips, all captions, and the clip row of each caption."""

    clips: Tensor
    texts: TextBank
    text_to_video: list[int]
    paths: list[str] = field(default_factory=list)
    twin: list[int] | None = None  # video row -> row of its reverse-order twin (-1: none)


@torch.no_grad()
def encode_clips(model: Any, clips: Tensor, batch_size: int = 64) -> Tensor:
    model.eval()
    return torch.cat([model.encode_video(clips[i : i + batch_size]) for i in range(0, len(clips), batch_size)])


@torch.no_grad()
def encode_text_bank(model: Any, bank: TextBank, batch_size: int = 256) -> Tensor:
    model.eval()
    return torch.cat([
        model.encode_text(bank.input_ids[i : i + batch_size], bank.attention_mask[i : i + batch_size])
        for i in range(0, len(bank.texts), batch_size)
    ])


@torch.no_grad()
def evaluate(model: Any, data: EvalSet, dsl: bool = True) -> dict[str, dict[str, float]]:
    """Text->video and video->text metrics (plain, and with DSL) with the library's protocol."""
    from clipvip.metrics import evaluate_similarity

    was_training = model.training
    video = encode_clips(model, data.clips)
    text = encode_text_bank(model, data.texts)
    sim = text @ video.t()
    model.train(was_training)
    results = evaluate_similarity(sim, data.text_to_video, dsl=dsl)
    if data.twin is not None:
        results["order"] = {"acc": order_accuracy(sim, data.text_to_video, data.twin)}
    return results


def order_accuracy(sim: Tensor, text_to_video: Sequence[int], twin: Sequence[int]) -> float:
    """Percent of captions that score their own clip above its reverse-order twin (same objects, same
    events, opposite order). A model blind to temporal order is at 50 (ties count half)."""
    hits = 0.0
    total = 0
    for row, video in enumerate(text_to_video):
        other = twin[video]
        if other < 0:
            continue
        total += 1
        own, rival = float(sim[row, video]), float(sim[row, other])
        hits += 1.0 if own > rival else 0.5 if own == rival else 0.0
    return 100.0 * hits / total if total else float("nan")


def score(metrics: dict[str, dict[str, float]]) -> float:
    """Model-selection score on validation: mean of t2v and v2t R@1+R@5 (plain, no DSL), so one lucky
    rank does not decide on a small split."""
    return (metrics["t2v"]["R1"] + metrics["t2v"]["R5"] + metrics["v2t"]["R1"] + metrics["v2t"]["R5"]) / 4.0


# ---------------------------------------------------------------------------------------------- fit
def _batches(task: Task, batch_size: int, generator: torch.Generator):
    """Endless batches of row indices, without replacement within an epoch (a new permutation each epoch).

    With ``task.groups``, whole groups are shuffled and packed into batches (a group never straddles two
    batches), so the reverse-order twin of each clip is in its batch as a hard negative.
    """
    groups = task.groups or [[i] for i in range(task.size)]
    while True:
        batch: list[int] = []
        for g in torch.randperm(len(groups), generator=generator).tolist():
            members = groups[g]
            if batch and len(batch) + len(members) > batch_size:
                yield torch.tensor(batch)
                batch = []
            batch.extend(members)
        # the incomplete last batch of an epoch is dropped (as drop_last), unless it is all there is
        if len(batch) >= batch_size or len(groups) and len(batch) == task.size:
            yield torch.tensor(batch)


@dataclass
class FitResult:
    """What a run returns: the history of validation evaluations, the best one, timing and loss trace."""

    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    seconds: float
    steps: int
    final_loss: float
    losses: list[float]


def fit(
    model: Any,
    task: Task,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.05,
    warmup_ratio: float = 0.1,
    grad_clip: float = 5.0,
    seed: int = 0,
    val: EvalSet | None = None,
    eval_every: int = 0,
    keep_best: bool = True,
    desc: str = "train",
    progress: bool = True,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``task`` for ``steps`` AdamW steps with warmup + cosine.

    Batches are drawn without replacement within an epoch (a fresh permutation per epoch, from ``seed``).
    With ``val`` and ``eval_every``, the model is evaluated every ``eval_every`` steps and at the end; with
    ``keep_best`` the weights of the best validation score are restored at the end (selection on val,
    never on test). The log temperature is clamped to [0, ln 200] after each step, as in the reference.
    """
    from tqdm import tqdm

    from clipvip.train.optim import build_optimizer, build_scheduler

    if steps <= 0:
        raise ValueError(f"{desc}: steps must be positive, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    batch_size = max(2, min(batch_size, task.size))
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay)
    scheduler = build_scheduler(optimizer, warmup_steps=int(warmup_ratio * steps), total_steps=steps)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_state: dict[str, Tensor] | None = None
    losses: list[float] = []
    start = time.perf_counter()
    batches = _batches(task, batch_size, generator)

    def run_eval(step: int) -> None:
        nonlocal best, best_state
        assert val is not None
        metrics = evaluate(model, val)
        entry = {"step": step, "score": score(metrics), **metrics}
        history.append(entry)
        if on_eval is not None:
            on_eval(entry)
        if best is None or entry["score"] > best["score"]:
            best = entry
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())

    model.train()
    bar = tqdm(range(1, steps + 1), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        index = next(batches)
        total, parts = task.loss(model, index, generator)
        if not math.isfinite(float(total.detach())):
            raise FloatingPointError(f"{desc}: loss became {float(total.detach())} at step {step} (lr {lr} too high?)")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        clamp_logit_scale_(model.logit_scale.data)
        losses.append(float(total.detach()))
        if step % 10 == 0 or step == steps:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if val is not None and eval_every and (step % eval_every == 0) and step != steps:
            run_eval(step)
            model.train()
    if val is not None:
        run_eval(steps)
    if keep_best and best_state is not None and best is not None and best["step"] != steps:
        model.load_state_dict(best_state)
    model.eval()
    tail = losses[-10:]
    return FitResult(history=history, best=best, seconds=time.perf_counter() - start, steps=steps,
                     final_loss=sum(tail) / len(tail), losses=losses)
