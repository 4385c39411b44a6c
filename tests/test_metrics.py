"""Retrieval metrics on hand-worked matrices, and Dual Softmax against a direct double loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipvip import metrics


def test_3x3_hand_worked():
    sim = [
        [0.9, 0.1, 0.2],  # match 0.9 is the best: rank 1
        [0.8, 0.5, 0.6],  # match 0.5 is below 0.8 and 0.6: rank 3
        [0.1, 0.7, 0.3],  # match 0.3 is below 0.7: rank 2
    ]
    np.testing.assert_array_equal(metrics.match_ranks(sim), [1, 3, 2])
    m = metrics.retrieval_metrics(np.array(sim))
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MdR"] == 2.0
    assert m["MnR"] == pytest.approx(2.0)
    # video->text: column j ranks the texts; column 0 = (0.9, 0.8, 0.1): text 0 first (rank 1);
    # column 1 = (0.1, 0.5, 0.7): text 1 second (rank 2); column 2 = (0.2, 0.6, 0.3): text 2 second (rank 2).
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim), [1, 2, 2])
    v2t = metrics.video_to_text_metrics(torch.tensor(sim))
    assert v2t == metrics.retrieval_metrics(np.array(sim).T)
    assert v2t["MdR"] == 2.0 and v2t["MnR"] == pytest.approx(5 / 3)


def test_4x4_ties_are_pessimistic():
    sim = torch.tensor(
        [
            [0.5, 0.5, 0.1, 0.0],  # tie with one other column: rank 2 (not 1)
            [0.3, 0.3, 0.3, 0.3],  # constant row: every column ties, rank 4 (last)
            [0.2, 0.9, 0.4, 0.4],  # 0.9 above, one tie: rank 3
            [0.0, 0.0, 0.0, 1.0],  # strictly best: rank 1
        ]
    )
    np.testing.assert_array_equal(metrics.match_ranks(sim), [2, 4, 3, 1])
    m = metrics.retrieval_metrics(sim)
    assert m["R1"] == 25.0 and m["R5"] == 100.0
    assert m["MdR"] == 2.5  # median of 1, 2, 3, 4
    assert m["MnR"] == 2.5
    # A collapsed model (constant matrix) must rank every match last, never first.
    const = metrics.retrieval_metrics(np.zeros((4, 4)))
    assert const["R1"] == 0.0 and const["MdR"] == 4.0


def test_non_square_multi_caption_5x3():
    # 5 captions, 3 videos; caption i belongs to video t2v[i].
    t2v = [0, 0, 1, 2, 2]
    sim = np.array(
        [
            [0.9, 0.2, 0.1],  # caption 0 -> video 0: rank 1
            [0.3, 0.4, 0.1],  # caption 1 -> video 0: 0.4 above: rank 2
            [0.5, 0.5, 0.6],  # caption 2 -> video 1: 0.6 above, tie 0.5: rank 3
            [0.1, 0.2, 0.8],  # caption 3 -> video 2: rank 1
            [0.7, 0.6, 0.2],  # caption 4 -> video 2: rank 3
        ]
    )
    np.testing.assert_array_equal(metrics.match_ranks(sim, t2v), [1, 2, 3, 1, 3])
    m = metrics.retrieval_metrics(sim, t2v)
    assert m["R1"] == pytest.approx(40.0)
    assert m["MdR"] == 2.0 and m["MnR"] == pytest.approx(2.0)
    # video->text, best caption of each video among all 5 captions (column ranking):
    # video 0, column (0.9, 0.3, 0.5, 0.1, 0.7): caption 0 is first -> 1.
    # video 1, column (0.2, 0.4, 0.5, 0.2, 0.6): caption 2 (0.5) is below 0.6 -> 2.
    # video 2, column (0.1, 0.1, 0.6, 0.8, 0.2): caption 3 first -> 1 (caption 4 would be 3).
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v), [1, 2, 1])
    v2t = metrics.video_to_text_metrics(sim, t2v)
    assert v2t["R1"] == pytest.approx(200 / 3)
    assert v2t["MnR"] == pytest.approx(4 / 3)


def test_video_to_text_own_captions_never_compete_with_each_other():
    # Video 0 has captions 0 and 1 with equal scores: siblings are not competitors, so a tie is still rank 1.
    sim = np.array([[0.5, 0.0], [0.5, 0.0], [0.1, 0.9]])
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, [0, 0, 1]), [1, 1])
    # The case: column 0 is (.9, .9, .2, .3), video 0 owns texts 0-1, nothing else reaches .9;
    # column 1 is (.1, .1, .8, .7), video 1 owns texts 2-3, best .8, others .1: both are perfect hits.
    sim = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    for convention in ("best-caption", "maxpool"):
        np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, [0, 0, 1, 1], convention=convention), [1, 1])
    # A tie with ANOTHER video's caption is still pessimistic: text 2 (video 1) scores .9 in column 0.
    sim = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.8], [0.3, 0.7]])
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, [0, 0, 1, 1]), [2, 1])


def test_video_to_text_conventions_hand_worked():
    # 3 videos; video 0 owns texts 0-1, video 1 texts 2-4, video 2 text 5.
    t2v = [0, 0, 1, 1, 1, 2]
    sim = np.array(
        [
            [0.50, 0.10, 0.30],
            [0.20, 0.00, 0.40],
            [0.60, 0.30, 0.10],
            [0.55, 0.20, 0.45],
            [0.10, 0.35, 0.50],
            [0.40, 0.40, 0.20],
        ]
    )
    # best-caption: column 0, own best .50; other videos' texts >= .50: .60, .55 -> rank 3.
    # column 1, own best .35 (text 4); others 0.10, 0.00, 0.40 -> one above -> rank 2.
    # column 2, own best .20 (text 5); others .30 .40 .10 .45 .50 -> 4 above (.10 is below) -> rank 5.
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v), [3, 2, 5])
    # maxpool: column 0 pooled per video = (.50, .60, .40): video 1 above -> 2.
    # column 1 pooled = (.10, .35, .40): video 2 above -> 2. column 2 pooled = (.40, .50, .20) -> 3.
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v, convention="maxpool"), [2, 2, 3])
    m = metrics.video_to_text_metrics(sim, t2v, convention="maxpool")
    assert m["MnR"] == pytest.approx(7 / 3) and m["R1"] == 0.0
    # Invalid video 1: worst rank of each convention (1 + 3 other captions; 3 videos).
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v, invalid_videos=[1]), [3, 4, 5])
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v, [1], convention="maxpool"), [2, 3, 3])
    with pytest.raises(ValueError, match="convention"):
        metrics.video_to_text_ranks(sim, t2v, convention="clip4clip")


def test_conventions_agree_in_the_one_to_one_case():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(7, 7))
    expected = metrics.match_ranks(sim.T)
    for convention in ("best-caption", "maxpool"):
        np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, convention=convention), expected)


def test_conventions_match_loops_on_random_multi_caption(monkeypatch):
    rng = np.random.default_rng(2)
    t2v = [0, 0, 1, 2, 2, 2, 3, 4, 4]
    sim = np.round(rng.uniform(-1, 1, size=(len(t2v), 5)), 1)  # rounded: many ties
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 10)  # several column chunks
    best, pool = [], []
    for v in range(5):
        own = [i for i in range(len(t2v)) if t2v[i] == v]
        top = max(sim[i, v] for i in own)
        best.append(1 + sum(1 for k in range(len(t2v)) if t2v[k] != v and sim[k, v] >= top))
        pooled = {u: max(sim[k, v] for k in range(len(t2v)) if t2v[k] == u) for u in range(5)}
        pool.append(1 + sum(1 for u in range(5) if u != v and pooled[u] >= pooled[v]))
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v), best)
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v, convention="maxpool"), pool)


def test_r_at_k_boundaries_and_chunking(monkeypatch):
    # Rank k exactly must count for R@k; use a 12x12 with known ranks 1..12 via a shifted match column.
    n = 12
    sim = np.tile(np.arange(n, 0, -1, dtype=np.float64), (n, 1))  # column j has score n - j
    t2v = list(range(n))  # row i's match is column i, which has rank i + 1
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 30)  # force many chunks
    ranks = metrics.match_ranks(sim, t2v)
    np.testing.assert_array_equal(ranks, np.arange(1, n + 1))
    m = metrics.retrieval_metrics(sim, t2v)
    assert m["R1"] == pytest.approx(100 / 12)
    assert m["R5"] == pytest.approx(500 / 12)
    assert m["R10"] == pytest.approx(1000 / 12)
    assert m["MdR"] == 6.5 and m["MnR"] == 6.5
    v2t_ranks = metrics.video_to_text_ranks(sim, t2v)
    # Column j is constant over the texts, so every text ties and each video gets the last rank.
    np.testing.assert_array_equal(v2t_ranks, np.full(n, n))


def test_dual_softmax_matches_double_loop():
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(6, 4))
    temp = 100.0
    expected = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        for j in range(sim.shape[1]):
            denom = sum(math.exp(temp * sim[k, j] - temp * sim[:, j].max()) for k in range(sim.shape[0]))
            expected[i, j] = sim[i, j] * math.exp(temp * sim[i, j] - temp * sim[:, j].max()) / denom
    got = metrics.dual_softmax(sim)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    got_t = metrics.dual_softmax(torch.tensor(sim, dtype=torch.float32), temperature=temp)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), expected, rtol=1e-5, atol=1e-7)
    half = metrics.dual_softmax(torch.tensor(sim, dtype=torch.float16))
    assert torch.isfinite(half).all()


def test_dual_softmax_does_not_underflow_to_ties():
    # Cosines 2 apart: the softmax weight is e^-200, zero in float32, but the ranking must survive.
    sim = torch.tensor([[1.0, -0.99], [-1.0, -0.98]], dtype=torch.float32)
    d = metrics.dual_softmax(sim)
    naive32 = sim * torch.softmax(100.0 * sim, dim=0)
    assert naive32[1, 0] == 0  # what float32 would give
    assert d[1, 0] == pytest.approx(-1.0 * math.exp(-200.0), rel=1e-9)
    assert len(set(d.flatten().tolist())) == 4


def test_dsl_fixes_a_hub_video():
    # Video 0 is a "hub": it scores highest for every text. DSL's softmax over texts spreads it out.
    sim = np.array([[0.95, 0.10, 0.10], [0.91, 0.90, 0.10], [0.92, 0.10, 0.90]])
    plain = metrics.retrieval_metrics(sim)
    dsl = metrics.retrieval_metrics(metrics.dual_softmax(sim))
    assert plain["R1"] == pytest.approx(100 / 3)
    assert dsl["R1"] == 100.0


def test_evaluate_similarity_and_table():
    sim = torch.eye(4) + 0.01 * torch.arange(16, dtype=torch.float32).reshape(4, 4)
    res = metrics.evaluate_similarity(sim)
    assert set(res) == {"t2v", "v2t", "t2v_dsl", "v2t_dsl", "v2t_convention"}
    assert res["v2t_convention"] == "best-caption"
    assert res["t2v"]["R1"] == 100.0
    assert set(res["t2v"]) == set(metrics.METRIC_KEYS)
    table = metrics.format_table(res)
    lines = table.splitlines()
    assert lines[0].startswith("| direction | R@1")
    assert lines[2].startswith("| text->video | 100.0")
    assert lines[4].startswith("| text->video (DSL)")
    # video->text with DSL is not a separate row (it equals video->text); one line says why, one the convention.
    assert not any("video->text (DSL)" in line for line in lines) and len(lines) == 7
    assert lines[5].startswith("convention (best-caption): video->text: rank of the video's best caption")
    assert "equals video->text" in lines[6]
    assert set(metrics.evaluate_similarity(sim, dsl=False)) == {"t2v", "v2t", "v2t_convention"}
    pooled = metrics.evaluate_similarity(sim, dsl=False, v2t_convention="maxpool")
    assert "convention (maxpool): video->text: CLIP4Clip's" in metrics.format_table(pooled)


def test_bad_inputs():
    with pytest.raises(ValueError, match="needs text_to_video"):
        metrics.retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="3 entries"):
        metrics.retrieval_metrics(np.zeros((2, 2)), [0, 1, 1])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        metrics.retrieval_metrics(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="have no text"):
        metrics.video_to_text_metrics(np.zeros((2, 3)), [0, 1])


def test_paragraph_text():
    assert metrics.paragraph_text(["a man walks.", "he sits down."]) == "a man walks. he sits down."
    assert metrics.paragraph_text("already one") == "already one"


def test_large_matrix_is_fast_and_correct():
    n = 2000
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(n, n, generator=g)
    sim.diagonal().add_(3.0)
    ranks = metrics.match_ranks(sim)
    # Independent count for a few rows.
    for i in (0, 17, n - 1):
        assert ranks[i] == 1 + int((sim[i] > sim[i, i]).sum())
    assert metrics.video_to_text_ranks(sim)[5] == metrics.match_ranks(sim.T)[5]


# ------------------------------------------------------------------ invalid (undecodable) videos
# Video 2 failed to decode and kept a zero embedding: its column is all 0.0. Cosines of real pairs can be
# negative, so without masking the zero column outranks real negatives.
_INVALID_SIM = np.array(
    [
        [0.5, -0.2, 0.0, -0.1],  # text 0 -> video 0: best either way, rank 1
        [-0.3, -0.1, 0.0, -0.4],  # text 1 -> video 1: unmasked the 0.0 steals rank 1 (rank 2); masked rank 1
        [-0.2, -0.3, 0.0, -0.1],  # text 2 -> video 2 (invalid): unmasked a "hit" (rank 1); masked rank 4 (miss)
        [0.1, -0.2, 0.0, -0.05],  # text 3 -> video 3: above it 0.1 and 0.0 (rank 3); masked only 0.1 (rank 2)
    ]
)


def test_invalid_video_columns_hand_worked():
    np.testing.assert_array_equal(metrics.match_ranks(_INVALID_SIM), [1, 2, 1, 3])  # the problem
    for invalid in ([2], np.array([False, False, True, False]), torch.tensor([2])):
        np.testing.assert_array_equal(metrics.match_ranks(_INVALID_SIM, invalid_videos=invalid), [1, 1, 4, 2])
    m = metrics.retrieval_metrics(_INVALID_SIM, invalid_videos=[2])
    assert m == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.5, "MnR": 2.0}
    # video->text, column by column: col 0 (0.5, -0.3, -0.2, 0.1): text 0 first; col 1 (-0.2, -0.1, -0.3,
    # -0.2): text 1 first; col 2 is invalid: worst rank 4; col 3 (-0.1, -0.4, -0.1, -0.05): text 3 first.
    np.testing.assert_array_equal(metrics.video_to_text_ranks(_INVALID_SIM, invalid_videos=[2]), [1, 1, 4, 1])
    v2t = metrics.video_to_text_metrics(_INVALID_SIM, invalid_videos=[2])
    assert v2t == {"R1": 75.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.75}
    # An empty selection changes nothing.
    assert metrics.retrieval_metrics(_INVALID_SIM, invalid_videos=[]) == metrics.retrieval_metrics(_INVALID_SIM)
    assert metrics.retrieval_metrics(_INVALID_SIM, invalid_videos=np.zeros(4, dtype=bool)) == \
        metrics.retrieval_metrics(_INVALID_SIM)


def test_invalid_video_multi_caption_v2t_and_even_a_perfect_column_misses():
    # 5 captions, 3 videos; video 1 is invalid although its column would score its own captions highest.
    t2v = [0, 0, 1, 2, 2]
    sim = np.array(
        [
            [0.9, 0.95, 0.1],  # caption 0 -> video 0: unmasked 0.95 above (rank 2); masked rank 1
            [-0.1, 0.0, -0.3],  # caption 1 -> video 0: unmasked 0.0 above (rank 2); masked rank 1
            [0.1, 0.99, 0.2],  # caption 2 -> video 1 (invalid): worst rank 3
            [0.2, 0.3, 0.4],  # caption 3 -> video 2: unmasked 0.4 is best: rank 1; masked rank 1
            [0.5, 0.6, 0.4],  # caption 4 -> video 2: 0.5 above (masked); rank 2
        ]
    )
    np.testing.assert_array_equal(metrics.match_ranks(sim, t2v, invalid_videos=[1]), [1, 1, 3, 1, 2])
    # video->text: video 0's caption 0 tops column 0 (0.9): rank 1; video 1 is invalid: the worst rank, 5
    # (1 + the 4 captions of other videos); video 2's column is (0.1, -0.3, 0.2, 0.4, 0.4): its own captions
    # 3 and 4 tie at the top, but siblings do not compete, so rank 1.
    np.testing.assert_array_equal(metrics.video_to_text_ranks(sim, t2v, invalid_videos=[1]), [1, 5, 1])


def _loop_ranks_t2v(d: np.ndarray, t2v: list[int], invalid: set[int]) -> list[int]:
    """The definition, one comparison at a time: valid columns only; a text of an invalid video is last."""
    n_texts, n_videos = d.shape
    ranks = []
    for i in range(n_texts):
        m = t2v[i]
        if m in invalid:
            ranks.append(n_videos)
            continue
        ranks.append(1 + sum(1 for j in range(n_videos) if j != m and j not in invalid and d[i, j] >= d[i, m]))
    return ranks


def _loop_ranks_v2t(d: np.ndarray, t2v: list[int], invalid: set[int]) -> list[int]:
    n_texts, n_videos = d.shape
    out = []
    for v in range(n_videos):
        own = [i for i in range(n_texts) if t2v[i] == v]
        if v in invalid:
            out.append(1 + n_texts - len(own))
            continue
        out.append(min(1 + sum(1 for k in range(n_texts) if t2v[k] != v and d[k, v] >= d[i, v]) for i in own))
    return out


def test_evaluate_similarity_masks_invalid_videos_in_every_table():
    rng = np.random.default_rng(0)
    t2v = [0, 0, 1, 2, 2, 3, 4, 4, 5]
    sim = rng.uniform(-0.4, 0.4, size=(len(t2v), 6))
    for i, v in enumerate(t2v):
        sim[i, v] += 0.15  # matches a bit above chance so that ranks vary
    invalid = {1, 4}
    sim[:, sorted(invalid)] = 0.0  # zero embeddings
    res = metrics.evaluate_similarity(sim, t2v, dsl=True, invalid_videos=sorted(invalid))
    # Direct double-loop Dual Softmax (softmax over the texts of each column, float64).
    dsl = np.empty_like(sim)
    for j in range(sim.shape[1]):
        e = [math.exp(100.0 * sim[k, j]) for k in range(sim.shape[0])]
        for k in range(sim.shape[0]):
            dsl[k, j] = sim[k, j] * e[k] / sum(e)
    for name, d in (("t2v", sim), ("t2v_dsl", dsl)):
        expected = metrics.ranks_to_metrics(_loop_ranks_t2v(d, t2v, invalid))
        assert res[name] == pytest.approx(expected), name
    for name, d in (("v2t", sim), ("v2t_dsl", dsl)):
        expected = metrics.ranks_to_metrics(_loop_ranks_v2t(d, t2v, invalid))
        assert res[name] == pytest.approx(expected), name
    # Texts of invalid videos never hit, in any table.
    ranks = metrics.match_ranks(dsl, t2v, invalid_videos=sorted(invalid))
    assert all(ranks[i] == 6 for i, v in enumerate(t2v) if v in invalid)


def test_invalid_videos_bad_input():
    with pytest.raises(ValueError, match="one entry per video column"):
        metrics.retrieval_metrics(np.eye(3), invalid_videos=[True, False])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        metrics.retrieval_metrics(np.eye(3), invalid_videos=[3])
    with pytest.raises(ValueError, match="bool mask or integer"):
        metrics.retrieval_metrics(np.eye(3), invalid_videos=[0.5])
