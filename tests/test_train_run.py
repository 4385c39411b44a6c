"""Training runs on the synthetic world: exact resume, checkpoints that load as models, selection labels,
the train/eval CLI, and (slow) fine-tuning that beats chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipvip.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world, generated once per session (videos, splits, word tokenizer)."""
    from clipvip.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("train_world")
    generate_world(root, num_videos=60, seed=0, num_frames=8)
    return root


def tiny_cfg(world: Path, out: Path, *extra: str):
    """The synthetic fine-tuning recipe shrunk to a few CPU steps."""
    return load_config(REPO / "configs" / "synthetic_finetune.yaml", [
        f"data.root={world}", "data.generate_synthetic=false", f"run.output_dir={out}", "run.progress=false",
        "model.num_frames=4", "run.global_batch_size=8", "optim.lr=1e-3", "data.eval_batch_size=64", *extra])


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_parameters(world: Path, tmp_path: Path) -> None:
    """Exact resume across an epoch boundary, and kept ``step_*`` checkpoints (``run.keep_every``) that a
    resume neither loses nor duplicates: each equals the uninterrupted run's weights at that step."""
    import shutil

    from clipvip.model.clipvip import CLIPViP
    from clipvip.train.checkpoint import load_trainer_state
    from clipvip.train.loop import train

    # 6 steps with 4 batches per epoch (>= 32 train videos / 8): the resumed half crosses an epoch boundary.
    common = ["optim.max_steps=6", "run.save_every=3", "run.eval_every=1000", "data.test=null",
              "run.keep_every=2"]
    full = train(tiny_cfg(world, tmp_path / "full", *common))
    assert full["steps"] == 6
    kept = ["step_00000000", "step_00000002", "step_00000004", "step_00000006"]
    assert sorted(p.name for p in (tmp_path / "full").glob("step_*")) == kept
    cut = tmp_path / "cut"
    stopped = train(tiny_cfg(world, cut, *common), stop_after_steps=3)
    assert stopped.get("stopped") and stopped["steps"] == 3
    state = load_trainer_state(cut / "last")  # weights_only=True inside
    assert state["run"]["step"] == 3
    assert sorted(p.name for p in cut.glob("step_*")) == kept[:2]
    # Second interruption right after last/ is saved at step 4 but before step_00000004/ is published;
    # a stale kept folder of another history (step 8) lies in the run folder too.
    assert train(tiny_cfg(world, cut, *common), stop_after_steps=4)["steps"] == 4
    shutil.rmtree(cut / "step_00000004")
    shutil.copytree(cut / "step_00000002", cut / "step_00000008")
    resumed = train(tiny_cfg(world, cut, *common))
    assert resumed["steps"] == 6
    assert sorted(p.name for p in cut.glob("step_*")) == kept  # re-created 4, removed 8, no duplicates

    a = _params(CLIPViP.from_pretrained(tmp_path / "full" / "last"))
    b = _params(CLIPViP.from_pretrained(cut / "last"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst}"
    for name in kept:
        marker = json.loads((cut / name / "checkpoint.json").read_text())
        assert marker["step"] == int(name.split("_")[1])
        assert not (cut / name / "trainer_state.pt").exists()  # model-only: a curve point, not a resume point
        ka = _params(CLIPViP.from_pretrained(tmp_path / "full" / name))
        kb = _params(CLIPViP.from_pretrained(cut / name))
        assert max(float((ka[k].float() - kb[k].float()).abs().max()) for k in ka) <= 1e-6, name
    assert all(torch.equal(a[k], ka[k]) for k in a)  # step_00000006 is the final model
    # ... and training did move the weights (a resume that silently restarted would also be "equal").
    from clipvip.train.loop import _seed_all, build_model

    cfg = tiny_cfg(world, tmp_path / "unused", *common)
    _seed_all(cfg.run.seed)
    init = _params(build_model(cfg))
    assert max(float((init[k].float() - a[k].float()).abs().max()) for k in a) > 1e-4
    step0 = _params(CLIPViP.from_pretrained(tmp_path / "full" / "step_00000000"))
    assert all(torch.equal(init[k], step0[k]) for k in init)  # the starting weights are kept as step 0
    log = [json.loads(line) for line in (tmp_path / "full" / "eval_log.jsonl").read_text().splitlines()]
    assert log and all(r["split"] == "val" and r["selected_on"] == "val" for r in log)


def test_cli_train_then_eval_and_test_selection_is_labelled(world: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import clipvip
    from clipvip.cli import main as cli_main

    out = tmp_path / "run"
    code = cli_main(["train", str(REPO / "configs" / "synthetic_finetune.yaml"), f"data.root={world}",
                     f"run.output_dir={out}", "run.progress=false", "model.num_frames=4",
                     "run.global_batch_size=8", "optim.max_steps=2", "run.select_on=test",
                     "run.select_metric=t2v_dsl.R1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "selected on test split (reproduces the reference" in text
    for name in ("last", "best"):
        assert (out / name / "model.safetensors").is_file() and (out / name / "trainer_state.pt").is_file()
    assert (out / "config.yaml").is_file() and list((out / "tb").iterdir())
    records = [json.loads(line) for line in (out / "eval_log.jsonl").read_text().splitlines()]
    assert records and all("test split" in r["selected_on"] for r in records)
    results = json.loads((out / "results.json").read_text())
    assert "test split" in results["selected_on"] and results["test"]["t2v"]["R1"] >= 0

    pipe = clipvip.load(str(out / "best"), device="cpu")  # any checkpoint opens as a model
    assert pipe.model.config.projection_dim == 32

    res_file = tmp_path / "eval.json"
    code = cli_main(["eval", "--model", str(out / "best"), "--data", str(world / "test.jsonl"), "--dsl",
                     "--num-frames", "4", "--max-length", "32", "--out", str(res_file), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "text->video (DSL)" in text
    res = json.loads(res_file.read_text())
    n_test = len((world / "test.jsonl").read_text().splitlines())
    assert res["num_videos"] == n_test and res["failures"] == []
    assert set(res) >= {"t2v", "v2t", "t2v_dsl", "v2t_dsl"}
    assert set(res["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR"}


def test_eval_counts_undecodable_videos(world: Path, tmp_path: Path) -> None:
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import load_tokenizer
    from clipvip.train.evaluate import evaluate_retrieval

    lines = (world / "test.jsonl").read_text().splitlines()[:3]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    rec = json.loads(lines[0])
    rec["video"] = str(broken)
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines[1:] + [json.dumps(rec)]) + "\n")
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    res = evaluate_retrieval(model, load_tokenizer(world / "tokenizer"), data, num_frames=2, image_size=32,
                             max_length=32, video_root=str(world))
    assert res["num_videos"] == 3
    assert len(res["failures"]) == 1 and "broken.mp4" in res["failures"][0][0]
    assert res["invalid_videos"] == [2]

    # Independent reference: encode the two readable videos and all texts by hand, then rank with loops in
    # which the broken video (row 2) never outranks a readable one and its own texts/row are last.
    from clipvip.data.annotations import read_jsonl
    from clipvip.data.transforms import VideoTransform
    from clipvip.data.video import load_frames
    from clipvip.metrics import ranks_to_metrics
    from clipvip.tokenizer import tokenize

    records = read_jsonl(data)
    texts = [t for rec in records for t in rec["texts"]]
    owner = [i for i, rec in enumerate(records) for _ in rec["texts"]]
    tok = load_tokenizer(world / "tokenizer")
    with torch.no_grad():
        pixels = torch.stack([VideoTransform(32)(load_frames(world / rec["video"], num_frames=2))
                              for rec in records[:2]])
        v = model.encode_video(pixels)
        ids = tokenize(tok, texts, 32)
        t = model.encode_text(ids["input_ids"], ids["attention_mask"])
    sim = (t @ v.T).tolist()  # texts x the 2 readable videos
    t2v = [3 if owner[i] == 2 else 1 + sum(1 for j in range(2) if j != owner[i] and row[j] >= row[owner[i]])
           for i, row in enumerate(sim)]
    # video->text, best-caption convention: a video's own captions never compete with each other; the
    # broken video gets the worst rank, 1 + the other videos' captions.
    v2t = [min(1 + sum(1 for k in range(len(texts)) if owner[k] != vid and sim[k][vid] >= sim[i][vid])
               for i in range(len(texts)) if owner[i] == vid) for vid in range(2)] + [1 + owner.count(0) + owner.count(1)]
    for name, ranks in (("t2v", t2v), ("v2t", v2t)):
        for key, value in ranks_to_metrics(ranks).items():
            assert res[name][key] == pytest.approx(value, abs=1e-9), (name, key)


@pytest.mark.slow
def test_finetuning_beats_chance(world: Path, tmp_path: Path) -> None:
    """A tiny random-init model fine-tuned for 60 CPU steps retrieves its training videos far above chance.

    Measured on the training videos (with all their captions, uniform frames, no jitter): generalising to
    held-out compositions needs the image-text and post-pretraining stages first (see ``clipvip demo``),
    which is beyond a unit test's budget. Held-out val numbers are printed for information. The world's
    twins are exact time reversals, which a 60-step model cannot yet tell apart (their scores nearly tie,
    and plain R@1 counts a tie as a miss), so the check is on order-blind pair R@1 (the caption's clip or
    its twin first), against its own chance of 2 / videos.
    """
    from clipvip.analysis.order import pair_recall_at_1, twin_columns
    from clipvip.data.annotations import read_jsonl, record_id
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import load_tokenizer
    from clipvip.train.evaluate import evaluate_retrieval
    from clipvip.train.loop import train

    cfg = tiny_cfg(world, tmp_path / "ft", "optim.lr=3e-3", "optim.max_steps=60", "run.eval_every=1000",
                   "run.global_batch_size=16", "optim.warmup_ratio=0.1", f"data.test={world / 'train.jsonl'}",
                   "data.group_by=null")  # random batches: this checks learning, not order (twin batches do)
    result = train(cfg)
    n_videos = result["test"]["num_videos"]
    chance = 100.0 / n_videos
    r1 = result["test"]["t2v"]["R1"]
    val = result["best"]["t2v"]["R1"] if result["best"] else float("nan")
    model = CLIPViP.from_pretrained(tmp_path / "ft" / "best")
    res = evaluate_retrieval(model, load_tokenizer(str(world / "tokenizer"), max_length=cfg.model.max_length),
                             world / "train.jsonl", num_frames=cfg.model.num_frames,
                             image_size=model.config.vision.image_size, max_length=cfg.model.max_length,
                             keep_similarity=True)
    recs = read_jsonl(world / "train.jsonl")
    twin = twin_columns([record_id(r) for r in recs], [r.get("twin") for r in recs])
    pair_r1 = pair_recall_at_1(res["similarity"], res["text_to_video"], twin)
    print(f"\nsynthetic fine-tuning, 60 steps: on the {n_videos} training videos text->video R@1 {r1:.1f} "
          f"(chance {chance:.1f}), pair R@1 {pair_r1:.1f} (chance {2 * chance:.1f}); held-out val R@1 {val:.1f}")
    assert res["t2v"]["R1"] == pytest.approx(r1)  # the same model and protocol as the run's own test
    assert pair_r1 > 3 * 2 * chance


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(world: Path, tmp_path: Path) -> None:
    """The whole loop under ``torchrun`` (2 gloo ranks) ends with the parameters of one process on the same
    global batches (per-rank slices of each global batch + gather with gradient + DDP averaging), and its
    sharded evaluation gives the same tables."""
    import os
    import socket
    import subprocess
    import sys

    from clipvip.model.clipvip import CLIPViP

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from clipvip.config import CLIPViPConfig

    # A start whose temporal table is not zero: the world's twins are exact time reversals, so from a zero
    # table a 2-step model scores a twin pair within ~1e-7, and float rounding (which differs between one
    # process and two) would decide their order, i.e. the metrics, rather than the code under test.
    start = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    with torch.no_grad():
        te = start.vision_model.embeddings.temporal_embedding
        te.copy_(torch.randn(te.shape, generator=torch.Generator().manual_seed(0)))
    start.save_pretrained(tmp_path / "start")
    args = [str(REPO / "configs" / "synthetic_finetune.yaml"), f"data.root={world}", "data.generate_synthetic=false",
            f"model.init=pretrained:{tmp_path / 'start'}", "run.progress=false", "model.num_frames=4", "run.global_batch_size=8", "optim.max_steps=2",
            "run.eval_every=1000", "optim.lr=1e-3", "data.eval_batch_size=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "clipvip", "train", *args,
                          f"run.output_dir={tmp_path / 'two'}"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    from clipvip.train.loop import train

    one = train(load_config(args[0], args[1:] + [f"run.output_dir={tmp_path / 'one'}"]))
    a = CLIPViP.from_pretrained(tmp_path / "one" / "last").state_dict()
    b = CLIPViP.from_pretrained(tmp_path / "two" / "last").state_dict()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, f"2-rank run differs from one process by {worst}"
    # evaluation with videos sharded over the two ranks gives the tables of one process
    two_res = json.loads((tmp_path / "two" / "results.json").read_text())
    for split in ("best", "test"):
        for table in ("t2v", "v2t"):
            for key, value in one[split][table].items():
                assert two_res[split][table][key] == pytest.approx(value, abs=1e-6), (split, table, key)


@pytest.mark.slow
def test_pretraining_ocl_with_image_text_frozen_text_and_checkpointing(world: Path, tmp_path: Path) -> None:
    """Post-pretraining runs OCL variant (d) plus the image-text term; a frozen text tower stays untouched
    while the video tower (with activation checkpointing) moves. Its kept checkpoints feed
    ``clipvip curve --zero-shot`` end to end (the paper's Figure 1 pipeline)."""
    from clipvip.cli import main as cli_main
    from clipvip.model.clipvip import CLIPViP
    from clipvip.train.loop import _seed_all, build_model, train

    out = tmp_path / "pt"
    cfg = load_config(REPO / "configs" / "synthetic_pretrain.yaml", [
        f"data.root={world}", "data.generate_synthetic=false", f"run.output_dir={out}", "run.progress=false",
        "model.num_frames=4", "run.global_batch_size=8", "optim.max_steps=2", "data.image_text=images.jsonl",
        "run.freeze_text=true", "run.gradient_checkpointing=true", "run.log_every=1", "data.val=null",
        "run.keep_every=1"])
    train(cfg)
    _seed_all(cfg.run.seed)
    init = build_model(cfg).state_dict()
    after = CLIPViP.from_pretrained(out / "last").state_dict()

    # The curve tool finds the kept checkpoints (last/ and best/ are copies of step 2 and count once) and
    # scores each zero-shot with the fine-tuning recipe's evaluation settings.
    curve = tmp_path / "curve"
    assert cli_main(["curve", "--checkpoints", str(out), "--finetune", str(REPO / "configs" / "synthetic_finetune.yaml"),
                     "--out", str(curve), "--zero-shot", "--label", "ocl-d", "--device", "cpu",
                     f"data.root={world}", "data.generate_synthetic=false", "model.num_frames=4"]) == 0
    rows = json.loads((curve / "curve.json").read_text())["rows"]
    assert [(r["run"], r["step"], Path(r["checkpoint"]).name) for r in rows] == [
        ("ocl-d", s, f"step_{s:08d}") for s in (0, 1, 2)]
    assert all(r["split"] == "test" and 0 <= r["R1"] <= r["R5"] <= 100 and r["failures"] == 0 for r in rows)
    kept = {s: CLIPViP.from_pretrained(out / f"step_{s:08d}").state_dict() for s in (0, 2)}
    assert all(torch.equal(init[k], kept[0][k]) for k in init)  # the curve starts at the initial weights
    assert all(torch.equal(after[k], kept[2][k]) for k in after)  # ... and ends at the final ones
    text_keys = [k for k in init if k.startswith(("text_model.", "text_projection."))]
    vision_keys = [k for k in init if k.startswith("vision_model.encoder.")]
    assert text_keys and all(torch.equal(init[k], after[k]) for k in text_keys)
    assert any(not torch.equal(init[k], after[k]) for k in vision_keys)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_vsc", "train/loss_fc", "train/loss_image_text", "train/lr"} <= tags


@pytest.mark.slow
def test_group_sampler_cache_and_lr_mult_in_the_trainer_resume_exactly(world: Path, tmp_path: Path) -> None:
    """``data.group_by=twin`` + ``data.cache=memory`` + ``optim.lr_mult``: an interrupted and resumed run ends
    with the same parameters as an uninterrupted one, and the optimiser state holds the multiplied group."""
    from clipvip.model.clipvip import CLIPViP
    from clipvip.train.checkpoint import load_trainer_state
    from clipvip.train.loop import train

    common = ["optim.max_steps=5", "run.save_every=2", "run.eval_every=1000", "data.test=null",
              "data.group_by=twin", "data.cache=memory", "data.sampling=uniform",
              "optim.lr_mult={temporal_embedding: 10}"]
    train(tiny_cfg(world, tmp_path / "full", *common))
    cut = tmp_path / "cut"
    train(tiny_cfg(world, cut, *common), stop_after_steps=2)
    train(tiny_cfg(world, cut, *common))
    a = _params(CLIPViP.from_pretrained(tmp_path / "full" / "last"))
    b = _params(CLIPViP.from_pretrained(cut / "last"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    groups = load_trainer_state(tmp_path / "full" / "last")["optimizer"]["param_groups"]
    lrs = {g["lr_mult_key"]: g["initial_lr"] for g in groups}
    assert lrs["temporal_embedding"] == pytest.approx(10 * lrs[""])


@pytest.mark.slow
def test_image_text_task_trains_stage_zero(world: Path, tmp_path: Path) -> None:
    """``data.task=image_text`` trains on images.jsonl (PNG middle frames as one-frame videos)."""
    from clipvip.train.loop import train

    res = train(tiny_cfg(world, tmp_path / "it", "data.task=image_text", "data.train=images.jsonl",
                         "data.val=null", "data.test=null", "optim.max_steps=3", "data.sampling=uniform",
                         "data.cache=memory"))
    assert res["steps"] == 3 and res["final_loss"] is not None and res["final_loss"] > 0
    assert (tmp_path / "it" / "last" / "model.safetensors").is_file()


def test_cache_with_random_sampling_is_a_config_error(world: Path, tmp_path: Path) -> None:
    from clipvip.train.config import ConfigError
    from clipvip.train.loop import build_datasets

    cfg = tiny_cfg(world, tmp_path / "x", "data.cache=memory", "data.sampling=jitter")
    with pytest.raises(ConfigError, match="data.sampling=uniform"):
        build_datasets(cfg, tokenizer=None, image_size=32)
