"""Annotation readers on the real files (counts) and on generated files in the documented formats."""

from __future__ import annotations

import json

import pytest

from clipvip.data.annotations import AnnotationError, read_annotations, read_jsonl, write_jsonl
from conftest import asset


def test_msrvtt_jsfusion_test_has_1000_pairs():
    recs = read_annotations("msrvtt", asset("annotations/msrvtt/MSRVTT_JSFUSION_test.csv"))
    assert len(recs) == 1000 and all(len(r["texts"]) == 1 and r["split"] == "test" for r in recs)
    assert recs[0] == {"video": "video9770.mp4", "id": "video9770", "split": "test",
                       "texts": ["a person is connecting something to system"]}


def test_msrvtt_9k_train_from_data_json(tmp_path):
    csv_path = asset("annotations/msrvtt/MSRVTT_train.9k.csv")
    ids = [line.strip() for line in csv_path.read_text().splitlines()[1:] if line.strip()]
    data = {"videos": [{"video_id": v, "split": "train"} for v in ids],
            "sentences": [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": k} for v in ids for k in range(2)]}
    data["sentences"].append({"video_id": "video9999", "caption": "a test video", "sen_id": 0})
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    recs = read_annotations("msrvtt", csv_path, data_json=tmp_path / "MSRVTT_data.json")
    assert len(recs) == 9000 and len(ids) == 9000
    assert recs[0]["texts"] == [f"caption 0 of {ids[0]}", f"caption 1 of {ids[0]}"]
    assert {r["split"] for r in recs} == {"train"}
    with pytest.raises(AnnotationError, match="data_json"):
        read_annotations("msrvtt", csv_path)


def test_didemo_paragraphs():
    recs = read_annotations("didemo", asset("annotations/didemo/test_data.json"))
    assert len(recs) == 1037 and sum(len(r["texts"]) for r in recs) == 4021
    assert all(r["paragraph"] and r["split"] == "test" for r in recs)
    raw = json.loads(asset("annotations/didemo/test_data.json").read_text())
    first = [x["description"].strip() for x in raw if x["video"] == recs[0]["video"]]
    assert recs[0]["texts"] == first


def test_activitynet_val1_paragraphs():
    recs = read_annotations("activitynet", asset("annotations/activitynet/val_1.json"))
    assert len(recs) == 4917 and sum(len(r["texts"]) for r in recs) == 17505
    assert all(r["paragraph"] for r in recs) and recs[0]["split"] == "test"
    assert all(t == t.strip() and t for r in recs for t in r["texts"])


def test_lsmdc_tsv(tmp_path):
    f = tmp_path / "LSMDC16_annos_test.csv"
    f.write_text("0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.000\t"
                 "00.00.55.000\tSomeone walks in.\n"
                 "0002_As_Good_As_It_Gets_00.01.02.000-00.01.04.000\t0\t1\t0\t1\tSomeone, smiling, waves.\n")
    recs = read_annotations("lsmdc", f)
    assert recs[0]["video"] == "0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.129.avi"
    assert recs[1]["texts"] == ["Someone, smiling, waves."] and recs[1]["split"] == "test"
    (tmp_path / "bad.csv").write_text("only\ttwo\n")
    with pytest.raises(AnnotationError, match="bad.csv:1"):
        read_annotations("lsmdc", tmp_path / "bad.csv")


def test_generic_csv_and_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text("video,text,start,end\nx.mp4,one,,\nx.mp4,two,,\ny.mp4,three,1.5,3\n")
    recs = read_annotations("csv", tmp_path / "a.csv", split="train")
    assert recs == [{"video": "x.mp4", "texts": ["one", "two"], "split": "train"},
                    {"video": "y.mp4", "texts": ["three"], "split": "train", "start": 1.5, "end": 3.0}]
    (tmp_path / "b.jsonl").write_text('{"video_id": "z", "caption": "a cat"}\n\n{"path": "w.mp4", "texts": ["a", "b"]}\n')
    recs = read_annotations("jsonl", tmp_path / "b.jsonl", ext=".mp4")
    assert [r["video"] for r in recs] == ["z.mp4", "w.mp4"] and recs[0]["texts"] == ["a cat"]


def test_jsonl_roundtrip_and_errors(tmp_path):
    recs = [{"video": "a.mp4", "texts": ["x"], "split": "train", "caption": None, "subtitle": "s"}]
    write_jsonl(recs, tmp_path / "d" / "out.jsonl")
    assert read_jsonl(tmp_path / "d" / "out.jsonl") == recs
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "bad.jsonl").write_text('{"video": "a.mp4", "texts": ["x"]}\n{"texts": ["y"]}\n')
    with pytest.raises(AnnotationError, match=r"bad.jsonl:2: 'video'"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError):
        write_jsonl([{"video": "a.mp4", "texts": "not a list"}], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
