"""The demo's outputs: ``results.json`` (every table as data), ``report.md`` (the same tables in markdown,
opening with a table of the paper's claims and the verdict our numbers give on each) and the plots.

**The ``attention`` section of ``results.json``** (stable; :func:`validate_attention` checks it)::

    {"seeds": [0, 1, 2],
     "modes": {"frame": {"t2v_R1": [...], "v2t_R1": [...], "order_acc": [...], "pair_R1": [...]},
               "full":  {...}, "proxy": {...}},
     ...}                                   # other keys (e.g. "selection") are allowed

Every list has one number per seed, in the order of ``seeds``, in percent: test text->video and
video->text R@1, twin-pair order accuracy (:func:`clipvip.analysis.order.order_accuracy`, 50 = blind to
order) and order-blind pair R@1 (:func:`clipvip.analysis.order.pair_recall_at_1`). Optional, checked when
present: ``t2v_R1_fair`` (:func:`clipvip.analysis.order.fair_recall_at_1`: R@1 with ties at the top
counted ``1/k``; plain R@1 counts the float-exact ties an order-blind model makes between twins as
misses, which flatters any order-aware model it is compared with).

**Verdicts** (:func:`verdict`). A claim is turned into an *effect*, one number per seed, positive when the
claim holds (e.g. proxy R@1 minus frame R@1 of the same seed; proxy order accuracy minus 50). With ``n``
seeds, ``m`` the mean effect and ``se`` its standard error (sample std / sqrt(n); for a claim measured on
one seed, ``se`` is the run-to-run noise estimated from the attention ablation's seeds, see
:func:`seed_noise`), the interval is ``m ± 2·se`` and

* **supported**: the interval is above 0, ``m >= min_effect`` and every seed's effect is positive;
* **not supported**: the interval is below ``min_effect`` (the effect is negative or too small to matter);
* **within noise**: anything else (including a one-seed claim when no noise estimate exists).

``min_effect`` is 1 percentage point for R@K and order accuracy (about two test captions on the full
preset). For the NMI claim the noise scale is the noise floor of the NMI matrix (its largest diagonal
entry: a corpus against a random half of itself) and ``min_effect`` is 0.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from clipvip.atomic import atomic_write_text

#: Tables that ``results.json`` always holds (the test suite checks them).
TABLES = ("main", "attention_ablation", "ocl_ablation", "aux_caption_ablation", "domain_gap", "timings", "search")

ATTENTION_MODES = ("frame", "full", "proxy")
ATTENTION_METRICS = ("t2v_R1", "v2t_R1", "order_acc", "pair_R1")
OPTIONAL_ATTENTION_METRICS = ("t2v_R1_fair",)
SUPPORTED, NOT_SUPPORTED, WITHIN_NOISE = "supported", "not supported", "within noise"
MIN_EFFECT = 1.0
"""Smallest effect (percentage points of R@K or order accuracy) the report calls a real difference."""
Z = 2.0
"""Half-width of the interval in standard errors (about 95 % for a normal effect)."""


# ------------------------------------------------------------------------------------------- results.json
def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (:mod:`clipvip.atomic`)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class ResultsSchemaError(ValueError):
    """A results section does not follow its documented schema (the message says where)."""


def validate_attention(section: Any) -> dict[str, Any]:
    """Check the ``attention`` section (schema in the module doc) and return it; raise
    :class:`ResultsSchemaError` naming the first problem. Modes may be any non-empty subset of
    :data:`ATTENTION_MODES`; every metric list must have one finite percentage per seed."""
    def fail(msg: str) -> None:
        raise ResultsSchemaError(f"results.json attention: {msg}")

    if not isinstance(section, Mapping):
        fail(f"must be an object, got {type(section).__name__}")
    seeds = section.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        fail("'seeds' must be a non-empty list")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        fail(f"'seeds' must hold integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        fail(f"'seeds' has duplicates: {seeds!r}")
    modes = section.get("modes")
    if not isinstance(modes, Mapping) or not modes:
        fail("'modes' must be a non-empty object")
    for mode, table in modes.items():
        if mode not in ATTENTION_MODES:
            fail(f"unknown mode {mode!r} (expected one of {', '.join(ATTENTION_MODES)})")
        if not isinstance(table, Mapping):
            fail(f"modes.{mode} must be an object")
        for metric in ATTENTION_METRICS + OPTIONAL_ATTENTION_METRICS:
            values = table.get(metric)
            if metric in OPTIONAL_ATTENTION_METRICS and values is None:
                continue
            if not isinstance(values, list):
                fail(f"modes.{mode}.{metric} is missing or not a list")
            if len(values) != len(seeds):
                fail(f"modes.{mode}.{metric} has {len(values)} values for {len(seeds)} seeds")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
                    fail(f"modes.{mode}.{metric} holds {v!r}; expected percentages in [0, 100]")
    return dict(section)


# ---------------------------------------------------------------------------------------------- verdicts
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def fmt_mean_std(values: Sequence[float], digits: int = 1, per_seed: bool = True) -> str:
    """``"35.2 ± 3.1 (33.1, 37.4, 35.0)"``; a single value prints alone."""
    vals = [float(v) for v in values]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    m, s = mean_std(vals)
    seeds = " (" + ", ".join(f"{v:.{digits}f}" for v in vals) + ")" if per_seed else ""
    return f"{m:.{digits}f} ± {s:.{digits}f}{seeds}"


def verdict(effects: Sequence[float], *, effect_sd: float | None = None, min_effect: float = MIN_EFFECT,
            z: float = Z) -> dict[str, Any]:
    """The verdict on a claim from its per-seed effects (positive = the claim holds), see the module doc.

    ``effect_sd`` is the standard deviation of a single seed's effect, used when there is one seed (with
    several seeds their own spread is used). Returns ``{"verdict", "mean", "se", "low", "high", "n",
    "min_effect"}``.
    """
    vals = [float(v) for v in effects]
    n = len(vals)
    if n == 0:
        return {"verdict": WITHIN_NOISE, "mean": math.nan, "se": math.nan, "low": math.nan, "high": math.nan,
                "n": 0, "min_effect": min_effect}
    m = statistics.fmean(vals)
    if n > 1:
        se = statistics.stdev(vals) / math.sqrt(n)
    elif effect_sd is not None and math.isfinite(effect_sd):
        se = float(effect_sd)
    else:
        se = math.inf
    low, high = m - z * se, m + z * se
    if low > 0 and m >= min_effect and all(v > 0 for v in vals):
        v = SUPPORTED
    elif high < min_effect:
        v = NOT_SUPPORTED
    else:
        v = WITHIN_NOISE
    return {"verdict": v, "mean": m, "se": se, "low": low, "high": high, "n": n, "min_effect": min_effect}


def seed_noise(attention: Mapping[str, Any] | None, metric: str = "t2v_R1") -> float | None:
    """Run-to-run standard deviation of one run's ``metric``, pooled over the attention modes' seeds
    (root mean of the per-mode sample variances); None with fewer than two seeds."""
    if not attention or len(attention.get("seeds", [])) < 2:
        return None
    variances = [statistics.variance(t[metric]) for t in attention["modes"].values() if len(t.get(metric, [])) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else None


def _r1(m: Mapping[str, Any], key: str = "t2v") -> float:
    return float(m[key]["R1"])


def _find(mapping: Mapping[str, Any], *words: str) -> Any:
    """The first value whose key contains every word (case-insensitive), else None."""
    for key, value in mapping.items():
        if all(w.lower() in key.lower() for w in words):
            return value
    return None


def _claim(cid: str, claim: str, paper: str, numbers: str, result: dict[str, Any], basis: str) -> dict[str, Any]:
    return {"id": cid, "claim": claim, "paper": paper, "numbers": numbers, "verdict": result["verdict"],
            "effect": {k: result[k] for k in ("mean", "se", "low", "high", "n", "min_effect")}, "basis": basis}


def evaluate_claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, our numbers and a verdict for each (the rule is in the module doc).

    Reads the ``attention`` section (validated), ``ocl_ablation``, ``aux_caption_ablation``,
    ``domain_gap`` and ``main.rows``; a claim whose numbers are missing is listed as "not measured".
    """
    out: list[dict[str, Any]] = []
    att = results.get("attention")
    if att is not None:
        att = validate_attention(att)
    noise = seed_noise(att)
    diff_sd = math.sqrt(2.0) * noise if noise is not None else None  # two independent runs
    one_seed = (f"one seed; noise = √2 × {noise:.2f} (run-to-run sd of t→v R@1 over the attention seeds)"
                if noise is not None else "one seed; no seed spread measured")

    def missing(cid: str, claim: str, paper: str) -> None:
        out.append({"id": cid, "claim": claim, "paper": paper, "numbers": "not measured", "verdict": "not measured",
                    "effect": None, "basis": ""})

    modes = (att or {}).get("modes", {})
    for other, label in (("frame", "frame mean pooling"), ("full", "full joint attention")):
        cid, claim = f"proxy_vs_{other}", f"proxy attention > {label} on t→v R@1"
        paper = ("proxy-guided attention is the best way to add temporal modelling to CLIP (attention ablation)"
                 if other == "full" else "modelling time beats per-frame CLIP with mean pooling (CLIP4Clip baseline)")
        if "proxy" in modes and other in modes:
            p, o = modes["proxy"]["t2v_R1"], modes[other]["t2v_R1"]
            effects = [a - b for a, b in zip(p, o)]
            res = verdict(effects)
            out.append(_claim(cid, claim, paper,
                              f"proxy {fmt_mean_std(p)} vs {other} {fmt_mean_std(o)}; per-seed difference "
                              f"{fmt_mean_std(effects, per_seed=False)}", res,
                              f"{len(effects)} seeds, paired by seed"))
        else:
            missing(cid, claim, paper)
    if "proxy" in modes and "frame" in modes and "t2v_R1_fair" in modes["proxy"] and "t2v_R1_fair" in modes["frame"]:
        p, o = modes["proxy"]["t2v_R1_fair"], modes["frame"]["t2v_R1_fair"]
        effects = [a - b for a, b in zip(p, o)]
        out.append(_claim("proxy_vs_frame_fair", "proxy attention > frame mean pooling on t→v R@1, ties at the top "
                          "counted 1/k", "as above; this row removes the advantage pessimistic ties give an "
                          "order-aware model over an order-blind one",
                          f"proxy {fmt_mean_std(p)} vs frame {fmt_mean_std(o)}; per-seed difference "
                          f"{fmt_mean_std(effects, per_seed=False)}", verdict(effects),
                          f"{len(effects)} seeds, paired by seed"))
    if "proxy" in modes:
        acc = modes["proxy"]["order_acc"]
        res = verdict([a - 50.0 for a in acc])
        extra = f"; frame {fmt_mean_std(modes['frame']['order_acc'])}" if "frame" in modes else ""
        out.append(_claim("proxy_order", "proxy attention sees temporal order: twin-pair order accuracy > 50",
                          "the video proxies and temporal embedding model temporal information",
                          f"proxy {fmt_mean_std(acc)}{extra} (50 = blind to order)", res,
                          f"{len(acc)} seeds, against 50"))
    else:
        missing("proxy_order", "proxy attention sees temporal order: order accuracy > 50", "")

    ocl = results.get("ocl_ablation") or {}
    paper_ocl = "OCL variant (d) L(V↔S,C)+L(F↔C) is the best of the four (Fig. 2 variants)"
    try:
        ft = {v: _r1(r["finetuned_test"]) for v, r in ocl.items()}
    except (KeyError, TypeError):
        ft = {}
    if "d" in ft and len(ft) > 1:
        parts = [verdict([ft["d"] - x], effect_sd=diff_sd) for v, x in ft.items() if v != "d"]
        names = [v for v in ft if v != "d"]
        if all(p["verdict"] == SUPPORTED for p in parts):
            combined = SUPPORTED
        elif any(p["verdict"] == NOT_SUPPORTED for p in parts):
            combined = NOT_SUPPORTED
        else:
            combined = WITHIN_NOISE
        closest = min(range(len(parts)), key=lambda i: parts[i]["mean"])
        res = {**parts[closest], "verdict": combined}
        ranking = " > ".join(f"{v} {x:.1f}" for v, x in sorted(ft.items(), key=lambda kv: -kv[1]))
        out.append(_claim("ocl_d_best", "OCL variant d is the best variant (fine-tuned t→v R@1)", paper_ocl,
                          f"ranking {ranking}; d minus the closest other ({names[closest]}) "
                          f"{parts[closest]['mean']:+.1f}", res,
                          one_seed + "; supported only if d beats each other variant"))
    else:
        missing("ocl_d_best", "OCL variant d is the best variant", paper_ocl)

    aux = results.get("aux_caption_ablation") or {}
    without, with_ = _find(aux, "without"), next((v for k, v in aux.items() if "without" not in k.lower()), None)
    paper_aux = "adding auxiliary captions (OFA captions of a frame) to post-pretraining improves retrieval"
    if without and with_:
        a, b = _r1(with_["finetuned_test"]), _r1(without["finetuned_test"])
        res = verdict([a - b], effect_sd=diff_sd)
        za, zb = _r1(with_["zero_shot_test"]), _r1(without["zero_shot_test"])
        out.append(_claim("aux_captions", "auxiliary captions help (fine-tuned t→v R@1)", paper_aux,
                          f"with {a:.1f} vs without {b:.1f} (zero-shot {za:.1f} vs {zb:.1f})", res, one_seed))
    else:
        missing("aux_captions", "auxiliary captions help", paper_aux)

    gap = results.get("domain_gap") or {}
    entry = _find(gap, "stage 0") or (next(iter(gap.values())) if gap else None)
    paper_nmi = ("auxiliary captions are closer to downstream captions than subtitles are "
                 "(smaller NMI between clusters and corpora)")
    if entry:
        sub = _find(entry["pairs"], "subtitles", "downstream")
        cap = _find(entry["pairs"], "auxiliary", "downstream")
        diag = [r[i] for i, r in enumerate(entry["matrix"]) if r[i] is not None]
        floor = max(diag) if diag else None
        if sub is not None and cap is not None:
            res = verdict([sub - cap], effect_sd=floor, min_effect=0.0)
            final = _find(gap, "final")
            fsub = _find(final["pairs"], "subtitles", "downstream") if final else None
            fcap = _find(final["pairs"], "auxiliary", "downstream") if final else None
            tail = f"; final model {fcap:.3f} vs {fsub:.3f}" if fsub is not None and fcap is not None else ""
            out.append(_claim("nmi_gap", "auxiliary captions are closer to the downstream language than subtitles",
                              paper_nmi, f"NMI captions↔downstream {cap:.3f} vs subtitles↔downstream {sub:.3f} "
                              f"(stage-0 text encoder; noise floor {floor if floor is not None else math.nan:.3f})"
                              + tail, res, "one seed; noise = the matrix's largest diagonal (noise floor)"))
        else:
            missing("nmi_gap", "auxiliary captions are closer to the downstream language", paper_nmi)
    else:
        missing("nmi_gap", "auxiliary captions are closer to the downstream language", paper_nmi)

    rows = (results.get("main") or {}).get("rows") or {}
    s0, s1 = _find(rows, "stage 0"), _find(rows, "stage 1")
    paper_pp = "post-pretraining on video-text data improves on the image-text CLIP it starts from (zero-shot)"
    if s0 and s1:
        a, b = _r1(s1), _r1(s0)
        res = verdict([a - b], effect_sd=diff_sd)
        out.append(_claim("post_pretraining", "post-pretrained CLIP-ViP > image CLIP, zero-shot t→v R@1", paper_pp,
                          f"post-pretrained {a:.1f} vs image-text CLIP {b:.1f} (DSL {_r1(s1, 't2v_dsl'):.1f} vs "
                          f"{_r1(s0, 't2v_dsl'):.1f})" if "t2v_dsl" in s1 and "t2v_dsl" in s0 else
                          f"post-pretrained {a:.1f} vs image-text CLIP {b:.1f}", res, one_seed))
    else:
        missing("post_pretraining", "post-pretrained CLIP-ViP > image CLIP, zero-shot", paper_pp)
    return out


def claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The claims as a markdown table: claim, the paper's statement, our numbers, verdict."""
    lines = ["| claim | the paper | our numbers | verdict |", "|---|---|---|---|"]
    for c in claims:
        mark = {SUPPORTED: "**supported**", NOT_SUPPORTED: "**not supported**"}.get(c["verdict"], c["verdict"])
        basis = f" ({c['basis']})" if c.get("basis") else ""
        lines.append(f"| {c['claim']} | {c['paper']} | {c['numbers']}{basis} | {mark} |")
    return "\n".join(lines)


VERDICT_RULE = (
    "Verdict rule: each claim is an effect per seed (positive = the claim holds); with mean m and standard "
    f"error se (seed spread / √n, or for one-seed claims the run-to-run noise of the attention seeds), "
    f"**supported** = m − {Z:g}·se > 0, m ≥ {MIN_EFFECT:g} point and every seed positive; **not supported** = "
    f"m + {Z:g}·se < {MIN_EFFECT:g} point; otherwise **within noise** (for NMI the noise is the matrix's "
    "noise floor and the minimum effect 0).")


def _tie_note(att: Mapping[str, Any] | None) -> str:
    """A sentence on what pessimistic ties do to frame mean pooling's R@1, with the numbers, when the
    attention section shows frame's order accuracy at exactly 50 (every twin comparison a tie)."""
    modes = (att or {}).get("modes") or {}
    frame = modes.get("frame")
    if not frame or not all(abs(a - 50.0) < 1e-9 for a in frame["order_acc"]):
        return ""
    half = [p / 2 for p in frame["pair_R1"]]
    fair = f" (measured with ties counted 1/k: {fmt_mean_std(frame['t2v_R1_fair'])})" if "t2v_R1_fair" in frame else ""
    return ("Note on t→v R@1: R@K counts ties pessimistically, and frame mean pooling scores a clip and its "
            "time-reversed twin the same (its order accuracy is exactly 50 in every seed), so whenever the pair "
            "is ranked first its R@1 is decided by float rounding or counted as a miss. With ties broken at "
            f"random it would score half its pair R@1: {fmt_mean_std(half)}{fair}, against "
            f"{fmt_mean_std(frame['t2v_R1'])} as counted. Read the proxy-vs-frame rows with that in mind.")


def attention_table(section: Mapping[str, Any]) -> str:
    """Mean ± std and per-seed values of each metric of the ``attention`` section, one row per mode."""
    section = validate_attention(section)
    labels = {"t2v_R1": "t→v R@1", "v2t_R1": "v→t R@1", "order_acc": "order accuracy", "pair_R1": "pair R@1",
              "t2v_R1_fair": "t→v R@1, ties 1/k"}
    metrics = list(ATTENTION_METRICS) + [m for m in OPTIONAL_ATTENTION_METRICS
                                         if all(m in t for t in section["modes"].values())]
    lines = ["| attention | " + " | ".join(labels[m] for m in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for mode, table in section["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(fmt_mean_std(table[m]) for m in metrics) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- markdown
V2T_DSL_NOTE = ("DSL re-scores each video's column by a softmax over texts, which keeps the column's order, so "
                "video→text with DSL equals video→text and is not shown.")


def metrics_table(rows: dict[str, dict[str, dict[str, float]]], directions: tuple[str, ...] = (
        "t2v", "v2t", "t2v_dsl")) -> str:
    """One row per model: R@1/R@5/MdR for each direction, then a line saying why there is no v→t DSL column
    (it always equals v→t: :data:`V2T_DSL_NOTE`)."""
    labels = {"t2v": "t→v", "v2t": "v→t", "t2v_dsl": "t→v DSL", "v2t_dsl": "v→t DSL"}
    head = "| model | " + " | ".join(f"{labels[d]} R@1 | {labels[d]} R@5 | {labels[d]} MdR" for d in directions) + " |"
    sep = "|---|" + "---:|" * (3 * len(directions))
    lines = [head, sep]
    for name, m in rows.items():
        cells = []
        for d in directions:
            x = m.get(d)
            cells += [f"{x['R1']:.1f}", f"{x['R5']:.1f}", f"{x['MdR']:.1f}"] if x else ["–"] * 3
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "v2t_dsl" not in directions:
        lines += ["", V2T_DSL_NOTE]
    return "\n".join(lines)


def _seed_curves(results: Mapping[str, Any]) -> dict[str, dict[str, list]]:
    """``{mode: {seed: curve}}`` from ``attention_ablation`` (per-seed runs), else ``{}``."""
    curves: dict[str, dict[str, list]] = {}
    for mode, entry in (results.get("attention_ablation") or {}).items():
        per_seed = entry.get("seeds") if isinstance(entry, Mapping) else None
        if per_seed:
            runs = {str(s): r.get("curve") for s, r in per_seed.items() if r.get("curve")}
            if runs:
                curves[mode] = runs
    return curves


def _twin_note(world: Any, expected: str | None) -> dict[str, str]:
    """``{twin file name: "twin of expected (time-reversed)"}`` from the world's test records, if known."""
    recs = (getattr(world, "split_records", None) or {}).get("test") or []
    by_id = {str(r.get("id")): r for r in recs}
    for rec in recs:
        if expected and Path(str(rec.get("video", ""))).name == Path(str(expected)).name and rec.get("twin") in by_id:
            return {Path(str(by_id[rec["twin"]]["video"])).name: "twin of expected (time-reversed)"}
    return {}


def write_outputs(out: Path, results: dict[str, Any], world: Any, echo: Callable[[str], None]) -> dict[str, str]:
    """Claims (``results["claims"]``), plots and ``report.md``; returns ``{name: path}`` of what was written.

    A failing plot is reported as a warning (``results["warnings"]``) rather than losing the run.
    """
    files: dict[str, str] = {}
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    try:
        results["claims"] = evaluate_claims(results)
    except ResultsSchemaError as exc:  # report what is wrong instead of losing the run's other tables
        echo(f"   warning: claims not computed ({exc})")
        results.setdefault("warnings", []).append(f"claims: {exc}")
        results["claims"] = []
    try:
        from clipvip.analysis.plots import plot_curves, plot_nmi_heatmap, plot_seed_curves, retrieval_sheet

        seed_curves = _seed_curves(results)
        if seed_curves:
            files["curves"] = str(plot_seed_curves(seed_curves, plots / "val_r1.png", metric="val text→video R@1",
                                                   xlabel="fine-tuning steps",
                                                   title="Validation R@1 during fine-tuning, per attention mode"))
        else:
            curves = {k: v for k, v in (results.get("main") or {}).get("curves", {}).items() if v}
            if curves:
                files["curves"] = str(plot_curves(curves, plots / "val_r1.png", metric="val text→video R@1",
                                                  xlabel="fine-tuning steps",
                                                  title="Validation R@1 during fine-tuning"))
        for name, entry in (results.get("domain_gap") or {}).items():
            slug = "stage0" if name.startswith("stage 0") else "final"
            files[f"nmi_{slug}"] = str(plot_nmi_heatmap(entry["names"], [[math.nan if v is None else v for v in r]
                                                                         for r in entry["matrix"]],
                                                        plots / f"nmi_{slug}.png",
                                                        title=f"NMI domain gap ({name})"))
        search = results.get("search") or {}
        queries = search.get("queries") or []
        if queries and queries[0]["results"]:
            q = queries[0]
            root = Path(search["index_dir"]).parent / "test_videos"
            num_frames = int(((results.get("demo") or {}).get("settings") or {}).get("num_frames", 8))
            files["retrieval_sheet"] = str(retrieval_sheet(
                q["query"], [(str(root / r["path"]), r["score"]) for r in q["results"]],
                plots / "retrieval_sheet.png", tile=64, num_frames=num_frames, expected=q.get("expected"),
                notes=_twin_note(world, q.get("expected"))))
    except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the results of a 10-minute run
        echo(f"   warning: plots incomplete ({type(exc).__name__}: {exc})")
        results.setdefault("warnings", []).append(f"plots: {type(exc).__name__}: {exc}")
    report = render_report(results, files, out)
    atomic_write_text(out / "report.md", report)
    files["report"] = str(out / "report.md")
    files["results"] = str(out / "results.json")
    return files


def _compare(a_name: str, a: float, b_name: str, b: float, what: str) -> str:
    if math.isclose(a, b, abs_tol=0.05):
        return f"{a_name} and {b_name} tie on {what} ({a:.1f})."
    if a > b:
        return f"{a_name} beats {b_name} on {what} ({a:.1f} vs {b:.1f})."
    return f"{a_name} does **not** beat {b_name} on {what} ({a:.1f} vs {b:.1f})."


def render_report(results: Mapping[str, Any], files: Mapping[str, str], out: Path) -> str:
    """``report.md``: setup, the claims table with verdicts, then every table with a sentence per comparison."""
    demo = results.get("demo") or {}
    s = demo.get("settings") or {}
    machine = demo.get("machine") or {}
    timings = results.get("timings") or {}
    chance = results.get("chance_R1", math.nan)
    try:
        claims = results["claims"] if "claims" in results else evaluate_claims(results)
        att_md = attention_table(results["attention"]) if results.get("attention") else ""
    except ResultsSchemaError as exc:
        claims, att_md = [], f"(not shown: {exc})"
    lines = [
        "# clipvip demo report",
        "",
        f"Preset **{demo.get('preset', '?')}**, seed {demo.get('seed', '?')}, {demo.get('date', '?')}, "
        f"{machine.get('platform', '?')}, {machine.get('cpus', '?')} CPUs, torch {machine.get('torch', '?')} "
        f"({machine.get('torch_threads', '?')} threads, {machine.get('jobs', 1)} worker process"
        f"{'es' if machine.get('jobs', 1) != 1 else ''} for the training runs). Total time "
        f"**{timings.get('total_s', math.nan):.0f} s** wall, {timings.get('cpu_s', math.nan):.0f} s CPU of the "
        "demo and its workers (wall time on a shared machine mostly measures the neighbours).",
        "",
    ]
    if results.get("world"):
        lines += ["World: " + ", ".join(f"{k} {v}" for k, v in results["world"].items() if k != "root") +
                  f". Frames {s.get('num_frames', '?')} × {s.get('image_size', '?')}×{s.get('image_size', '?')}; "
                  f"chance R@1 on test = {chance:.1f}.", ""]
    if demo.get("selection") or (results.get("attention") or {}).get("selection"):
        lines += [f"Model selection: {demo.get('selection') or results['attention']['selection']}.", ""]
    lines += ["## The paper's claims on this world", "",
              claims_table(claims) if claims else "No claims computed (see Warnings).", "", VERDICT_RULE, ""]
    tie_note = _tie_note(results.get("attention")) if claims else ""
    if tie_note:
        lines += [tie_note, ""]

    att = results.get("attention")
    if att:
        seeds = att.get("seeds")
        lines += ["## Ablation: attention over seeds (fine-tuned from the same post-pretrained weights)", "",
                  f"Test split, mean ± sample std over seeds {seeds} (each seed in brackets). Order accuracy: "
                  "percent of captions that score their own clip above its time-reversed twin (50 = blind to "
                  "order, ties count half). Pair R@1: the caption's clip or its twin ranked first (blind to "
                  "order by construction), so R@1 lost to order and R@1 lost to content are told apart.", "",
                  att_md, ""]

    main = results.get("main") or {}
    if main.get("rows"):
        lines += ["## Main results (test split)", "", metrics_table(main["rows"]), ""]
        rows = main["rows"]
        names = list(rows)
        final = main.get("final")
        if final:
            lines.append(f"The fine-tuned CLIP-ViP reaches text→video R@1 {_r1(final):.1f} (DSL "
                         f"{_r1(final, 't2v_dsl'):.1f}) and video→text R@1 {_r1(final, 'v2t'):.1f} against chance "
                         f"{chance:.1f}.")
        if len(names) >= 2:
            lines.append(_compare("Post-pretraining (zero-shot)", _r1(rows[names[1]]),
                                  "the image-text model (zero-shot)", _r1(rows[names[0]]), "text→video R@1"))
        lines.append("")

    abl = results.get("attention_ablation") or {}
    if abl:
        first = f" (seed {att['seeds'][0]})" if att and att.get("seeds") else ""
        lines += [f"## Ablation: attention, full tables{first}", "",
                  metrics_table({m: r["test"] for m, r in abl.items()}), ""]

    ocl = results.get("ocl_ablation") or {}
    if ocl:
        lines += ["## Ablation: OCL variants (short post-pretraining, then zero-shot and short fine-tune)", "",
                  "| variant | loss terms | zero-shot t→v R@1 | zero-shot v→t R@1 | zero-shot order accuracy | "
                  "fine-tuned t→v R@1 | fine-tuned t→v DSL R@1 | fine-tuned order accuracy |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        terms = {"vs": "L(V↔S)", "a": "L(V↔S)+L(F↔C)", "b": "L(V↔S)+L(V↔C)", "c": "L(V↔S)+L(V↔C)+L(F↔C)",
                 "d": "L(V↔S,C)+L(F↔C)"}
        def order(m: Mapping[str, Any]) -> str:
            acc = m.get("order", {}).get("acc")
            return "–" if acc is None else f"{acc:.1f}"

        for v, r in ocl.items():
            lines.append(f"| {v} | {terms.get(v, v)} | {_r1(r['zero_shot_test']):.1f} | "
                         f"{_r1(r['zero_shot_test'], 'v2t'):.1f} | {order(r['zero_shot_test'])} | "
                         f"{_r1(r['finetuned_test']):.1f} | {_r1(r['finetuned_test'], 't2v_dsl'):.1f} | "
                         f"{order(r['finetuned_test'])} |")
        best = max(ocl, key=lambda v: _r1(ocl[v]["finetuned_test"]))
        lines += ["", f"Best variant after fine-tuning on this world: **{best}** (the paper chose d); one seed, "
                      "see the claims table for whether the gaps exceed the run-to-run noise.",
                  "",
                  "On this world the auxiliary caption describes the middle frame only (which objects are "
                  "visible), while the subtitle and the downstream captions describe both events in order; "
                  "the terms L(V↔C) pair the whole video with that order-free text. Compare the order "
                  "accuracy columns of the variants with and without L(V↔C) (b, c, d against a and vs).", ""]

    aux = results.get("aux_caption_ablation") or {}
    if len(aux) == 2:
        (wo_name, wo), (w_name, w) = list(aux.items())
        lines += ["## Ablation: auxiliary captions", "",
                  "| post-pretraining | zero-shot t→v R@1 | fine-tuned t→v R@1 | fine-tuned t→v DSL R@1 |",
                  "|---|---:|---:|---:|"]
        for name, r in aux.items():
            lines.append(f"| {name} | {_r1(r['zero_shot_test']):.1f} | {_r1(r['finetuned_test']):.1f} | "
                         f"{_r1(r['finetuned_test'], 't2v_dsl'):.1f} |")
        lines += ["", _compare("With auxiliary captions", _r1(w["zero_shot_test"]), "without",
                               _r1(wo["zero_shot_test"]), "zero-shot text→video R@1"),
                  _compare("With auxiliary captions", _r1(w["finetuned_test"]), "without",
                           _r1(wo["finetuned_test"]), "fine-tuned text→video R@1"), ""]

    gap = results.get("domain_gap") or {}
    if gap:
        lines += ["## Language domain gap (NMI; higher = larger gap; diagonal = noise floor)", ""]
        for name, entry in gap.items():
            lines += [f"Text features of the {name} ({entry.get('texts_per_corpus', '?')} texts per corpus):", "",
                      "| | " + " | ".join(entry["names"]) + " |", "|---" * (len(entry["names"]) + 1) + "|"]
            for row_name, row in zip(entry["names"], entry["matrix"]):
                lines.append(f"| {row_name} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
            sub_down = _find(entry["pairs"], "subtitles", "downstream")
            cap_down = _find(entry["pairs"], "auxiliary", "downstream")
            if sub_down is not None and cap_down is not None:
                which = "smaller" if cap_down < sub_down else "**not** smaller"
                lines += ["", f"Auxiliary captions ↔ downstream captions: {cap_down:.3f}; subtitles ↔ downstream: "
                              f"{sub_down:.3f}. Here the gap of auxiliary captions to the downstream language is "
                              f"{which} than that of subtitles (the paper's motivation for auxiliary captions is "
                              "that it is smaller)."]
            lines.append("")

    srch = results.get("search") or {}
    if srch:
        model_name = Path(results.get("model_dir", "model")).name
        lines += ["## Search with the saved model", "",
                  f"`clipvip.load(\"{model_name}\")` indexed {srch['indexed']} test videos in "
                  f"{srch['index_seconds']:.1f} s ({len(srch['failures'])} failures). Over every test caption as a "
                  f"query, the matching video comes first {srch['all_captions_top1_percent']:.1f}% of the time.", ""]
        for q in srch.get("queries", []):
            top = ", ".join(f"{r['path']} ({r['score']:.3f})" for r in q["results"][:3])
            lines.append(f"- \"{q['query']}\" → {top} {'✓' if q['top1_correct'] else '✗ expected ' + q['expected']}")
        lines.append("")

    if timings.get("stages_s"):
        lines += ["## Timings", "", "| stage | seconds |", "|---|---:|"]
        for stage, sec in timings["stages_s"].items():
            lines.append(f"| {stage} | {sec:.1f} |")
        lines.append("")
        if timings.get("runs_s"):
            lines += [f"Training runs, each on its own ({timings.get('jobs', 1)} at a time, so their sum exceeds "
                      "`training_runs`):", "", "| run | seconds |", "|---|---:|"]
            lines += [f"| {name} | {sec:.1f} |" for name, sec in timings["runs_s"].items()]
            lines.append("")
    if results.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    lines += ["## Files", ""]
    for name, path in files.items():
        try:
            rel = Path(path).relative_to(out)
        except ValueError:
            rel = Path(path)
        lines.append(f"- {name}: `{rel}`")
    lines.append("")
    return "\n".join(lines)
