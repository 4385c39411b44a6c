"""The synthetic world: a deterministic, procedurally generated video-text dataset.

Each clip shows two coloured shapes (circle / square / triangle, five colours) on a textured background and
two events in sequence, one per half of the clip: a shape *moves* left/right/up/down, *appears* or
*disappears*. Clips come in **twin pairs that are exact time reversals of each other**: the second clip's
frames are the first clip's frames in reverse order, frame for frame, so both events are inverted
(left <-> right, up <-> down, appears <-> disappears) and their order is swapped:

    "a red circle moves to the left then a blue square appears"
    "a blue square disappears then a red circle moves to the right"

Order is the *only* difference within a pair: the two clips hold the same set of frames, so a model that
pools frames without looking at their order (CLIP4Clip mean pooling, attention mode ``"frame"``) gives
both clips the same embedding and is exactly at chance (50 %) telling them apart, while a model that sees
temporal order can do better. Videos are encoded losslessly (H.264 in RGB with ``qp 0``, ``libx264rgb``), so
the reversal survives decoding bit for bit. Objects, colours, backgrounds and events vary across pairs.

Per clip the world writes the text sources CLIP-ViP's omnisource learning needs:

- downstream ``texts``: clean captions (two phrasings), in ``train/val/test.jsonl``; the captions of twins
  differ only in their order and direction words;
- ``subtitle``: a noisy, spoken-register narration ("um so here we go, watch the red one slide to the
  left, ok") with filler words and, sometimes, a wrong colour, like ASR transcripts (``pretrain.jsonl``);
- ``caption``: a middle-frame caption describing only what frame ``N // 2`` shows ("a red circle and a
  blue square on a green background"), like OFA's auxiliary captions; ~20 % are missing (``null``);
- ``images.jsonl`` + ``images/*.png``: the middle frames with their captions, for image-text pretraining;
- ``tokenizer/``: a CLIP-format tokenizer whose vocabulary holds every word of the world.

Every record of a clip names its twin (``"twin": "<id>"``). Splits are drawn per twin pair by exact share
(:func:`assign_pair_splits`), so a split's size does not depend on the seed and twins never straddle splits.

**Frame sampling.** A uniform sample of ``T`` of the ``N`` frames (:func:`clipvip.data.video.sample_indices`,
``linspace`` truncated to int) of the reversed clip is the reverse of the forward clip's sample only when
the indices are symmetric (``i`` sampled iff ``N - 1 - i`` is); :func:`reversal_symmetric` says whether
they are. With the defaults (``N = 8``) ``T = 8`` (every frame) and ``T = 2`` are; ``T = 4`` is not
(indices 0, 2, 4, 7), so sample a divisor-friendly ``T`` (``T - 1`` dividing ``N - 1``) from this world.

Same seed -> same frames, same JSONL. Defaults (32x32, 8 frames at 4 fps) keep it small enough for a tiny
model to train in minutes on 2 CPU cores; 1000 clips generate in a few seconds.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 225, 30),
    "white": (250, 250, 250),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "purple": (110, 40, 140),
    "brown": (110, 70, 30),
    "green": (20, 110, 40),
    "blue": (20, 40, 120),
}
SHAPES = ("circle", "square", "triangle")
EVENTS = ("left", "right", "up", "down", "appears", "disappears")
INVERSE: dict[str, str] = {"left": "right", "right": "left", "up": "down", "down": "up",
                           "appears": "disappears", "disappears": "appears"}
"""Each event's time reversal: played backwards, a move left is a move right, an appearance a disappearance."""
_MOVE_WORD = {"left": "slide to the left", "right": "slide over to the right", "up": "go up", "down": "drop down"}
_FILLERS = ("um", "uh", "so", "like", "you know", "ok", "right", "alright")
SPLITS = (("test", 0.2), ("val", 0.1))
"""Default shares of the test and val splits (of the twin pairs); train takes the rest."""
CODEC = "libx264rgb"
"""Lossless H.264 in RGB (``qp 0``): decoded frames equal the rendered ones exactly, so twins stay exact
reversals after decoding (a lossy encode, or the RGB -> YUV 4:2:0 conversion, would add small cues)."""


@dataclass
class SyntheticWorld:
    """Paths of a generated world (all under ``root``)."""

    root: Path
    videos: Path
    pretrain: Path
    train: Path
    val: Path
    test: Path
    images: Path
    tokenizer: Path | None
    num_videos: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Clip:
    """One clip: ``objects[k]`` does ``events[k]``; ``order`` says which object acts first.

    ``reversed_`` marks the second clip of a twin pair, whose frames are its partner's played backwards
    (its events are the partner's inverted, in the swapped order); it is rendered as exactly that.
    """

    index: int
    objects: tuple[tuple[str, str], tuple[str, str]]  # (colour, shape) of object 0 and object 1
    events: tuple[str, str]  # event of object 0, event of object 1
    order: tuple[int, int]  # which object acts first
    background: str
    texture_seed: int
    reversed_: bool = False


def time_reversal(clip: _Clip) -> _Clip:
    """The clip played backwards: both events inverted, their order swapped (an involution)."""
    return replace(clip, events=(INVERSE[clip.events[0]], INVERSE[clip.events[1]]),
                   order=(clip.order[1], clip.order[0]), reversed_=not clip.reversed_)


def _obj(o: tuple[str, str]) -> str:
    return f"a {o[0]} {o[1]}"


def _event_phrase(e: str, variant: int) -> str:
    if e in ("appears", "disappears"):
        return e
    return f"moves to the {e}" if variant == 0 and e in ("left", "right") else f"moves {e}"


def _clean_captions(clip: _Clip) -> list[str]:
    a, b = (clip.objects[i] for i in clip.order)
    e1, e2 = (clip.events[i] for i in clip.order)
    return [
        f"{_obj(a)} {_event_phrase(e1, 0)} then {_obj(b)} {_event_phrase(e2, 0)}",
        f"first {_obj(a)} {_event_phrase(e1, 1)} and after that {_obj(b)} {_event_phrase(e2, 1)}",
    ]


def _subtitle(clip: _Clip, rng: np.random.Generator) -> str:
    parts = []
    for k, i in enumerate(clip.order):
        colour, shape = clip.objects[i]
        if rng.random() < 0.15:  # ASR-like mistakes: a wrong colour word
            colour = str(rng.choice([c for c in COLORS if c != colour]))
        thing = str(rng.choice(["one", "thing", shape, "guy"]))
        e = clip.events[i]
        if e in _MOVE_WORD:
            act = f"watch the {colour} {thing} {_MOVE_WORD[e]}"
        elif e == "appears":
            act = f"now the {colour} {thing} pops up"
        else:
            act = f"and the {colour} {thing} is gone"
        lead = "so here we go" if k == 0 else str(rng.choice(["and then", "after that", "next"]))
        filler = str(rng.choice(_FILLERS))
        parts.append(f"{filler} {lead}, {act}" if rng.random() < 0.7 else f"{lead}, {act}")
    return ", ".join(parts) + str(rng.choice([", ok", "", ", yeah", " haha"]))


def _states(clip: _Clip, num_frames: int, size: int) -> list[list[tuple[int, float, float]]]:
    """Per frame, the visible objects as ``(object, x, y)`` in pixels, for a forward (not reversed) clip.

    The first object acts during frames ``[0, N // 2)``, the second during ``[N // 2, N)``; a mover goes
    linearly from its start to its end position over its phase, an (dis)appearance switches mid-phase.
    """
    half = num_frames // 2
    lo, hi = 0.22 * size, 0.78 * size
    homes = [(0.3 * size, 0.3 * size), (0.7 * size, 0.7 * size)]
    start_pos = {"left": lambda h: (hi, h[1]), "right": lambda h: (lo, h[1]), "up": lambda h: (h[0], hi), "down": lambda h: (h[0], lo)}
    end_pos = {"left": lambda h: (lo, h[1]), "right": lambda h: (hi, h[1]), "up": lambda h: (h[0], lo), "down": lambda h: (h[0], hi)}
    frames: list[list[tuple[int, float, float]]] = []
    first = clip.order[0]
    for t in range(num_frames):
        visible = []
        for obj in (0, 1):
            e = clip.events[obj]
            home = homes[obj]
            t0, t1 = (0, half) if obj == first else (half, num_frames)
            steps = max(t1 - t0 - 1, 1)
            if e in start_pos:
                if t < t0:
                    pos = start_pos[e](home)
                elif t >= t1:
                    pos = end_pos[e](home)
                else:
                    a = (t - t0) / steps
                    s, f = start_pos[e](home), end_pos[e](home)
                    pos = (s[0] + a * (f[0] - s[0]), s[1] + a * (f[1] - s[1]))
                visible.append((obj, pos[0], pos[1]))
            else:
                switch = t0 + (t1 - t0) // 2  # the change happens mid-event
                present = (t >= switch) if e == "appears" else (t < switch)
                if present:
                    visible.append((obj, home[0], home[1]))
        frames.append(visible)
    return frames


def _render(clip: _Clip, num_frames: int, size: int) -> tuple[np.ndarray, list[list[int]]]:
    """uint8 ``[T, S, S, 3]`` frames and the visible objects per frame.

    A reversed clip is rendered as its forward partner's frames in reverse order (not re-simulated), so the
    reversal is exact by construction rather than up to float rounding of the interpolated positions.
    """
    if clip.reversed_:
        frames, visible = _render(time_reversal(clip), num_frames, size)
        return np.ascontiguousarray(frames[::-1]), visible[::-1]
    rng = np.random.default_rng(clip.texture_seed)
    bg = np.array(BACKGROUNDS[clip.background], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # A soft per-clip texture: a random-direction gradient plus low-amplitude noise.
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * xx + np.sin(ang) * yy) / size
    base = bg[None, None, :] + 25.0 * grad[..., None] + rng.normal(0, 4.0, (size, size, 1))
    r = 0.16 * size
    out = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    visible_ids = []
    for t, objs in enumerate(_states(clip, num_frames, size)):
        img = base.copy()
        for obj, cx, cy in objs:
            colour, shape = clip.objects[obj]
            if shape == "circle":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif shape == "square":
                mask = (np.abs(xx - cx) <= 0.85 * r) & (np.abs(yy - cy) <= 0.85 * r)
            else:  # triangle, apex up
                rel = (yy - (cy - r)) / (2 * r)
                mask = (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * r * 1.1)
            img[mask] = COLORS[colour]
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
        visible_ids.append([o for o, _, _ in objs])
    return out, visible_ids


def _frame_caption(clip: _Clip, visible: list[int]) -> str:
    things = [_obj(clip.objects[o]) for o in visible]
    where = f"on a {clip.background} background"
    if not things:
        return f"an empty {clip.background} background"
    return " and ".join(things) + " " + where


def write_video(path: Path, frames: np.ndarray, fps: int, codec: str = CODEC) -> None:
    """Encode uint8 ``[T, H, W, 3]`` frames to ``path`` with PyAV, atomically (single thread: byte-for-byte
    repeatable).

    ``libx264rgb`` (the default) and ``libx264`` are encoded with ``qp 0``, lossless: ``libx264rgb`` keeps
    RGB and decodes to exactly the input frames; ``libx264`` stores YUV 4:2:0, which is lossless in YUV but
    not in RGB (kept for smaller files where exact frames do not matter). Any other PyAV codec name is
    passed through with its defaults.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    h, w = frames.shape[1:3]
    try:
        with av.open(str(tmp), "w", format="mp4" if path.suffix == ".mp4" else None) as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = w, h
            stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
            stream.codec_context.thread_count = 1
            if codec in ("libx264", "libx264rgb"):
                stream.options = {"qp": "0", "preset": "veryfast", "g": str(max(len(frames), 1))}
            for arr in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _make_clips(num_videos: int, rng: np.random.Generator) -> list[_Clip]:
    """Twin pairs ``(2p, 2p + 1)``: a forward clip and its exact time reversal."""
    clips: list[_Clip] = []
    objects = [(c, s) for c in COLORS for s in SHAPES]
    while len(clips) < num_videos:
        i, j = rng.choice(len(objects), size=2, replace=False)
        a, b = objects[int(i)], objects[int(j)]
        if a[0] == b[0]:  # distinct colours, so "the red one" names one object
            continue
        ea, eb = (str(x) for x in rng.choice(EVENTS, size=2))
        bgs = [k for k in BACKGROUNDS if k not in (a[0], b[0])]
        bg = str(rng.choice(bgs))
        tex = int(rng.integers(0, 2**31 - 1))
        forward = _Clip(len(clips), (a, b), (ea, eb), (0, 1), bg, tex)
        clips.append(forward)
        if len(clips) < num_videos:
            clips.append(replace(time_reversal(forward), index=len(clips)))
    return clips


def split_sizes(num_pairs: int, test_share: float = SPLITS[0][1], val_share: float = SPLITS[1][1]) -> dict[str, int]:
    """How many twin pairs each split gets: ``round(share * num_pairs)`` (halves round up) for test and
    val, train the rest; every split with a nonzero share gets at least one pair when there are enough
    (train first, then test, then val). Depends on the count alone, never on a seed."""
    if not (0 <= test_share and 0 <= val_share and test_share + val_share < 1):
        raise ValueError(f"split shares must be >= 0 and leave some train data, got test {test_share}, val {val_share}")
    want = {"test": math.floor(test_share * num_pairs + 0.5), "val": math.floor(val_share * num_pairs + 0.5)}
    sizes = {"train": 0, "test": 0, "val": 0}
    left = num_pairs
    for name, share in (("train", 1.0), ("test", test_share), ("val", val_share)):  # one pair each first
        if share > 0 and left > 0:
            sizes[name], left = 1, left - 1
    for name in ("test", "val"):
        extra = min(max(want[name] - sizes[name], 0), left)
        sizes[name] += extra
        left -= extra
    sizes["train"] += left
    return sizes


def assign_pair_splits(num_videos: int, rng: np.random.Generator, test_share: float = SPLITS[0][1],
                       val_share: float = SPLITS[1][1]) -> dict[int, str]:
    """Split of each twin pair (pair ``p`` = clips ``2p`` and ``2p + 1``; with an odd count the last pair is
    a single clip).

    The complete pairs are shuffled by ``rng`` and dealt out by exact share (:func:`split_sizes`), so the
    number of test and val pairs is the same for every seed (an independent draw per pair made the test
    split 54 to 112 videos depending on the seed, which is noise in every table). The single clip of an
    odd world always goes to train, so split sizes in videos are exact too. Deterministic by ``rng``.
    """
    npairs = (num_videos + 1) // 2
    complete = num_videos // 2  # pairs 0 .. complete - 1 hold both twins
    sizes = split_sizes(complete, test_share, val_share)
    perm = rng.permutation(complete)
    pair_split: dict[int, str] = {}
    k = 0
    for name in ("test", "val", "train"):
        for p in perm[k:k + sizes[name]]:
            pair_split[int(p)] = name
        k += sizes[name]
    for p in range(complete, npairs):
        pair_split[p] = "train"
    return dict(sorted(pair_split.items()))


def reversal_symmetric(num_total: int, num_frames: int) -> bool:
    """Whether a uniform sample of ``num_frames`` of ``num_total`` frames
    (:func:`clipvip.data.video.sample_indices`) is symmetric, i.e. sampling a time-reversed clip gives the
    forward clip's sample reversed. True when ``num_frames - 1`` divides ``num_total - 1`` (or
    ``num_frames == num_total``); check it before evaluating order on twins with another frame count."""
    from clipvip.data.video import sample_indices

    idx = sample_indices(num_total, num_frames, "uniform")
    return bool(np.array_equal(idx, (num_total - 1 - idx)[::-1]))


def generate_world(
    out_dir: str | Path,
    *,
    num_videos: int = 400,
    seed: int = 0,
    size: int = 32,
    num_frames: int = 8,
    fps: int = 4,
    caption_missing: float = 0.2,
    codec: str = CODEC,
    tokenizer: bool = True,
    progress: bool = False,
    test_share: float = SPLITS[0][1],
    val_share: float = SPLITS[1][1],
) -> SyntheticWorld:
    """Write the synthetic world to ``out_dir`` and return its paths (see the module doc).

    Splits are assigned per twin pair by exact share (``test_share`` and ``val_share`` of the pairs, train
    the rest, :func:`assign_pair_splits`), so both clips of a pair are always in the same split and the
    split sizes are the same for every seed. Each record of a clip that has a twin names it
    (``"twin": "<id>"``, in ``train/val/test.jsonl`` and ``pretrain.jsonl``), so consumers never infer twins
    from numbering. ``pretrain.jsonl`` covers the train and val clips (never test). Re-running with the
    same arguments rewrites identical content.
    """
    from tqdm.auto import tqdm

    from clipvip.data.annotations import write_jsonl

    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16, got {size}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2 (two events), got {num_frames}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    split_sizes(0, test_share, val_share)  # validates the shares before anything is written
    root = Path(out_dir)
    videos_dir, images_dir = root / "videos", root / "images"
    videos_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = _make_clips(num_videos, rng)
    pair_split = assign_pair_splits(len(clips), rng, test_share, val_share)

    from PIL import Image

    downstream: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    pretrain, images = [], []
    words: set[str] = set()
    for clip in tqdm(clips, desc="synthetic world", disable=not progress):
        crng = np.random.default_rng([seed, clip.index])
        vid = f"vid{clip.index:05d}"
        frames, visible = _render(clip, num_frames, size)
        write_video(videos_dir / f"{vid}.mp4", frames, fps, codec)
        mid = num_frames // 2
        frame_caption = _frame_caption(clip, visible[mid])
        png = images_dir / f"{vid}.png"
        tmp = png.with_name(f".{png.name}.tmp")
        Image.fromarray(frames[mid]).save(tmp, format="PNG")
        tmp.replace(png)
        split = pair_split[clip.index // 2]
        texts = _clean_captions(clip)
        subtitle = _subtitle(clip, crng)
        caption = None if crng.random() < caption_missing else frame_caption
        rel = f"videos/{vid}.mp4"
        twin = {"twin": f"vid{clip.index ^ 1:05d}"} if clip.index ^ 1 < len(clips) else {}
        downstream[split].append({"video": rel, "id": vid, "texts": texts, "split": split, **twin})
        if split != "test":
            pretrain.append({"video": rel, "id": vid, "texts": [subtitle], "split": "train", "subtitle": subtitle,
                             "caption": caption, **twin})
            images.append({"video": f"images/{vid}.png", "id": vid, "texts": [frame_caption], "split": "train"})
        for t in (*texts, subtitle, frame_caption):
            words.update(re.findall(r"[a-z]+", t.lower()))
    for c in COLORS:
        words.add(c)
    paths = {name: root / f"{name}.jsonl" for name in ("pretrain", "train", "val", "test", "images")}
    write_jsonl(pretrain, paths["pretrain"])
    write_jsonl(images, paths["images"])
    for split, recs in downstream.items():
        write_jsonl(recs, paths[split])
    tok_dir: Path | None = None
    if tokenizer:
        from clipvip.tokenizer import build_word_tokenizer

        tok_dir = build_word_tokenizer(sorted(words), root / "tokenizer")
    counts = {k: len(v) for k, v in downstream.items()} | {"pretrain": len(pretrain), "images": len(images)}
    log.info("synthetic world in %s: %s", root, counts)
    return SyntheticWorld(root=root, videos=videos_dir, pretrain=paths["pretrain"], train=paths["train"],
                          val=paths["val"], test=paths["test"], images=paths["images"], tokenizer=tok_dir,
                          num_videos=len(clips), counts=counts)
