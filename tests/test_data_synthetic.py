"""The synthetic world's contract, checked on decoded files: twins are exact time reversals, the captions say
what the frames show, splits have exact sizes for every seed and never separate twins."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from clipvip.data.annotations import read_jsonl
from clipvip.data.synthetic import (COLORS, assign_pair_splits, generate_world, reversal_symmetric,
                                    split_sizes)
from clipvip.data.video import decode_all, load_frames

INVERT = {"left": "right", "right": "left", "up": "down", "down": "up",
          "appears": "disappears", "disappears": "appears"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("synth"), num_videos=24, seed=11, tokenizer=False)


def _records(world):
    return {r["id"]: r for s in ("train", "val", "test") for r in read_jsonl(getattr(world, s))}


def test_every_twin_pair_is_an_exact_reversal_on_decoded_frames(world):
    recs = _records(world)
    assert len(recs) == 24
    for vid, rec in recs.items():
        a = decode_all(world.root / rec["video"])
        b = decode_all(world.root / recs[rec["twin"]]["video"])
        assert a.shape == (8, 32, 32, 3)
        assert torch.equal(a, b.flip(0)), vid
        assert not torch.equal(a, b), vid  # the order really differs
        # The same multiset of frames: a bag-of-frames model sees nothing that tells the twins apart.
        assert sorted(f.numpy().tobytes() for f in a) == sorted(f.numpy().tobytes() for f in b)


def test_encoding_is_lossless(world):
    """The middle frame written as PNG (lossless, by PIL) equals the decoded video's middle frame."""
    for rec in read_jsonl(world.images):
        png = np.asarray(Image.open(world.root / rec["video"]).convert("RGB"))
        frames = decode_all(world.videos / f"{rec['id']}.mp4")
        assert np.array_equal(frames[len(frames) // 2].numpy(), png)


def test_uniform_sampling_of_a_twin_is_the_reverse_for_the_demo_frame_counts(world):
    from clipvip.demo.settings import FULL, QUICK

    recs = _records(world)
    counts = {FULL.num_frames, QUICK.num_frames, 2}
    for t in counts:
        assert reversal_symmetric(8, t), t
        for rec in list(recs.values())[:6]:
            a = load_frames(world.root / rec["video"], num_frames=t)
            b = load_frames(world.root / recs[rec["twin"]]["video"], num_frames=t)
            assert torch.equal(a, b.flip(0))
    # linspace-truncated sampling is not symmetric in general: 4 of 8 frames are 0, 2, 4, 7.
    assert not reversal_symmetric(8, 4) and reversal_symmetric(15, 8) and reversal_symmetric(8, 8)


def _mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.all(frame == np.array(COLORS[colour], dtype=np.uint8), axis=-1)


def _check_event(frames: np.ndarray, colour: str, event: str, t0: int, t1: int) -> None:
    """``event`` of the ``colour`` object happens within frames ``[t0, t1)`` (read off the pixels)."""
    first, last = _mask(frames[t0], colour), _mask(frames[t1 - 1], colour)
    if event == "appears":
        assert first.sum() == 0 and last.sum() > 10
    elif event == "disappears":
        assert first.sum() > 10 and last.sum() == 0
    else:
        (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (first, last))
        dx, dy = x1 - x0, y1 - y0
        expected = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}[event]
        main, perp = (dy, dx) if event in ("up", "down") else (dx, dy)
        assert expected and abs(main) > abs(perp), (event, dx, dy)


def test_captions_say_what_the_frames_show_and_twins_differ_only_in_order_and_direction(world):
    pattern = re.compile(r"a (\w+) (\w+) (?:moves (?:to the )?(\w+)|(appears|disappears)) then "
                         r"a (\w+) (\w+) (?:moves (?:to the )?(\w+)|(appears|disappears))$")
    recs = _records(world)
    for vid, rec in recs.items():
        frames = decode_all(world.root / rec["video"]).numpy()
        m = pattern.match(rec["texts"][0])
        assert m, rec["texts"][0]
        c1, s1, e1 = m.group(1), m.group(2), m.group(3) or m.group(4)
        c2, s2, e2 = m.group(5), m.group(6), m.group(7) or m.group(8)
        assert c1 != c2 and {s1, s2} <= {"circle", "square", "triangle"}
        _check_event(frames, c1, e1, 0, 4)
        _check_event(frames, c2, e2, 4, 8)
        twin = recs[rec["twin"]]
        words = rec["texts"][0].split(" then ")
        swapped = [" ".join(INVERT.get(w, w) for w in part.split()) for part in reversed(words)]
        assert twin["texts"][0] == " then ".join(swapped)
        assert twin["split"] == rec["split"]
    # Objects, backgrounds and events vary across pairs.
    assert len({r["texts"][0] for r in recs.values()}) == 24


def test_split_sizes_are_exact_for_every_seed(tmp_path):
    for npairs, want in ((240, (168, 48, 24)), (96, (67, 19, 10)), (3, (1, 1, 1)), (2, (1, 1, 0)), (1, (1, 0, 0)),
                         (0, (0, 0, 0))):
        got = split_sizes(npairs)
        assert (got["train"], got["test"], got["val"]) == want, npairs
    for n in (7, 24, 96, 480):
        sizes = None
        for seed in range(5):
            splits = assign_pair_splits(n, np.random.default_rng(seed))
            assert sorted(splits) == list(range((n + 1) // 2))
            count = {s: 2 * sum(1 for p in range(n // 2) if splits[p] == s) for s in ("train", "val", "test")}
            if n % 2:
                assert splits[n // 2] == "train"  # the lone clip never changes a val/test size
            assert sizes in (None, count)
            sizes = count
    # Generated worlds: same test/val sizes for several seeds, twins in the same split.
    counts = set()
    for seed in (0, 1, 2):
        w = generate_world(tmp_path / str(seed), num_videos=20, seed=seed, size=16, tokenizer=False)
        counts.add((w.counts["train"], w.counts["val"], w.counts["test"]))
        recs = _records(w)
        assert all(recs[r["twin"]]["split"] == r["split"] for r in recs.values())
    assert counts == {(14, 2, 4)}  # 10 pairs: 2 test, 1 val, 7 train


def test_custom_shares_and_bad_arguments(tmp_path):
    assert split_sizes(100, test_share=0.5, val_share=0.25) == {"train": 25, "test": 50, "val": 25}
    with pytest.raises(ValueError, match="shares"):
        generate_world(tmp_path / "w", num_videos=4, test_share=0.7, val_share=0.3)
    with pytest.raises(ValueError, match="num_frames"):
        generate_world(tmp_path / "w", num_videos=4, num_frames=1)
    assert not (tmp_path / "w").exists()  # nothing written for bad arguments
