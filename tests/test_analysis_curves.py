"""Post-pretraining curves: checkpoint discovery and order, zero-shot and fine-tune sweeps, resume, PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipvip.analysis.curves import checkpoint_step, curve_series, find_checkpoints, run_curve
from clipvip.cli import main as cli_main


def _fake_model_dir(path: Path, marker: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    if marker is not None:
        (path / "checkpoint.json").write_text(json.dumps(marker))
    return path


def test_checkpoint_step_sources(tmp_path):
    assert checkpoint_step(_fake_model_dir(tmp_path / "step_000300")) == 300
    assert checkpoint_step(_fake_model_dir(tmp_path / "last", {"step": 120, "epoch": 1})) == 120
    d = _fake_model_dir(tmp_path / "x")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert checkpoint_step(d) == 7
    d = _fake_model_dir(tmp_path / "y")
    torch.save({"step": torch.tensor(55), "epoch": 0}, d / "trainer_state.pt")
    assert checkpoint_step(d) == 55
    assert checkpoint_step(_fake_model_dir(tmp_path / "best")) is None


def test_find_checkpoints_orders_dedupes_and_skips(tmp_path):
    run = tmp_path / "run"
    _fake_model_dir(run / "ckpt_step_1000")
    _fake_model_dir(run / "ckpt_step_200")
    _fake_model_dir(run / "last", {"step": 1000})  # same step as ckpt_step_1000: counted once
    _fake_model_dir(run / "best")  # no step anywhere: skipped
    _fake_model_dir(run / "periodic" / "checkpoint-50")  # two levels deep
    _fake_model_dir(run / ".last.tmp-abc", {"step": 5})  # hidden (an interrupted save): ignored
    (run / "tb").mkdir()
    refs = find_checkpoints(run, "subs")
    assert [(r.run, r.step, Path(r.path).name) for r in refs] == [
        ("subs", 50, "checkpoint-50"), ("subs", 200, "ckpt_step_200"), ("subs", 1000, "ckpt_step_1000")]
    with pytest.raises(ValueError, match="no model checkpoints"):
        find_checkpoints(run / "tb")
    with pytest.raises(FileNotFoundError):
        find_checkpoints(tmp_path / "nope")


def test_run_curve_with_custom_evaluator_resumes(tmp_path):
    runs = {}
    for name, slope in (("subs", 1.0), ("subs+caps", 2.0)):
        for step in (0, 100, 200):
            _fake_model_dir(tmp_path / name / f"step_{step:06d}")
        runs[name] = slope
    seen = []

    def evaluator(ref):
        seen.append((ref.run, ref.step))
        r1 = 10 + runs[ref.run] * ref.step / 10
        return {"t2v": {"R1": r1, "R5": r1 + 20, "R10": r1 + 30, "MdR": 5.0}, "failures": [], "split": "test"}

    out = tmp_path / "out"
    doc = run_curve([tmp_path / "subs", tmp_path / "subs+caps"], out, evaluator=evaluator, progress=False)
    assert seen == [("subs", 0), ("subs", 100), ("subs", 200), ("subs+caps", 0), ("subs+caps", 100),
                    ("subs+caps", 200)]
    assert curve_series(doc["rows"]) == {"subs": [(0, 10.0), (100, 20.0), (200, 30.0)],
                                         "subs+caps": [(0, 10.0), (100, 30.0), (200, 50.0)]}
    assert json.loads((out / "curve.json").read_text()) == doc
    with Image.open(out / "curve.png") as im:
        im.load()
        assert im.size == (640, 480)
    # A new checkpoint appears: only it is evaluated.
    _fake_model_dir(tmp_path / "subs" / "step_000300")
    seen.clear()
    doc = run_curve([tmp_path / "subs", tmp_path / "subs+caps"], out, evaluator=evaluator, progress=False)
    assert seen == [("subs", 300)] and len(doc["rows"]) == 7
    with pytest.raises(ValueError, match="different settings"):
        run_curve([tmp_path / "subs"], out, evaluator=evaluator, zero_shot=True, progress=False)


@pytest.fixture(scope="module")
def world_and_checkpoints(tmp_path_factory):
    """A tiny synthetic world and three tiny random CLIP-ViP checkpoints (steps 0, 100, 200) with its tokenizer."""
    from clipvip.config import CLIPViPConfig
    from clipvip.data.annotations import read_jsonl, write_jsonl
    from clipvip.data.synthetic import generate_world
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("curve")
    world = generate_world(root / "world", num_videos=6, seed=0)
    tok = load_tokenizer(world.tokenizer)
    run = root / "run"
    for i, step in enumerate((0, 100, 200)):
        torch.manual_seed(i)
        model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
        with torch.no_grad():  # twins are time reversals: a zero temporal table would score them as exact ties
            model.vision_model.embeddings.temporal_embedding.normal_()
        model.save_pretrained(run / f"step_{step:06d}", tokenizer=tok)
    # All splits in one file, so the sweep trains and evaluates on every clip whatever the split sizes.
    records = [r for path in (world.train, world.val, world.test) for r in read_jsonl(path)]
    write_jsonl(records, world.root / "all.jsonl")
    recipe = root / "recipe.yaml"
    recipe.write_text(
        "model:\n  init: config:clipvip-tiny\n  num_frames: 4\n  max_length: 16\n"
        f"data:\n  root: {world.root}\n  train: all.jsonl\n  test: all.jsonl\n  eval_batch_size: 4\n"
        "optim:\n  lr: 1.0e-4\n  max_steps: 2\n  warmup_ratio: 0.0\n"
        "run:\n  global_batch_size: 2\n  progress: false\n  select_on: test\n  device: cpu\n"
    )
    return world, run, recipe


def test_curve_cli_zero_shot_on_synthetic_world(world_and_checkpoints, tmp_path, capsys):
    world, run, recipe = world_and_checkpoints
    out = tmp_path / "zs"
    rc = cli_main(["curve", "--checkpoints", str(run), "--finetune", str(recipe), "--out", str(out),
                   "--zero-shot", "--label", "synthetic", "--device", "cpu"])
    assert rc == 0
    doc = json.loads((out / "curve.json").read_text())
    assert doc["mode"] == "zero-shot"
    assert [(r["run"], r["step"]) for r in doc["rows"]] == [("synthetic", 0), ("synthetic", 100), ("synthetic", 200)]
    for r in doc["rows"]:
        assert 0.0 <= r["R1"] <= r["R5"] <= r["R10"] <= 100.0 and r["failures"] == 0
    with Image.open(out / "curve.png") as im:
        im.load()
        assert im.size == (640, 480)
    assert "| synthetic | 200 |" in capsys.readouterr().out

    # Independent check of one row: decode, transform and encode the eval split by hand and score it with
    # a loop-based R@k (a text's rank = 1 + number of videos scoring strictly higher than its own).
    from clipvip.data.annotations import read_jsonl
    from clipvip.data.transforms import VideoTransform
    from clipvip.data.video import load_frames
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import load_tokenizer, tokenize

    model = CLIPViP.from_pretrained(run / "step_000100").eval()
    tok = load_tokenizer(run / "step_000100")
    records = read_jsonl(world.root / "all.jsonl")
    assert len(records) == 6
    texts = [t for rec in records for t in rec["texts"]]
    t2v = [i for i, rec in enumerate(records) for _ in rec["texts"]]
    transform = VideoTransform(32)
    with torch.no_grad():
        pixels = torch.stack([transform(load_frames(world.root / rec["video"], num_frames=4)) for rec in records])
        v = model.encode_video(pixels)
        ids = tokenize(tok, texts, 16)
        t = model.encode_text(ids["input_ids"], ids["attention_mask"])
    sim = (t @ v.T).tolist()
    ranks = [1 + sum(1 for s in row if s > row[t2v[i]]) for i, row in enumerate(sim)]
    for k in (1, 5, 10):
        expected = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        assert doc["rows"][1][f"R{k}"] == pytest.approx(expected, abs=1e-6)

    # Resume: nothing left to do, the table is unchanged.
    assert cli_main(["curve", "--checkpoints", str(run), "--finetune", str(recipe), "--out", str(out),
                     "--zero-shot", "--label", "synthetic", "--device", "cpu"]) == 0
    assert json.loads((out / "curve.json").read_text()) == doc


@pytest.mark.slow
def test_curve_finetune_mode_on_synthetic_world(world_and_checkpoints, tmp_path):
    world, run, recipe = world_and_checkpoints
    two = tmp_path / "two"  # two of the three checkpoints keep this test short
    two.mkdir()
    for name in ("step_000000", "step_000200"):
        (two / name).symlink_to(run / name, target_is_directory=True)
    out = tmp_path / "ft"
    doc = run_curve([two], out, finetune=recipe, labels=["synthetic"], progress=False)
    assert doc["mode"] == "finetune" and [r["step"] for r in doc["rows"]] == [0, 200]
    for r in doc["rows"]:
        assert r["split"] == "test" and 0.0 <= r["R1"] <= 100.0
        assert (Path(r["output_dir"]) / "best" / "config.json").is_file()
        assert r["output_dir"].startswith(str(out / "runs" / "synthetic"))
    with Image.open(out / "curve.png") as im:
        assert im.size == (640, 480)


def test_zero_shot_uses_the_frames_recorded_in_the_checkpoint(world_and_checkpoints, tmp_path, monkeypatch):
    """A checkpoint validated on 3 frames is evaluated on 3, not the recipe's 4, unless frames are given."""
    from clipvip.analysis import curves
    from clipvip.config import FrameRecord
    from clipvip.model.clipvip import CLIPViP
    from clipvip.tokenizer import load_tokenizer
    from clipvip.train import evaluate as ev
    from clipvip.train.config import load_config

    _world, run, recipe = world_and_checkpoints
    model = CLIPViP.from_pretrained(run / "step_000100")
    model.config.frames = FrameRecord(train_num_frames=3, train_sampling="jitter", eval_num_frames=3,
                                      eval_sampling="uniform")
    model.save_pretrained(tmp_path / "m", tokenizer=load_tokenizer(run / "step_000100"))
    seen = []
    monkeypatch.setattr(ev, "evaluate_retrieval", lambda *a, **k: seen.append(k["num_frames"]) or {})
    ref = curves.CheckpointRef(run="r", step=0, path=str(tmp_path / "m"))
    curves.zero_shot_evaluator(load_config(recipe), device="cpu")(ref)
    curves.zero_shot_evaluator(load_config(recipe, ["model.num_frames=5"]), device="cpu", frames_given=True)(ref)
    plain = curves.CheckpointRef(run="r", step=0, path=str(run / "step_000100"))  # nothing recorded
    curves.zero_shot_evaluator(load_config(recipe), device="cpu")(plain)
    assert seen == [3, 5, 4]


@pytest.mark.parametrize("argv, needle", [
    (["--checkpoints", "{missing}", "--finetune", "{recipe}"], "--checkpoints"),
    (["--checkpoints", "{empty}", "--finetune", "{missing}"], "--finetune"),
    (["--checkpoints", "{empty}", "--finetune", "{recipe}", "optim.lr=nan"], "optim.lr must be a finite number"),
    (["--checkpoints", "{empty}", "--finetune", "{recipe}", "--label", "a", "--label", "b"], "--label"),
    (["--checkpoints", "{empty}", "--finetune", "{recipe}", "--device", "gpu0"], "--device gpu0"),
])
def test_curve_cli_errors_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  init: config:clipvip-tiny\n")
    (tmp_path / "empty").mkdir()
    fill = {"missing": str(tmp_path / "nope"), "recipe": str(recipe), "empty": str(tmp_path / "empty")}
    args = [a.format(**fill) for a in argv]
    assert cli_main(["curve", *args, "--out", str(tmp_path / "out"), "--zero-shot"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
