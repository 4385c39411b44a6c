"""Datasets, collation, shards and the synthetic world, on a tiny generated world."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from clipvip.data.datasets import (Collator, ImageTextDataset, PretrainDataset, RetrievalEvalDataset,
                                   RetrievalTrainDataset)
from clipvip.data.synthetic import generate_world
from clipvip.data.video import decode_all


def fake_tokenize(tokenizer, texts, max_length):
    """Independent stand-in for clipvip.tokenizer.tokenize: one id per word, padded."""
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        words = [len(w) for w in t.split()][:max_length]
        ids[i, : len(words)] = torch.tensor(words, dtype=torch.long) if words else ids[i, :0]
        mask[i, : len(words)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _reverse_words(phrase: str) -> str:
    """An event phrase played backwards: direction and (dis)appearance words inverted."""
    inverse = {"left": "right", "right": "left", "up": "down", "down": "up", "appears": "disappears",
               "disappears": "appears"}
    return " ".join(inverse.get(w, w) for w in phrase.split())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world"), num_videos=12, seed=3, tokenizer=False)


def test_world_layout_and_temporal_twins(world):
    from clipvip.data.annotations import read_jsonl

    recs = {s: read_jsonl(getattr(world, s)) for s in ("train", "val", "test", "pretrain", "images")}
    assert sum(len(recs[s]) for s in ("train", "val", "test")) == 12
    every = [r for s in ("train", "val", "test") for r in recs[s]]
    by_id = {r["id"]: r for r in every}
    # Clips come in time-reversed twins: events swapped in order and inverted in direction.
    a, b = by_id["vid00000"], by_id["vid00001"]
    first, second = a["texts"][0].split(" then ")
    assert b["texts"][0] == f"{_reverse_words(second)} then {_reverse_words(first)}"
    assert a["split"] == b["split"]
    pre = recs["pretrain"]
    assert all(p["split"] == "train" and p["subtitle"] for p in pre)
    assert all(p["caption"] is None or "background" in p["caption"] for p in pre)
    assert not {p["id"] for p in pre} & {r["id"] for r in recs["test"]}
    frames = decode_all(world.videos / "vid00000.mp4")
    assert frames.shape == (8, 32, 32, 3)


def test_twins_are_named_explicitly(world):
    """Every clip record names its reverse-order twin; the twin names it back, sits in the same split and
    says the same two events the other way round; pretraining records carry the same field."""
    from clipvip.data.annotations import read_jsonl

    every = {r["id"]: r for s in ("train", "val", "test") for r in read_jsonl(getattr(world, s))}
    assert len(every) == 12 and all("twin" in r for r in every.values())
    for vid, rec in every.items():
        other = every[rec["twin"]]
        assert other["twin"] == vid and other["split"] == rec["split"] and other["id"] != vid
        first, second = rec["texts"][0].split(" then ")
        assert other["texts"][0] == f"{_reverse_words(second)} then {_reverse_words(first)}"
    for pre in read_jsonl(world.pretrain):
        assert pre["twin"] == every[pre["id"]]["twin"]


def test_odd_world_last_clip_has_no_twin(tmp_path):
    from clipvip.data.annotations import read_jsonl

    w = generate_world(tmp_path, num_videos=3, seed=0, size=16, num_frames=2, tokenizer=False)
    recs = {r["id"]: r for s in ("train", "val", "test") for r in read_jsonl(getattr(w, s))}
    assert recs["vid00000"]["twin"] == "vid00001" and "twin" not in recs["vid00002"]


def test_small_worlds_get_a_twin_pair_in_every_split():
    """For every size from 6 clips (3 complete pairs) to 120 and several seeds, train, val and test each
    hold at least one complete twin pair; fewer pairs fill train, then test, then val. Same seed -> same
    splits, and a world that drew every split keeps its draws."""
    import numpy as np

    from clipvip.data.synthetic import assign_pair_splits

    for n in range(1, 121):
        for seed in range(4):
            splits = assign_pair_splits(n, np.random.default_rng(seed))
            assert splits == assign_pair_splits(n, np.random.default_rng(seed))
            assert len(splits) == (n + 1) // 2
            complete = {splits[p] for p in range(n // 2)}
            want = {"train", "test", "val"} if n >= 6 else set(["train", "test", "val"][: n // 2])
            assert complete >= want, (n, seed, splits)
    # Exact shares (tests/test_data_synthetic.py checks sizes across seeds): 200 pairs -> 40 test, 20 val.
    got = assign_pair_splits(400, np.random.default_rng(7))
    assert sorted(got.values()).count("test") == 40 and sorted(got.values()).count("val") == 20


def test_world_is_deterministic(world, tmp_path):
    again = generate_world(tmp_path / "again", num_videos=12, seed=3, tokenizer=False)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "pretrain.jsonl", "images.jsonl"):
        assert (again.root / name).read_text() == (world.root / name).read_text()
    for vid in ("vid00000", "vid00007"):
        assert torch.equal(decode_all(again.videos / f"{vid}.mp4"), decode_all(world.videos / f"{vid}.mp4"))
    other = generate_world(tmp_path / "other", num_videos=12, seed=4, tokenizer=False)
    assert (other.root / "pretrain.jsonl").read_text() != (world.root / "pretrain.jsonl").read_text()


def test_retrieval_train_items_and_determinism(world):
    ds = RetrievalTrainDataset(world.train, num_frames=4, image_size=16, seed=5)
    item = ds[0]
    assert item["pixel_values"].shape == (4, 3, 16, 16) and item["text"] in ds.records[0]["texts"]
    assert item["video_id"] == ds.records[0]["id"] and item["index"] == 0
    again = ds[0]
    assert torch.equal(item["pixel_values"], again["pixel_values"]) and item["text"] == again["text"]
    texts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        texts.add(ds[0]["text"])
    assert texts == set(ds.records[0]["texts"])  # one caption sampled per access, all reachable


def test_eval_dataset_texts_and_paragraphs(world):
    ev = RetrievalEvalDataset(world.test, num_frames=3, image_size=8)
    assert len(ev.texts) == 2 * len(ev) and ev.text_to_video[:4] == [0, 0, 1, 1]
    assert ev[0]["pixel_values"].shape == (3, 3, 8, 8)
    recs = [{"video": r["video"], "texts": ["a b.", "c d."], "paragraph": True} for r in ev.records[:2]]
    par = RetrievalEvalDataset(recs, video_root=world.root, num_frames=2, image_size=8)
    assert par.texts == ["a b. c d.", "a b. c d."] and par.text_to_video == [0, 1]
    tr = RetrievalTrainDataset(recs, video_root=world.root, num_frames=2, image_size=8)
    assert tr[1]["text"] == "a b. c d."


def test_pretrain_items_and_collation(world):
    ds = PretrainDataset(world.pretrain, num_frames=4, image_size=16, seed=0)
    items = [ds[i] for i in range(len(ds))]
    full = decode_all(ds.video_path(ds.records[0]))
    mid = ds.transform(full[len(full) // 2 : len(full) // 2 + 1])
    assert torch.allclose(items[0]["frame_pixel_values"], mid)
    batch = Collator(None, 12, tokenize_fn=fake_tokenize)(items)
    b = len(items)
    assert batch["pixel_values"].shape == (b, 4, 3, 16, 16)
    assert batch["frame_pixel_values"].shape == (b, 1, 3, 16, 16)
    assert batch["subtitle_input_ids"].shape == (b, 12) and batch["caption_input_ids"].shape == (b, 12)
    expect = torch.tensor([r["caption"] is not None for r in ds.records])
    assert torch.equal(batch["has_caption"], expect)
    for i, has in enumerate(expect):
        if not has:
            assert batch["caption"][i] is None and batch["caption_attention_mask"][i].sum() == 0
    assert batch["failures"] == []


def test_image_text_dataset(world):
    ds = ImageTextDataset(world.images, image_size=16)
    item = ds[0]
    assert item["pixel_values"].shape == (1, 3, 16, 16) and "background" in item["text"]
    vids = ImageTextDataset([{"video": ds.records[0]["video"].replace("images/", "videos/").replace(".png", ".mp4"),
                              "texts": ["x"]}], video_root=world.root, image_size=16)
    # A video's middle frame is used; the PNG is that same frame (modulo h264 loss).
    assert (vids[0]["pixel_values"] - item["pixel_values"]).abs().mean() < 0.15


def test_bad_videos_are_skipped_and_reported(world, tmp_path, caplog):
    (tmp_path / "bad.mp4").write_text("not a video")
    good = {"video": str(world.videos / "vid00000.mp4"), "texts": ["ok"]}
    recs = [good, {"video": str(tmp_path / "bad.mp4"), "texts": ["x"]}, {"video": "nope.mp4", "texts": ["y"]}]
    ds = RetrievalTrainDataset(recs, video_root=tmp_path, num_frames=2, image_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=Collator(None, 8, tokenize_fn=fake_tokenize))
    batch = next(iter(loader))
    assert batch["pixel_values"].shape[0] == 1 and batch["batch_size"] == 1
    reasons = dict(batch["failures"])
    assert reasons[str(tmp_path / "bad.mp4")].startswith("not a readable media file")
    assert reasons[str(tmp_path / "nope.mp4")] == "file not found"
    assert ds.num_failures == 2 and "skipping" in caplog.text
    empty = Collator(None, 8, tokenize_fn=fake_tokenize)([ds[1]])
    assert empty["pixel_values"] is None and len(empty["failures"]) == 1


@pytest.mark.slow
def test_failures_survive_worker_processes(world, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    recs = [{"video": str(world.videos / f"vid0000{i}.mp4"), "texts": ["ok"]} for i in range(3)]
    recs.insert(1, {"video": str(tmp_path / "bad.mp4"), "texts": ["x"]})
    ds = RetrievalTrainDataset(recs, num_frames=2, image_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                         collate_fn=Collator(None, 8, tokenize_fn=fake_tokenize))
    batches = list(loader)
    assert sum(b["batch_size"] for b in batches) == 3
    assert [f[0] for b in batches for f in b["failures"]] == [str(tmp_path / "bad.mp4")]


@pytest.mark.slow
def test_collator_uses_clipvip_tokenizer(world, bpe_path, tmp_path):
    tok_mod = pytest.importorskip("clipvip.tokenizer")
    tok = tok_mod.load_tokenizer(str(bpe_path))
    ds = RetrievalTrainDataset(world.train, num_frames=2, image_size=8)
    batch = Collator(tok, 16)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"][0, 0].item() == 49406  # CLIP start token


@pytest.mark.slow
def test_shards_roundtrip_two_ranks_two_workers(world, tmp_path):
    from clipvip.data.shards import ShardDataset, write_shards

    src = world.root / "all.jsonl"
    src.write_text("".join((world.root / f"{s}.jsonl").read_text() for s in ("train", "val", "test")))
    n = len(src.read_text().splitlines())
    manifest = write_shards(src, tmp_path / "shards", fps=2, short_side=16, shard_size=2, progress=False)
    assert manifest["num_samples"] == n and manifest["failures"] == [] and len(manifest["shards"]) == 6
    seen = []
    for rank in range(2):
        ds = ShardDataset(tmp_path / "shards", task="retrieval", num_frames=2, image_size=8, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2,
                                             collate_fn=Collator(None, 8, tokenize_fn=fake_tokenize))
        for batch in loader:
            assert batch["pixel_values"].shape[1:] == (2, 3, 8, 8)
            seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(n))  # every item exactly once across 2 ranks x 2 workers
    # The shard holds the clip re-encoded at 2 fps and the short side 16: 8 frames at 4 fps -> 4 frames.
    from clipvip.data.shards import iter_tar_samples
    import io
    from clipvip.data.video import read_info
    key, sample = next(iter_tar_samples(tmp_path / "shards" / "shard-000000.tar"))
    buf = io.BytesIO(sample["mp4"])
    (tmp_path / "m.mp4").write_bytes(sample["mp4"])
    info = read_info(tmp_path / "m.mp4")
    assert (info.num_frames, info.width, info.fps) == (4, 16, 2.0) and json.loads(sample["json"])["index"] == 0
    # Resumable: a second run keeps the shards (same bytes) and the manifest.
    before = (tmp_path / "shards" / "shard-000000.tar").stat().st_mtime_ns
    again = write_shards(src, tmp_path / "shards", fps=2, short_side=16, shard_size=2, progress=False)
    assert again["num_samples"] == n and (tmp_path / "shards" / "shard-000000.tar").stat().st_mtime_ns == before


def test_cli_prepare_and_synth(tmp_path, capsys):
    from clipvip.cli import main
    from conftest import asset

    ann = asset("annotations/msrvtt/MSRVTT_JSFUSION_test.csv")
    assert main(["data", "prepare", "msrvtt", str(ann), "--out", str(tmp_path / "t.jsonl"),
                 "--videos", str(asset("videos"))]) == 1  # written, with missing videos listed: exit 1
    out = capsys.readouterr().out
    assert "wrote 1000 records" in out and "998 videos missing" in out
    assert main(["data", "prepare", "msrvtt", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "nope.csv: file not found" in capsys.readouterr().err
