"""`clipvip data synth` and `clipvip data shard` end to end through the command line."""

from __future__ import annotations

import json
import tarfile

import av

from clipvip.cli import main


def _keyframe_flags(data: bytes) -> list[bool]:
    import io

    with av.open(io.BytesIO(data)) as container:
        return [bool(p.is_keyframe) for p in container.demux(container.streams.video[0]) if p.size]


def test_synth_then_shard_with_gop_and_fast_decode_flags(tmp_path):
    world = tmp_path / "w"
    assert main(["data", "synth", "--out", str(world), "--num-videos", "8"]) == 0
    records = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]
    assert records

    # default: every frame a keyframe (reading a frame decodes only that frame)
    assert main(["data", "shard", str(world / "test.jsonl"), "--out", str(tmp_path / "s1"), "--fps", "4"]) == 0
    # --gop 3 --no-fast-decode: the older, smaller encoding
    assert main(["data", "shard", str(world / "test.jsonl"), "--out", str(tmp_path / "s3"), "--fps", "4",
                 "--gop", "3", "--no-fast-decode"]) == 0
    for name, gop, fast in (("s1", 1, True), ("s3", 3, False)):
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert (manifest["gop"], manifest["fast_decode"]) == (gop, fast)
        assert manifest["num_samples"] == len(records) and manifest["failures"] == []
        with tarfile.open(tmp_path / name / "shard-000000.tar") as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
            flags = _keyframe_flags(tar.extractfile(member).read())
        assert len(flags) > 3
        if gop == 1:
            assert all(flags)
        else:
            assert not all(flags) and flags[0]


# ------------------------------------------------------------------------------------------------------
# Exit statuses (0 all good, 1 done with failures, 2 nothing done) and one summary instead of a line per video.
def test_shard_exit_status_and_one_summary(tmp_path, capsys, caplog):
    world = tmp_path / "w"
    assert main(["data", "synth", "--out", str(world), "--num-videos", "8"]) == 0
    records = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]
    broken = world / "videos" / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = dict(records[0], video="videos/broken.mp4", id="broken")
    bad.pop("twin", None)
    (world / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in [*records, bad]) + "\n")
    (world / "allbad.jsonl").write_text(json.dumps(bad) + "\n")
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        rc = main(["data", "shard", str(world / "mixed.jsonl"), "--out", str(tmp_path / "s"), "--fps", "4"])
    out = capsys.readouterr().out
    assert rc == 1  # before: 0 with failures
    assert f"wrote {len(records)} of {len(records) + 1} videos" in out
    assert "1 videos failed (full list in" in out and "manifest.json" in out and "broken.mp4" in out
    assert not [r for r in caplog.records if "broken.mp4" in r.getMessage()]  # no per-video warning
    assert main(["data", "shard", str(world / "allbad.jsonl"), "--out", str(tmp_path / "s2"), "--fps", "4"]) == 2


def test_synth_prints_its_summary_once(tmp_path, capsys, caplog):
    with caplog.at_level("INFO"):
        assert main(["data", "synth", "--out", str(tmp_path / "w"), "--num-videos", "4"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert said.count("synthetic world in") == 1


def test_third_party_info_logs_are_quiet(tmp_path):
    """faiss logs "Loading faiss with AVX2 support." at INFO; the CLI shows our INFO, others' warnings only."""
    import subprocess
    import sys

    probe = ("import logging; from clipvip.cli import main; main(['data']); "
             "print(logging.getLogger('faiss.loader').isEnabledFor(logging.INFO), "
             "logging.getLogger('clipvip.data').isEnabledFor(logging.INFO))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False True"


def test_prepare_errors_name_the_flag(tmp_path, capsys):
    from conftest import asset

    csv_path = asset("annotations/msrvtt/MSRVTT_train.9k.csv")
    assert main(["data", "prepare", "msrvtt", str(csv_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-json" in err[0] and "MSRVTT_data.json" in err[0]
    assert not (tmp_path / "x.jsonl").exists()


def _msrvtt_annotation_dir(tmp_path):
    """The real 9k train list and 1k-A test csv, plus an MSRVTT_data.json holding two captions per 9k video
    (the real one, 20 per video, is not among the shared assets)."""
    import shutil

    from conftest import asset

    ann = tmp_path / "msrvtt_data"
    ann.mkdir()
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"):
        shutil.copy(asset(f"annotations/msrvtt/{name}"), ann / name)
    ids = [line.strip() for line in (ann / "MSRVTT_train.9k.csv").read_text().splitlines()[1:] if line.strip()]
    data = {"videos": [{"video_id": v, "split": "train"} for v in ids],
            "sentences": [{"video_id": v, "caption": f"clip {v} caption {k}", "sen_id": k} for v in ids for k in range(2)]}
    (ann / "MSRVTT_data.json").write_text(json.dumps(data))
    return ann, ids


def test_msrvtt_splits_end_to_end_with_the_recipes_names(tmp_path, capsys):
    import yaml

    from clipvip.data.annotations import read_jsonl

    ann, ids = _msrvtt_annotation_dir(tmp_path)
    out = tmp_path / "data" / "msrvtt"
    assert main(["data", "msrvtt", str(ann), "--out", str(out)]) == 0
    # The names the recipes use under data.root.
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    for recipe in ("msrvtt_b32.yaml", "msrvtt_b16.yaml"):
        data = yaml.safe_load((repo / "configs" / recipe).read_text())["data"]
        for key in ("train", "val", "test"):
            assert (out / data[key]).is_file(), (recipe, key)
    train, val, test = (read_jsonl(out / n) for n in ("train9k.jsonl", "val.jsonl", "test1ka.jsonl"))
    assert (len(train), len(val), len(test)) == (8500, 500, 1000)
    train_ids, val_ids, test_ids = ({r["id"] for r in recs} for recs in (train, val, test))
    assert train_ids | val_ids == set(ids) and not train_ids & val_ids  # val is held out of the 9k videos
    assert not (train_ids | val_ids) & test_ids
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in val} == {"val"}
    assert all(len(r["texts"]) == 2 for r in train + val) and all(len(r["texts"]) == 1 for r in test)
    assert [r["id"] for r in train + val] != ids and sorted(ids.index(i) for i in val_ids) == [ids.index(r["id"]) for r in val]
    assert test[0] == {"video": "video9770.mp4", "id": "video9770", "texts": ["a person is connecting something to system"],
                       "split": "test"}
    # Seeded: the same seed draws the same videos, another seed others; existing files are not replaced.
    assert main(["data", "msrvtt", str(ann), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "msrvtt", str(ann), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "val.jsonl").read_bytes() == (out / "val.jsonl").read_bytes()
    assert main(["data", "msrvtt", str(ann), "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    assert {r["id"] for r in read_jsonl(out / "val.jsonl")} != val_ids
    # Missing videos are reported (exit 1), the files still written.
    (tmp_path / "videos").mkdir()
    assert main(["data", "msrvtt", str(ann), "--out", str(tmp_path / "v"), "--videos", str(tmp_path / "videos")]) == 1
    assert "10000 videos missing under" in capsys.readouterr().out


def test_eval_missing_videos_one_summary_exit_1_and_the_convention_printed(tmp_path, capsys, caplog):
    """Registry model (random weights, the bundled tokenizer: no --tokenizer) on a tiny synthetic world plus
    five records whose videos do not exist: one summary line, not one WARNING per video; exit 1."""
    world = tmp_path / "w"
    assert main(["data", "synth", "--out", str(world), "--num-videos", "8"]) == 0
    records = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]
    missing = [{"video": f"videos/gone{i}.mp4", "texts": [f"a missing clip number {i}"]} for i in range(5)]
    (world / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in records + missing) + "\n")
    capsys.readouterr()
    out_json = tmp_path / "res.json"
    common = ["--model", "clipvip-tiny", "--num-frames", "2", "--max-length", "32", "--no-progress", "--dsl"]
    with caplog.at_level("WARNING"):
        rc = main(["eval", "--data", str(world / "mixed.jsonl"), "--out", str(out_json), *common])
    out = capsys.readouterr().out
    assert rc == 1  # before: 0
    assert not [r for r in caplog.records if "gone" in r.getMessage()]  # before: one WARNING per video
    summary = [line for line in out.splitlines() if "could not be read" in line]
    assert len(summary) == 1 and summary[0].startswith(f"5 of {len(records) + 5} videos could not be read")
    assert "gone0.mp4" in summary[0] and "gone4.mp4" not in summary[0] and str(out_json) in summary[0]
    assert "convention (best-caption): video->text" in out and "video->text (DSL)" not in out
    res = json.loads(out_json.read_text())
    assert res["v2t_convention"] == "best-caption" and len(res["failures"]) == 5
    # CLIP4Clip's convention on request, labelled; every video missing: nothing done, exit 2.
    assert main(["eval", "--data", str(world / "test.jsonl"), "--v2t", "maxpool", *common]) == 0
    assert "convention (maxpool)" in capsys.readouterr().out
    (world / "gone.jsonl").write_text("\n".join(json.dumps(r) for r in missing) + "\n")
    assert main(["eval", "--data", str(world / "gone.jsonl"), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 5 videos could be read" in err[0]


def test_eval_tokenizer_errors_name_the_flag(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"video": "a.mp4", "texts": ["x"]}\n')
    assert main(["eval", "--model", "clipvip-tiny", "--data", str(data), "--tokenizer",
                 str(tmp_path / "bpe_simple_vocab_16e6.txt.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clipvip eval: error: --tokenizer {tmp_path}")
