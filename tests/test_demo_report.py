"""The demo report's pure parts: the verdict rule (hand-worked), the ``attention`` schema, the claims table
computed from a hand-made results dict, and the report/plots written from it (no training)."""

from __future__ import annotations

import json
import math

import pytest

from clipvip.demo.report import (NOT_SUPPORTED, SUPPORTED, WITHIN_NOISE, ResultsSchemaError, evaluate_claims,
                                 render_report, seed_noise, validate_attention, verdict, write_json,
                                 write_outputs)


def test_verdict_rule_hand_worked():
    # [10, 12, 14]: mean 12, sd 2, se 2/sqrt(3) = 1.155, interval 12 ± 2.31 above 0, all positive.
    r = verdict([10, 12, 14])
    assert r["verdict"] == SUPPORTED and r["se"] == pytest.approx(2 / math.sqrt(3))
    assert r["low"] == pytest.approx(12 - 4 / math.sqrt(3))
    # [5, -1]: mean 2, sd 4.243, se 3: interval [-4, 8] straddles both 0 and 1 point.
    assert verdict([5, -1])["verdict"] == WITHIN_NOISE
    # [-5, -6, -7]: mean -6, se 0.577: interval entirely below 1 point.
    assert verdict([-5, -6, -7])["verdict"] == NOT_SUPPORTED
    # No difference at all, measured precisely: not supported (the claim predicts a difference).
    assert verdict([0.0, 0.0])["verdict"] == NOT_SUPPORTED
    # Identical positive effects: se 0, supported.
    assert verdict([3.0, 3.0])["verdict"] == SUPPORTED
    # A positive mean with one negative seed is never "supported".
    assert verdict([20.0, 21.0, -0.5, 22.0])["verdict"] == WITHIN_NOISE
    # One seed: without a noise estimate nothing can be said; with one, the same interval rule.
    assert verdict([3.0])["verdict"] == WITHIN_NOISE
    assert verdict([3.0], effect_sd=1.0)["verdict"] == SUPPORTED  # 3 - 2 > 0
    assert verdict([1.5], effect_sd=1.0)["verdict"] == WITHIN_NOISE  # [-0.5, 3.5]
    assert verdict([0.5], effect_sd=0.1)["verdict"] == NOT_SUPPORTED  # [0.3, 0.7] < 1 point
    assert verdict([0.02], effect_sd=0.005, min_effect=0.0)["verdict"] == SUPPORTED
    assert verdict([])["verdict"] == WITHIN_NOISE


def _attention(seeds=(0, 1, 2)):
    return {
        "seeds": list(seeds),
        "selection": "last step",
        "modes": {
            "frame": {"t2v_R1": [20.0, 22.0, 21.0], "v2t_R1": [19.0, 20.0, 21.0], "order_acc": [50.0, 50.0, 50.0],
                      "pair_R1": [40.0, 42.0, 41.0]},
            "full": {"t2v_R1": [21.0, 23.0, 19.0], "v2t_R1": [20.0, 20.0, 20.0], "order_acc": [55.0, 49.0, 52.0],
                     "pair_R1": [40.0, 41.0, 39.0]},
            "proxy": {"t2v_R1": [30.0, 33.0, 31.0], "v2t_R1": [29.0, 30.0, 31.0], "order_acc": [75.0, 78.0, 80.0],
                      "pair_R1": [41.0, 43.0, 42.0]},
        },
    }


def test_validate_attention_accepts_the_schema_and_names_problems():
    assert validate_attention(_attention())["seeds"] == [0, 1, 2]
    bad = _attention()
    bad["modes"]["proxy"]["order_acc"] = [75.0, 78.0]
    with pytest.raises(ResultsSchemaError, match="modes.proxy.order_acc has 2 values for 3 seeds"):
        validate_attention(bad)
    bad = _attention()
    del bad["modes"]["full"]["pair_R1"]
    with pytest.raises(ResultsSchemaError, match="modes.full.pair_R1 is missing"):
        validate_attention(bad)
    bad = _attention()
    bad["modes"]["mean"] = bad["modes"]["frame"]
    with pytest.raises(ResultsSchemaError, match="unknown mode 'mean'"):
        validate_attention(bad)
    for value in (float("nan"), 101.0, True, "50"):
        bad = _attention()
        bad["modes"]["frame"]["t2v_R1"][1] = value
        with pytest.raises(ResultsSchemaError, match="percentages"):
            validate_attention(bad)
    with pytest.raises(ResultsSchemaError, match="duplicates"):
        validate_attention(_attention(seeds=(0, 0, 1)))
    with pytest.raises(ResultsSchemaError, match="seeds"):
        validate_attention({"seeds": [], "modes": {}})
    # The optional tie-fair R@1 is checked when present, like the required metrics.
    ok = _attention()
    for mode in ok["modes"].values():
        mode["t2v_R1_fair"] = [x + 1 for x in mode["t2v_R1"]]
    validate_attention(ok)
    ok["modes"]["full"]["t2v_R1_fair"] = [1.0]
    with pytest.raises(ResultsSchemaError, match="modes.full.t2v_R1_fair has 1 values"):
        validate_attention(ok)
    # Survives a JSON round trip unchanged (the stable results.json section).
    assert validate_attention(json.loads(json.dumps(_attention()))) == _attention()


def _metrics(r1: float, dsl: float | None = None) -> dict:
    row = {"R1": r1, "R5": r1 + 20, "R10": r1 + 30, "MdR": 5.0, "MnR": 9.0}
    dslrow = dict(row, R1=dsl if dsl is not None else r1)
    return {"t2v": row, "v2t": dict(row), "t2v_dsl": dslrow, "v2t_dsl": dict(row)}


def _results() -> dict:
    ocl = {v: {"zero_shot_test": _metrics(5.0), "finetuned_test": _metrics(r)}
           for v, r in (("a", 15.0), ("b", 16.0), ("c", 17.5), ("d", 25.0))}
    return {
        "demo": {"preset": "quick", "seed": 0, "date": "2026-12-02", "settings": {"num_frames": 8, "image_size": 32},
                 "machine": {"platform": "linux", "cpus": 2, "torch": "2.13.0", "torch_threads": 1},
                 "selection": "last step"},
        "world": {"test_videos": 96, "test_captions": 192},
        "chance_R1": 1.04,
        "attention": _attention(),
        "attention_ablation": {m: {"test": _metrics(r[0]), "curve": [(0, 1.0), (40, r[0])],
                                   "seeds": {str(s): {"curve": [(0, 1.0 + s), (40, r[k])]} for k, s in enumerate((0, 1, 2))}}
                               for m, r in ((m, _attention()["modes"][m]["t2v_R1"]) for m in ("frame", "full", "proxy"))},
        "main": {"rows": {"stage 0 image-text CLIP, zero-shot": _metrics(3.0, 3.0),
                          "stage 1 CLIP-ViP post-pretrained (OCL d), zero-shot": _metrics(3.5, 8.0),
                          "stage 2 CLIP-ViP fine-tuned": _metrics(30.0)},
                 "final": _metrics(30.0)},
        "ocl_ablation": {v: r for v, r in ocl.items()},
        "aux_caption_ablation": {"without auxiliary captions (vs)": {"zero_shot_test": _metrics(5.0),
                                                                     "finetuned_test": _metrics(10.0)},
                                 "with auxiliary captions (d)": ocl["d"]},
        "domain_gap": {"stage 0 image-text model": {
            "names": ["subtitles", "auxiliary captions", "downstream captions"],
            "matrix": [[0.002, 0.13, 0.026], [0.13, 0.004, 0.033], [0.026, 0.033, 0.001]],
            "pairs": {"subtitles | auxiliary captions": 0.13, "subtitles | downstream captions": 0.026,
                      "auxiliary captions | downstream captions": 0.033}, "texts_per_corpus": 100}},
        "timings": {"stages_s": {"world": 1.0}, "total_s": 100.0, "cpu_s": 90.0},
    }


def test_claims_from_hand_made_results():
    results = _results()
    claims = {c["id"]: c for c in evaluate_claims(results)}
    assert set(claims) == {"proxy_vs_frame", "proxy_vs_full", "proxy_order", "ocl_d_best", "aux_captions",
                           "nmi_gap", "post_pretraining"}
    # proxy - frame per seed: 10, 11, 10 -> mean 10.33, se 0.33: supported.
    assert claims["proxy_vs_frame"]["verdict"] == SUPPORTED
    assert claims["proxy_vs_frame"]["effect"]["mean"] == pytest.approx(31 / 3)
    assert "30.0" in claims["proxy_vs_frame"]["numbers"] and "(20.0, 22.0, 21.0)" in claims["proxy_vs_frame"]["numbers"]
    assert claims["proxy_order"]["verdict"] == SUPPORTED  # 25, 28, 30 above 50
    # Run-to-run noise: per-mode variances of t2v R@1 are 1, 4, 7/3 -> pooled sd sqrt(22/9) = 1.563.
    noise = seed_noise(results["attention"])
    assert noise == pytest.approx(math.sqrt((1 + 4 + 7 / 3) / 3))
    # OCL: d 25 vs closest c 17.5: effect 7.5, se sqrt(2) * 1.563 = 2.21, 7.5 - 4.42 > 0 -> supported.
    assert claims["ocl_d_best"]["verdict"] == SUPPORTED
    assert claims["ocl_d_best"]["effect"]["mean"] == pytest.approx(7.5)
    assert claims["aux_captions"]["verdict"] == SUPPORTED  # 25 vs 10
    # Zero-shot 3.5 vs 3.0: 0.5 ± 4.4: within noise.
    assert claims["post_pretraining"]["verdict"] == WITHIN_NOISE
    # NMI: subtitles 0.026 vs captions 0.033 -> effect -0.007, floor 0.004: [-0.015, 0.001] -> within noise.
    assert claims["nmi_gap"]["verdict"] == WITHIN_NOISE
    results["domain_gap"]["stage 0 image-text model"]["pairs"]["subtitles | downstream captions"] = 0.2
    assert {c["id"]: c for c in evaluate_claims(results)}["nmi_gap"]["verdict"] == SUPPORTED
    # b beats d clearly -> "d is best" is not supported.
    results["ocl_ablation"]["b"]["finetuned_test"] = _metrics(40.0)
    assert {c["id"]: c for c in evaluate_claims(results)}["ocl_d_best"]["verdict"] == NOT_SUPPORTED
    # With the tie-fair R@1 present, the claim is also judged on it (proxy - frame = 1, 5, 2: mean 2.67,
    # sd 2.08, se 1.20, interval [0.26, 5.07] above 0, every seed positive, m >= 1 -> supported).
    att = _attention()
    att["modes"]["proxy"]["t2v_R1_fair"] = [22.0, 27.0, 23.0]
    att["modes"]["frame"]["t2v_R1_fair"] = [21.0, 22.0, 21.0]
    fair = {c["id"]: c for c in evaluate_claims({"attention": att})}["proxy_vs_frame_fair"]
    assert fair["verdict"] == SUPPORTED and fair["effect"]["mean"] == pytest.approx(8 / 3)
    att["modes"]["proxy"]["t2v_R1_fair"] = [21.0, 27.0, 21.0]  # 0, 5, 0: a seed without gain
    assert {c["id"]: c for c in evaluate_claims({"attention": att})}["proxy_vs_frame_fair"]["verdict"] == WITHIN_NOISE
    # Missing sections are listed, not guessed.
    sparse = {c["id"]: c for c in evaluate_claims({"attention": _attention()})}
    assert sparse["ocl_d_best"]["verdict"] == "not measured"


def test_report_opens_with_claims_and_writes_plots(tmp_path):
    results = _results()
    files = write_outputs(tmp_path, results, world=None, echo=lambda m: None)
    assert "warnings" not in results, results.get("warnings")
    report = (tmp_path / "report.md").read_text()
    claims_at = report.index("## The paper's claims")
    assert claims_at < report.index("## Ablation: attention over seeds") < report.index("## Main results")
    assert "| proxy attention > frame mean pooling on t→v R@1 |" in report and "**supported**" in report
    assert "Verdict rule" in report
    assert "| proxy | 31.3 ± 1.5 (30.0, 33.0, 31.0) |" in report
    # frame's order accuracy is exactly 50 in every seed: the report says what ties cost its R@1
    # (pair R@1 40, 42, 41 -> half: 20.0, 21.0, 20.5).
    assert "half its pair R@1: 20.5 ± 0.5 (20.0, 21.0, 20.5)" in report
    for name in ("curves", "nmi_stage0"):
        assert (tmp_path / "plots").joinpath(files[name].rsplit("/", 1)[-1]).is_file()
    write_json(tmp_path / "results.json", results)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in doc["claims"]][:2] == ["proxy_vs_frame", "proxy_vs_full"]
    plotted = {k: v for k, v in files.items() if k not in ("report", "results")}  # what the report listed
    assert render_report(doc, plotted, tmp_path) == report  # the report is a function of results.json


def test_a_malformed_attention_section_is_reported_not_fatal(tmp_path):
    """A run's other tables survive a bad attention section: the report and warnings say what is wrong."""
    results = _results()
    del results["attention"]["modes"]["proxy"]["pair_R1"]
    write_outputs(tmp_path, results, world=None, echo=lambda m: None)
    assert results["claims"] == [] and any("modes.proxy.pair_R1 is missing" in w for w in results["warnings"])
    report = (tmp_path / "report.md").read_text()
    assert "No claims computed" in report and "## Main results" in report and "modes.proxy.pair_R1" in report
