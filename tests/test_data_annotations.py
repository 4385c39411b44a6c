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


# ------------------------------------------------------------------------------------------------------
# The strict schema: each case is one line of a JSONL file; the error must name file:line, the key and the
# expected type (every one of these loaded silently, or as a wrong value, before).
_GOOD = '{"video": "a.mp4", "texts": ["a dog"]}'
BAD_SCHEMA_LINES = [
    ('{"video": "a.mp4", "texts": [null]}', r"'texts'\[0\]: expected a non-empty string .*got null"),
    ('{"video": "a.mp4", "texts": [["a", "b"]]}', r"'texts'\[0\]: expected a non-empty string .*got list"),
    ('{"video": "a.mp4", "texts": {"a dog": 1}}', r"'texts': expected a list of non-empty strings.*got object"),
    ('{"video": "a.mp4", "texts": ["  "]}', r"'texts'\[0\]: expected a non-empty string"),
    ('{"video": "a.mp4", "texts": "a dog"}', r"'texts': expected a list"),
    ('{"video": ".mp4", "texts": ["a"]}', r"'video': expected a non-empty .* file name"),
    ('{"video": "clips/.mp4", "texts": ["a"]}', r"'video': expected"),
    ('{"video": "", "texts": ["a"]}', r"'video': expected"),
    ('{"video": 7, "texts": ["a"]}', r"'video': expected .*got number 7"),
    ('{"video": "a.mp4", "texts": ["a"], "start": NaN}', r"NaN is not valid JSON"),
    ('{"video": "a.mp4", "texts": ["a"], "start": Infinity}', r"Infinity is not valid JSON"),
    ('{"video": "a.mp4", "texts": ["a"], "start": "1.5"}', r"'start': expected a finite number of seconds"),
    ('{"video": "a.mp4", "texts": ["a"], "start": true}', r"'start': expected a finite number .*got boolean"),
    ('{"video": "a.mp4", "texts": ["a"], "start": -1}', r"'start': expected a finite number of seconds >= 0"),
    ('{"video": "a.mp4", "texts": ["a"], "start": 3, "end": 2}', r"'end' \(2\) is before 'start' \(3\)"),
    ('{"video": "a.mp4", "texts": ["a"], "paragraph": "false"}', r"'paragraph': expected true or false"),
    ('{"video": "a.mp4", "texts": ["a"], "caption": ""}', r"'caption': expected a non-empty string, or null"),
    ('{"video": "a.mp4", "texts": ["a"], "caption": ["x"]}', r"'caption': expected .*got list"),
    ('{"video": "a.mp4", "texts": ["a"], "split": "dev"}', r"'split': expected one of train, val, test"),
    ('{"video": "a.mp4", "texts": ["a"], "txt": ["typo"]}', r"unknown key 'txt'"),
    ('{"video": "a.mp4", "texts": ["a"], "video": "b.mp4"}', r"duplicate key 'video'"),
    ('{"texts": ["a"]}', r"'video' is missing"),
    ('{"video": "a.mp4"}', r"'texts' is missing"),
    ('["a.mp4", ["a"]]', r"expected a JSON object .*got list"),
    ('{"video": "a.mp4", "texts": ["a"]', r"invalid JSON"),
]


@pytest.mark.parametrize("line,message", BAD_SCHEMA_LINES, ids=[f"case{i}" for i in range(len(BAD_SCHEMA_LINES))])
def test_jsonl_schema_is_strict(tmp_path, line, message):
    f = tmp_path / "ann.jsonl"
    f.write_text(f"{_GOOD}\n\n{line}\n")
    with pytest.raises(AnnotationError, match=r"ann\.jsonl:3: " + message):
        read_jsonl(f)


def test_write_jsonl_refuses_nan_and_bad_records_and_writes_nothing(tmp_path):
    out = tmp_path / "out.jsonl"
    for bad in ({"video": "a.mp4", "texts": ["x"], "start": float("nan")},
                {"video": "a.mp4", "texts": [None]}, {"video": ".mp4", "texts": ["x"]}):
        with pytest.raises(ValueError, match=r"out\.jsonl: not written: record 1"):
            write_jsonl([{"video": "ok.mp4", "texts": ["fine"]}, bad], out)
        assert not out.exists()


def test_non_utf8_annotation_files_name_the_file_and_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(_GOOD.encode() + b"\n" + '{"video": "a.mp4", "texts": ["café"]}'.encode("latin-1") + b"\n")
    with pytest.raises(AnnotationError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        read_jsonl(f)
    g = tmp_path / "latin1.csv"
    g.write_bytes("video,text\nx.mp4,café\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"latin1\.csv:2: not UTF-8"):
        read_annotations("csv", g)
    h = tmp_path / "test_data.json"
    h.write_bytes('[{"video": "v.mp4", "description": "café"}]'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"test_data\.json:1: not UTF-8"):
        read_annotations("didemo", h)


def test_csv_unbalanced_quote_and_bad_fields_name_file_and_line(tmp_path):
    f = tmp_path / "q.csv"
    # Row 2's quote never closes: the csv module would merge rows 2-3 into one caption and lose a row.
    f.write_text('video,text\nx.mp4,"a dog runs\ny.mp4,a cat sleeps\nz.mp4,"a bird"\n')
    with pytest.raises(AnnotationError, match=r"q\.csv:2: a quoted field runs from line 2 to line 4"):
        read_annotations("csv", f)
    f.write_text('video,text\nx.mp4,"a dog runs\ny.mp4,a cat sleeps\n')  # quote open at end of file
    with pytest.raises(AnnotationError, match=r"q\.csv:\d: (malformed CSV|a quoted field)"):
        read_annotations("csv", f)
    f.write_text('video,text\nx.mp4,a "dog" runs,extra\n')
    with pytest.raises(AnnotationError, match=r"q\.csv:2: expected 2 fields \(video,text\), got 3"):
        read_annotations("csv", f)
    f.write_text('video,text\nx.mp4\n')
    with pytest.raises(AnnotationError, match=r"q\.csv:2: expected 2 fields"):
        read_annotations("csv", f)
    f.write_text('video,text\n,a dog\n')
    with pytest.raises(AnnotationError, match=r"q\.csv:2: column 'video': expected a non-empty video id"):
        read_annotations("csv", f)
    f.write_text('video,text\nx.mp4,\n')
    with pytest.raises(AnnotationError, match=r"q\.csv:2: column 'text': empty caption"):
        read_annotations("csv", f)
    # MSR-VTT's own CSV goes through the same strict reader.
    m = tmp_path / "MSRVTT_JSFUSION_test.csv"
    m.write_text('key,vid_key,video_id,sentence\nret0,msr9770,video9770,"a person\nret1,msr9771,video9771,x\n')
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv:2: a quoted field"):
        read_annotations("msrvtt", m)


def test_generic_csv_bad_start_names_file_and_line(tmp_path):
    f = tmp_path / "s.csv"
    for value in ("abc", "nan", "inf", "-2"):
        f.write_text(f"video,text,start,end\nx.mp4,one,,\ny.mp4,two,{value},3\n")
        with pytest.raises(AnnotationError, match=r"s\.csv:3: column 'start': expected a finite number of seconds"):
            read_annotations("csv", f)


def test_dataset_readers_reject_wrong_caption_types(tmp_path):
    d = tmp_path / "test_data.json"
    d.write_text(json.dumps([{"video": "v.mp4", "description": ["a", "b"]}]))
    with pytest.raises(AnnotationError, match=r"test_data\.json: item 0 'description': expected a string.*got list"):
        read_annotations("didemo", d)
    a = tmp_path / "val_1.json"
    a.write_text(json.dumps({"v_x": {"sentences": ["fine", None]}}))
    with pytest.raises(AnnotationError, match=r"val_1\.json: video 'v_x' sentence 1: expected a string.*got null"):
        read_annotations("activitynet", a)
    a.write_text('{"v_x": {"sentences": ["a"]}, "v_x": {"sentences": ["b"]}}')
    with pytest.raises(AnnotationError, match=r"duplicate key 'v_x'"):
        read_annotations("activitynet", a)
    g = tmp_path / "g.jsonl"
    for line, message in (('{"video": "a", "caption": null}', r"'caption': expected a string or a list of strings, got null$"),
                          ('{"video": "a", "texts": ["x", ["y"]]}', r"'texts'\[1\]: expected a string.*got list"),
                          ('{"video": "a", "texts": {"k": "v"}}', r"'texts': expected a string or a list.*object"),
                          ('{"video": "", "texts": ["x"]}', r"'video': expected a non-empty video id")):
        g.write_text(line + "\n")
        with pytest.raises(AnnotationError, match=r"g\.jsonl:1: " + message):
            read_annotations("jsonl", g)
    msr = tmp_path / "MSRVTT_data.json"
    msr.write_text(json.dumps({"videos": [{"video_id": "video1", "split": "train"}],
                               "sentences": [{"video_id": "video1", "caption": None}]}))
    with pytest.raises(AnnotationError, match=r"sentences\[0\]\.caption: expected a string.*got null"):
        read_annotations("msrvtt", msr)
