"""The demo's outputs: ``results.json`` (every table as data), ``report.md`` (the same tables in markdown,
with sentences that state what the numbers show, whichever way they go) and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from clipvip.atomic import atomic_write_text

#: Tables that ``results.json`` always holds (the test suite checks them).
TABLES = ("main", "attention_ablation", "ocl_ablation", "aux_caption_ablation", "domain_gap", "timings", "search")


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (:mod:`clipvip.atomic`)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _r1(m: dict[str, Any], key: str = "t2v") -> float:
    return float(m[key]["R1"])


def metrics_table(rows: dict[str, dict[str, dict[str, float]]], directions: tuple[str, ...] = (
        "t2v", "v2t", "t2v_dsl", "v2t_dsl")) -> str:
    """One row per model: R@1/R@5/R@10/MdR for each direction."""
    labels = {"t2v": "t→v", "v2t": "v→t", "t2v_dsl": "t→v DSL", "v2t_dsl": "v→t DSL"}
    head = "| model | " + " | ".join(f"{labels[d]} R@1 | {labels[d]} R@5 | {labels[d]} MdR" for d in directions) + " |"
    sep = "|---|" + "---:|" * (3 * len(directions))
    lines = [head, sep]
    for name, m in rows.items():
        cells = []
        for d in directions:
            x = m[d]
            cells += [f"{x['R1']:.1f}", f"{x['R5']:.1f}", f"{x['MdR']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _compare(a_name: str, a: float, b_name: str, b: float, what: str) -> str:
    if math.isclose(a, b, abs_tol=0.05):
        return f"{a_name} and {b_name} tie on {what} ({a:.1f})."
    if a > b:
        return f"{a_name} beats {b_name} on {what} ({a:.1f} vs {b:.1f})."
    return f"{a_name} does **not** beat {b_name} on {what} ({a:.1f} vs {b:.1f})."


def write_outputs(out: Path, results: dict[str, Any], world: Any, echo: Callable[[str], None]) -> dict[str, str]:
    """Plots and ``report.md``; returns ``{name: path}`` of what was written."""
    files: dict[str, str] = {}
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    try:
        from clipvip.analysis.plots import plot_curves, plot_nmi_heatmap, retrieval_sheet

        curves = {k: v for k, v in results["main"]["curves"].items() if v}
        if curves:
            files["curves"] = str(plot_curves(curves, plots / "val_r1.png", metric="val text→video R@1",
                                              xlabel="fine-tuning steps",
                                              title="Validation R@1 during fine-tuning"))
        for name, entry in results["domain_gap"].items():
            slug = "stage0" if name.startswith("stage 0") else "final"
            files[f"nmi_{slug}"] = str(plot_nmi_heatmap(entry["names"], [[math.nan if v is None else v for v in r]
                                                                         for r in entry["matrix"]],
                                                        plots / f"nmi_{slug}.png",
                                                        title=f"NMI domain gap ({name})"))
        queries = results["search"]["queries"]
        if queries and queries[0]["results"]:
            q = queries[0]
            root = Path(results["search"]["index_dir"]).parent / "test_videos"
            files["retrieval_sheet"] = str(retrieval_sheet(
                q["query"], [(str(root / r["path"]), r["score"]) for r in q["results"]],
                plots / "retrieval_sheet.png"))
    except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the results of a 10-minute run
        echo(f"   warning: plots incomplete ({type(exc).__name__}: {exc})")
        results.setdefault("warnings", []).append(f"plots: {type(exc).__name__}: {exc}")
    report = render_report(results, files, out)
    atomic_write_text(out / "report.md", report)
    files["report"] = str(out / "report.md")
    files["results"] = str(out / "results.json")
    return files


def render_report(results: dict[str, Any], files: dict[str, str], out: Path) -> str:
    demo = results["demo"]
    s = demo["settings"]
    main = results["main"]
    chance = results.get("chance_R1", float("nan"))
    lines = [
        "# clipvip demo report",
        "",
        f"Preset **{demo['preset']}**, seed {demo['seed']}, {demo['date']}, "
        f"{demo['machine']['platform']}, {demo['machine']['cpus']} CPUs, torch {demo['machine']['torch']} "
        f"({demo['machine']['torch_threads']} threads). Total time **{results['timings']['total_s']:.0f} s** "
        f"wall, {results['timings'].get('cpu_s', float('nan')):.0f} s CPU of this process (wall time on a shared "
        "machine mostly measures the neighbours).",
        "",
        "World: " + ", ".join(f"{k} {v}" for k, v in results["world"].items() if k != "root") +
        f". Frames {s['num_frames']} × {s['image_size']}×{s['image_size']}; chance R@1 on test = {chance:.1f}.",
        "",
        "## Main results (test split)",
        "",
        metrics_table(main["rows"]),
        "",
    ]
    zs = main["rows"]
    names = list(zs)
    final = main["final"]
    lines.append(
        f"The fine-tuned CLIP-ViP reaches text→video R@1 {_r1(final):.1f} (DSL {_r1(final, 't2v_dsl'):.1f}) "
        f"and video→text R@1 {_r1(final, 'v2t'):.1f} against chance {chance:.1f}. "
        + _compare("Post-pretraining (zero-shot)", _r1(zs[names[1]]), "the image-text model (zero-shot)",
                   _r1(zs[names[0]]), "text→video R@1"))
    lines += ["", "## Ablation: attention (fine-tuned from the same post-pretrained weights)", ""]
    att = results["attention_ablation"]
    lines.append(metrics_table({m: r["test"] for m, r in att.items()}))
    if all("order" in r["test"] for r in att.values()):
        lines += ["", "Temporal order: percent of test captions that score their own clip above its reverse-order "
                      "twin (same objects and events, opposite order; 50 = blind to order):", "",
                  "| attention | order accuracy |", "|---|---:|"]
        lines += [f"| {m} | {r['test']['order']['acc']:.1f} |" for m, r in att.items()]
    if "proxy" in att and "frame" in att:
        lines += ["", _compare("Proxy attention", _r1(att["proxy"]["test"]), "frame mean pooling",
                               _r1(att["frame"]["test"]), "text→video R@1 (every caption here is temporal)")]
        if "order" in att["proxy"]["test"]:
            lines.append(_compare("Proxy attention", att["proxy"]["test"]["order"]["acc"], "frame mean pooling",
                                  att["frame"]["test"]["order"]["acc"], "order accuracy"))
        if "full" in att:
            lines.append(_compare("Proxy attention", _r1(att["proxy"]["test"]), "full attention",
                                  _r1(att["full"]["test"]), "text→video R@1"))
    lines += ["", "## Ablation: OCL variants (short post-pretraining, then zero-shot and short fine-tune)", ""]
    ocl = results["ocl_ablation"]
    lines += ["| variant | loss terms | final loss | zero-shot t→v R@1 | zero-shot v→t R@1 | fine-tuned t→v R@1 | "
              "fine-tuned t→v DSL R@1 |", "|---|---|---:|---:|---:|---:|---:|"]
    terms = {"vs": "L(V↔S)", "a": "L(V↔S)+L(F↔C)", "b": "L(V↔S)+L(V↔C)", "c": "L(V↔S)+L(V↔C)+L(F↔C)",
             "d": "L(V↔S,C)+L(F↔C)"}
    for v, r in ocl.items():
        lines.append(f"| {v} | {terms.get(v, v)} | {r['final_loss']:.3f} | {_r1(r['zero_shot_test']):.1f} | "
                     f"{_r1(r['zero_shot_test'], 'v2t'):.1f} | {_r1(r['finetuned_test']):.1f} | "
                     f"{_r1(r['finetuned_test'], 't2v_dsl'):.1f} |")
    best = max(ocl, key=lambda v: _r1(ocl[v]["finetuned_test"]))
    lines += ["", f"Best variant after fine-tuning on this world: **{best}** (the paper chose d). Losses are not "
                  "comparable across variants (different numbers of terms)."]
    aux = results["aux_caption_ablation"]
    (wo_name, wo), (w_name, w) = list(aux.items())
    lines += ["", "## Ablation: auxiliary captions", "",
              "| post-pretraining | zero-shot t→v R@1 | fine-tuned t→v R@1 | fine-tuned t→v DSL R@1 |",
              "|---|---:|---:|---:|"]
    for name, r in aux.items():
        lines.append(f"| {name} | {_r1(r['zero_shot_test']):.1f} | {_r1(r['finetuned_test']):.1f} | "
                     f"{_r1(r['finetuned_test'], 't2v_dsl'):.1f} |")
    lines += ["", _compare("With auxiliary captions", _r1(w["zero_shot_test"]), "without",
                           _r1(wo["zero_shot_test"]), "zero-shot text→video R@1"),
              _compare("With auxiliary captions", _r1(w["finetuned_test"]), "without",
                       _r1(wo["finetuned_test"]), "fine-tuned text→video R@1")]
    lines += ["", "## Language domain gap (NMI; higher = larger gap; diagonal = noise floor)", ""]
    for name, entry in results["domain_gap"].items():
        lines += [f"Text features of the {name} ({entry['texts_per_corpus']} texts per corpus):", "",
                  "| | " + " | ".join(entry["names"]) + " |", "|---" * (len(entry["names"]) + 1) + "|"]
        for row_name, row in zip(entry["names"], entry["matrix"]):
            lines.append(f"| {row_name} | " + " | ".join("" if v is None else f"{v:.3f}" for v in row) + " |")
        pairs = entry["pairs"]
        sub_down = next((v for k, v in pairs.items() if "subtitles" in k and "downstream" in k), None)
        cap_down = next((v for k, v in pairs.items() if "auxiliary" in k and "downstream" in k), None)
        if sub_down is not None and cap_down is not None:
            verdict = "smaller" if cap_down < sub_down else "**not** smaller"
            lines += ["", f"Auxiliary captions ↔ downstream captions: {cap_down:.3f}; subtitles ↔ downstream: "
                          f"{sub_down:.3f}. Here the gap of auxiliary captions to the downstream language is "
                          f"{verdict} than that of subtitles (the paper's motivation for auxiliary captions is "
                          "that it is smaller)."]
        lines.append("")
    srch = results["search"]
    lines += ["## Search with the saved model", "",
              f"`clipvip.load(\"{Path(results['model_dir']).name}\")` indexed {srch['indexed']} test videos in "
              f"{srch['index_seconds']:.1f} s ({len(srch['failures'])} failures). Over every test caption as a "
              f"query, the matching video comes first {srch['all_captions_top1_percent']:.1f}% of the time.", ""]
    for q in srch["queries"]:
        top = ", ".join(f"{r['path']} ({r['score']:.3f})" for r in q["results"][:3])
        lines.append(f"- \"{q['query']}\" → {top} {'✓' if q['top1_correct'] else '✗ expected ' + q['expected']}")
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---:|"]
    for stage, sec in results["timings"]["stages_s"].items():
        lines.append(f"| {stage} | {sec:.1f} |")
    lines += ["", "## Files", ""]
    for name, path in files.items():
        try:
            rel = Path(path).relative_to(out)
        except ValueError:
            rel = Path(path)
        lines.append(f"- {name}: `{rel}`")
    lines.append("")
    return "\n".join(lines)
