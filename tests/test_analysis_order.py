"""Order accuracy and pair R@1: hand-worked matrices, input checks, and the property that matters: a
frame-mean-pooling model is exactly at 50.0 on the synthetic world's decoded twin pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipvip.analysis.order import (DEFAULT_TOL, fair_recall_at_1, order_accuracy, order_outcomes,
                                    pair_recall_at_1, twin_columns)

# Four clips in two twin pairs (0, 1) and (2, 3); text i belongs to clip i.
SIM = [[0.9, 0.1, 0.3, 0.2],
       [0.5, 0.5, 0.6, 0.0],
       [0.0, 0.1, 0.2, 0.3],
       [0.8, 0.1, 0.7, 0.7 + 1e-7]]
T2V = [0, 1, 2, 3]
TWIN = [1, 0, 3, 2]


def test_order_accuracy_hand_worked():
    # text 0: 0.9 > 0.1 win; text 1: 0.5 == 0.5 tie; text 2: 0.2 < 0.3 loss;
    # text 3: own 0.7000001 vs twin 0.7, |diff| 1e-7 <= 1e-5 * 0.9: tie.
    assert order_outcomes(SIM, T2V, TWIN).tolist() == [1.0, 0.5, 0.0, 0.5]
    assert order_accuracy(SIM, T2V, TWIN) == 50.0
    # Without tolerance, text 3's own clip is above its twin by 1e-7: a win (2.5 / 4).
    assert order_accuracy(SIM, T2V, TWIN, tol=0.0) == 62.5
    # The tolerance is relative to the largest |score|: logits (x 100) give the same answer.
    assert order_accuracy(100 * torch.tensor(SIM), T2V, TWIN) == 50.0
    # Several captions per clip, and a clip without twin (column 4) whose caption is left out.
    sim = np.array([[0.9, 0.1, 0.0, 0.0, 0.5],
                    [0.2, 0.1, 0.0, 0.0, 0.5],
                    [0.0, 0.0, 0.4, 0.1, 0.5],
                    [0.0, 0.0, 0.0, 0.0, 0.9]])
    # texts 0, 1 -> clip 0 (win, win), text 2 -> clip 3 (0.1 < 0.4: loss), text 3 -> clip 4 (no twin).
    assert order_accuracy(sim, [0, 0, 3, 4], [1, 0, 3, 2, -1]) == pytest.approx(200 / 3)
    assert math.isnan(order_outcomes(sim, [0, 0, 3, 4], [1, 0, 3, 2, -1])[3])
    assert math.isnan(order_accuracy(sim, [0, 0, 3, 4], [-1] * 5))


def test_pair_recall_hand_worked():
    # text 0: pair {0,1} best 0.9 > 0.3 hit; text 1: pair best 0.5 < 0.6 (clip 2) miss;
    # text 2: pair {2,3} best 0.3 > 0.1 hit (its own clip is not first: R@1 would miss);
    # text 3: pair best 0.7000001 < 0.8 miss.
    assert pair_recall_at_1(SIM, T2V, TWIN) == 50.0
    # A tie with a third clip is a miss (pessimistic, as clipvip.metrics); a clip without twin counts as R@1.
    sim = [[0.5, 0.2, 0.5], [0.1, 0.3, 0.2], [0.0, 0.9, 1.0]]
    assert pair_recall_at_1(sim, [0, 1, 2], [1, 0, -1]) == pytest.approx(200 / 3)
    assert pair_recall_at_1([[0.3, 0.2]], [0], [1, 0]) == 100.0  # nothing else to beat


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="symmetric"):
        order_accuracy(SIM, T2V, [1, 2, 3, 0])
    with pytest.raises(ValueError, match="own twin"):
        order_accuracy(SIM, T2V, [0, 1, 3, 2])
    with pytest.raises(ValueError, match="texts"):
        pair_recall_at_1(SIM, [0, 1], TWIN)
    with pytest.raises(ValueError, match="videos"):
        order_accuracy(SIM, T2V, [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        order_accuracy([[float("nan"), 0.0], [0.0, 0.0]], [0, 1], [1, 0])
    with pytest.raises(ValueError, match="tol"):
        order_accuracy(SIM, T2V, TWIN, tol=-1.0)
    assert twin_columns(["a", "b", "c"], ["b", "a", "z"]) == [1, 0, -1]
    assert twin_columns(["a", "b"], [None, ""]) == [-1, -1]


@pytest.fixture(scope="module")
def decoded_world(tmp_path_factory):
    """Decoded clips, captions and twins of a small synthetic world (test split and more)."""
    from clipvip.data.annotations import read_jsonl
    from clipvip.data.synthetic import generate_world
    from clipvip.data.transforms import VideoTransform
    from clipvip.data.video import load_frames
    from clipvip.tokenizer import load_tokenizer, tokenize

    w = generate_world(tmp_path_factory.mktemp("order_world"), num_videos=16, seed=5)
    recs = [r for s in ("train", "val", "test") for r in read_jsonl(getattr(w, s))]
    transform = VideoTransform(size=32)
    clips = torch.stack([transform(load_frames(w.root / r["video"], num_frames=8)) for r in recs])
    texts = [t for r in recs for t in r["texts"]]
    t2v = [row for row, r in enumerate(recs) for _ in r["texts"]]
    twin = twin_columns([r["id"] for r in recs], [r.get("twin") for r in recs])
    tok = load_tokenizer(str(w.tokenizer), max_length=24)
    return clips, tokenize(tok, texts, 24), t2v, twin


def _similarity(model, clips, tokens) -> torch.Tensor:
    with torch.no_grad():
        # Twins at different rows and in different batches, as in any evaluation.
        video = torch.cat([model.encode_video(clips[i:i + 5]) for i in range(0, len(clips), 5)])
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    return text @ video.T


def test_frame_mean_pooling_is_exactly_order_blind_on_decoded_twins(decoded_world):
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP

    clips, tokens, t2v, twin = decoded_world
    torch.manual_seed(0)
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny")).eval()
    with torch.no_grad():  # a temporal table that is not zero, so order-aware modes do see order
        model.vision_model.embeddings.temporal_embedding.normal_(0, 1.0)
    model.set_attention("frame")
    sim = _similarity(model, clips, tokens)
    assert order_accuracy(sim, t2v, twin) == 50.0
    # Twins differ only by float noise far below the tolerance (summation order of the frame mean).
    rows = torch.arange(len(t2v))
    gap = (sim[rows, t2v] - sim[rows, torch.tensor(twin)[t2v]]).abs().max()
    assert float(gap) <= DEFAULT_TOL * float(sim.abs().max()) / 10
    # Order-blind: whenever the pair is on top, own clip and twin tie, so fair R@1 is half of pair R@1.
    assert fair_recall_at_1(sim, t2v) == pytest.approx(pair_recall_at_1(sim, t2v, twin) / 2)
    # Control: proxy attention with a nonzero temporal table does tell twins apart.
    model.set_attention("proxy")
    outcomes = order_outcomes(_similarity(model, clips, tokens), t2v, twin)
    assert not np.any(outcomes == 0.5)


def test_fair_recall_hand_worked():
    # text 0: 0.9 alone on top -> 1; text 1: own 0.5 below 0.6 -> 0; text 2: own 0.2 below 0.3 -> 0;
    # text 3: own 0.7000001 and 0.7 tie within tol but 0.8 is on top -> 0.
    assert fair_recall_at_1(SIM, T2V) == 25.0
    # Own clip tied with its twin for first place: half a hit; three-way tie: a third.
    sim = [[0.5, 0.5, 0.1], [0.4, 0.4 + 1e-8, 0.4], [0.0, 0.2, 0.3]]
    assert fair_recall_at_1(sim, [0, 0, 2]) == pytest.approx(100 * (0.5 + 1 / 3 + 1) / 3)
    assert fair_recall_at_1(sim, [0, 0, 2], tol=0.0) == pytest.approx(100 * (0.5 + 0 + 1) / 3)
    # Plain R@1 of clipvip.metrics (pessimistic) on the same matrix counts both ties as misses.
    from clipvip.metrics import retrieval_metrics

    assert retrieval_metrics(torch.tensor(sim), [0, 0, 2])["R1"] == pytest.approx(100 / 3)
