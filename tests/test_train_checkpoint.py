"""Checkpoint folders and the resumable sampler: the pieces exact resume is made of."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clipvip.train import checkpoint as ckpt
from clipvip.train.sampler import ResumableBatchSampler


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = ckpt.capture_rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.normal()), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    ckpt.restore_rng_state(loaded)
    got = (random.random(), float(np.random.normal()), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


class _Saveable(torch.nn.Module):
    """Stands in for CLIPViP: writes the files a saved model folder has."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3))

    def save_pretrained(self, directory: Path, tokenizer: object = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text("{}")
        torch.save({"w": self.w.detach()}, directory / "weights.pt")
        return directory


def _state(step: int) -> dict:
    """A minimal trainer state with the schema the trainer writes."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    return {"optimizer": opt.state_dict(), "scheduler": {}, "scaler": {}, "world_size": 1,
            "run": {"step": step, "epoch": 0, "step_in_epoch": step, "best_metric": None, "history": []},
            "rng": [ckpt.capture_rng_state()]}


def test_save_replaces_last_atomically_and_copies_best(tmp_path: Path) -> None:
    model = _Saveable()
    first = ckpt.save_checkpoint(tmp_path, "last", model, None, _state(1), {"step": 1})
    assert ckpt.load_trainer_state(first)["run"]["step"] == 1
    ckpt.save_checkpoint(tmp_path, "last", model, None, _state(2), {"step": 2})
    assert ckpt.load_trainer_state(tmp_path / "last")["run"]["step"] == 2
    best = ckpt.copy_checkpoint(tmp_path / "last", tmp_path, "best", {"selected_on": "val"})
    assert ckpt.is_complete(best) and ckpt.load_trainer_state(best)["run"]["step"] == 2
    # nothing temporary is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    model = _Saveable()
    ckpt.save_checkpoint(tmp_path, "last", model, None, _state(7), {"step": 7})
    # A crash between "move the old folder aside" and "move the new one in": only the aside copy exists,
    # plus a half-written temporary folder without its completeness marker.
    os.replace(tmp_path / "last", tmp_path / ".last.old-1-2")
    (tmp_path / ".last.tmp-x").mkdir()
    (tmp_path / ".last.tmp-x" / "config.json").write_text("{}")
    found = ckpt.find_checkpoint(tmp_path, "last")
    assert found == tmp_path / "last"
    assert ckpt.load_trainer_state(found)["run"]["step"] == 7
    assert ckpt.find_checkpoint(tmp_path / "nothing", "last") is None


def test_trainer_state_refuses_pickled_objects(tmp_path: Path) -> None:
    (tmp_path / "last").mkdir()
    torch.save({"obj": _Saveable()}, tmp_path / "last" / ckpt.STATE_FILE)
    with pytest.raises(ckpt.CheckpointStateError, match="trainer_state.pt"):
        ckpt.load_trainer_state(tmp_path / "last")


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a = ResumableBatchSampler(20, 4, seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    a.set_epoch(2)
    first = list(a)
    b = ResumableBatchSampler(20, 4, seed=1)
    torch.manual_seed(999)
    b.set_epoch(2)
    assert list(b) == first and len(first) == 5
    b.set_epoch(3)
    assert list(b) != first
    assert sorted(i for batch in first for i in batch) == list(range(20))


def test_sampler_skips_consumed_batches() -> None:
    s = ResumableBatchSampler(22, 4, seed=0)
    s.set_epoch(1)
    full = list(s)
    assert len(full) == 5  # 22 // 4, incomplete batch dropped
    s.set_epoch(1, start_batch=3)
    assert list(s) == full[3:] and len(s) == 2


def test_rank_slices_rebuild_the_single_process_global_batch() -> None:
    single = ResumableBatchSampler(24, 8, seed=5)
    single.set_epoch(0)
    ranks = [ResumableBatchSampler(24, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    for r in ranks:
        r.set_epoch(0)
    per_rank = [list(r) for r in ranks]
    for step, global_batch in enumerate(single):
        assert per_rank[0][step] + per_rank[1][step] == global_batch


def test_sampler_refuses_a_dataset_smaller_than_one_global_batch() -> None:
    with pytest.raises(ValueError, match="global_batch_size"):
        ResumableBatchSampler(5, 4, world_size=2)


def _one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(ckpt.CheckpointStateError, match=match) as info:
        ckpt.load_trainer_state(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(folder / ckpt.STATE_FILE) in msg and "run.resume=never" in msg
    return msg


def test_damaged_or_foreign_trainer_states_are_one_line_errors(tmp_path: Path) -> None:
    folder = tmp_path / "last"
    folder.mkdir()
    file = folder / ckpt.STATE_FILE
    _one_line_error(folder, "no trainer state")
    file.write_bytes(b"")
    _one_line_error(folder, "empty file")
    torch.save(_state(3), file)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # half-written
    _one_line_error(folder, "not a readable trainer state")
    file.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    _one_line_error(folder, "not a readable trainer state")
    torch.save({"w": torch.zeros(3)}, file)  # a foreign (weights-only) file
    _one_line_error(folder, "no 'optimizer' entry")
    torch.save([1, 2, 3], file)
    _one_line_error(folder, "holds a list")
    bad = _state(3)
    bad["run"]["step"] = "3"
    torch.save(bad, file)
    _one_line_error(folder, "run.step is '3'")
    bad = _state(3)
    bad["rng"] = []
    torch.save(bad, file)
    _one_line_error(folder, "'rng' holds no RNG states")
    torch.save(_state(3), file)
    assert ckpt.load_trainer_state(folder)["run"]["step"] == 3


def test_truncated_model_weights_are_a_one_line_error(tmp_path: Path) -> None:
    from clipvip.config import CLIPViPConfig
    from clipvip.model.clipvip import CLIPViP

    torch.manual_seed(0)
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    last = ckpt.save_checkpoint(tmp_path, "last", model, None, _state(1), {"step": 1})
    weights = last / "model.safetensors"
    data = weights.read_bytes()
    for cut in (data[: len(data) // 2], b"", data[:7]):
        weights.write_bytes(cut)
        with pytest.raises(ckpt.CheckpointStateError, match="model.safetensors: unreadable weights") as info:
            ckpt.load_model_weights_(model, last)
        assert "\n" not in str(info.value)


def test_leftover_temporary_folders_are_removed_but_nothing_else(tmp_path: Path) -> None:
    model = _Saveable()
    ckpt.save_checkpoint(tmp_path, "last", model, None, _state(4), {"step": 4})
    ckpt.copy_checkpoint(tmp_path / "last", tmp_path, "best")
    leftovers = [".last.tmp-abc123", ".last.old-12-3456", ".best.tmp-x", ".step_00000010.tmp-y",
                 ".step_00000010.stale-1-2"]
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x" * 10)
    keep = [".last.notes", "my.last.tmp-backup", "last.tmp-1"]  # not names the trainer writes
    for name in keep:
        (tmp_path / name).mkdir()
    removed = ckpt.remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best", "last", *keep])


def test_aside_copy_is_kept_when_it_is_the_only_one(tmp_path: Path) -> None:
    model = _Saveable()
    ckpt.save_checkpoint(tmp_path, "best", model, None, _state(4), {"step": 4})
    os.replace(tmp_path / "best", tmp_path / ".best.old-1-2")
    assert ckpt.remove_leftovers(tmp_path) == []
    assert ckpt.find_checkpoint(tmp_path, "best") == tmp_path / "best"


# ------------------------------------------------------------------------------------------ whole runs
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipvip.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("ckpt_world")
    generate_world(root, num_videos=60, seed=0, num_frames=8)
    return root


def _cfg(world: Path, out: Path, *extra: str):
    from clipvip.train.config import load_config

    return load_config(REPO / "configs" / "synthetic_finetune.yaml", [
        f"data.root={world}", "data.generate_synthetic=false", f"run.output_dir={out}", "run.progress=false",
        "model.num_frames=4", "run.global_batch_size=8", "optim.lr=1e-3", "data.eval_batch_size=64",
        "optim.max_steps=2", "run.eval_every=1", *extra])


def test_kill_between_last_and_best_is_repaired_on_resume(world: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from clipvip.train import loop

    out = tmp_path / "run"
    real = loop.publish_best

    def killed(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt  # the process dies after last/ is saved, before best/ is published

    monkeypatch.setattr(loop, "publish_best", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_cfg(world, out))
    assert (out / "last").is_dir() and not (out / "best").exists()
    assert ckpt.load_trainer_state(out / "last")["run"]["best_step"] == 1
    (out / ".last.tmp-killed").mkdir()  # what a kill inside a checkpoint write leaves
    (out / ".last.tmp-killed" / "model.safetensors").write_bytes(b"x" * 100)
    monkeypatch.setattr(loop, "publish_best", real)
    result = loop.train(_cfg(world, out))
    assert not list(out.glob(".last.*")) and not list(out.glob(".best.*"))
    marker = __import__("json").loads((out / "best" / ckpt.MARKER_FILE).read_text())
    # best/ and the recorded best agree: results.json is read from best/ itself
    assert result["best_step"] == marker["step"]
    assert result["best_value"] == marker["select_value"]
    history = {h["step"]: h for h in result["history"]}
    assert history[marker["step"]]["is_best"]
    assert result["test_checkpoint"]["name"] == "best" and f"step {marker['step']}" in result["test_checkpoint"]["label"]


def test_final_test_says_when_it_used_last(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from clipvip.cli.train import _print_result
    from clipvip.metrics import format_table
    from clipvip.train import loop

    monkeypatch.setattr(loop, "publish_best", lambda *a, **k: None)  # best/ never reaches the disk
    result = loop.train(_cfg(world, tmp_path / "run", "optim.max_steps=1"))
    assert result["best"] is None and "best_step" not in result
    assert result["test_checkpoint"]["name"] == "last"
    _print_result(result, format_table)
    out = capsys.readouterr().out
    assert "test split, LAST checkpoint (last/, step 1; there is no best/)" in out
    assert "test split, best checkpoint" not in out


def test_resume_refuses_a_changed_config_unless_safe_or_allowed(world: Path, tmp_path: Path) -> None:
    from clipvip.train.config import ConfigError
    from clipvip.train.loop import train

    out = tmp_path / "run"
    assert train(_cfg(world, out, "optim.max_steps=3", "data.test=null"), stop_after_steps=1)["steps"] == 1
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"refusing to resume .*optim\.lr: 0\.001 -> 0\.5; "
                                          r"run\.global_batch_size: 8 -> 16.*--allow-config-change"):
        train(_cfg(world, out, "optim.max_steps=3", "data.test=null", "optim.lr=0.5", "run.global_batch_size=16"))
    assert (out / "config.yaml").read_text() == before  # the refused run changed nothing
    # safe keys (documented in docs/training.md) may change
    assert train(_cfg(world, out, "optim.max_steps=3", "data.test=null", "run.log_every=1"),
                 stop_after_steps=2)["steps"] == 2
    result = train(_cfg(world, out, "optim.max_steps=3", "data.test=null", "optim.lr=0.5"),
                   allow_config_change=True)
    assert result["steps"] == 3
    # allowed: the run continued with what config.yaml now says, not the restored learning rate
    state = ckpt.load_trainer_state(out / "last")
    assert state["config"]["optim"]["lr"] == 0.5 and "lr: 0.5" in (out / "config.yaml").read_text()
    base = state["scheduler"]["base_lrs"]  # 0.5, and 10x that for the recipe's lr_mult groups
    assert min(base) == pytest.approx(0.5) and all(b >= 0.5 - 1e-9 for b in base)


def test_bad_trainer_state_or_init_leaves_nothing_behind(world: Path, tmp_path: Path) -> None:
    from clipvip.train.config import ConfigError
    from clipvip.train.loop import train

    out = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="model.init='config:nosuch'"):
        train(_cfg(world, out, "model.init=config:nosuch"))
    with pytest.raises(ConfigError, match="model.tokenizer"):
        train(_cfg(world, out, "model.tokenizer=/nonexistent/tok"))
    assert not out.exists()  # no folder holding only config.yaml
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    (mine / "best" / "photo.jpg").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="is not a checkpoint written by clipvip train"):
        train(_cfg(world, mine))
    assert sorted(p.name for p in mine.rglob("*")) == ["best", "photo.jpg"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        train(_cfg(world, tmp_path / "afile"))
    run = tmp_path / "run"
    train(_cfg(world, run, "data.test=null"), stop_after_steps=1)
    (run / "last" / ckpt.STATE_FILE).write_bytes(b"")
    before = (run / "config.yaml").read_text()
    with pytest.raises(ckpt.CheckpointStateError, match="trainer_state.pt: empty file"):
        train(_cfg(world, run, "data.test=null"))
    assert (run / "config.yaml").read_text() == before


def test_saved_models_record_their_frames_and_load_uses_them(world: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import clipvip
    from clipvip.config import CLIPViPConfig
    from clipvip.train.loop import train

    out = tmp_path / "run"
    train(_cfg(world, out, "data.test=null", "optim.max_steps=1", "model.eval_num_frames=6"))
    cfg = CLIPViPConfig.from_json(out / "best" / "config.json")
    assert (cfg.frames.train_num_frames, cfg.frames.train_sampling) == (4, "jitter")
    assert (cfg.frames.eval_num_frames, cfg.frames.eval_sampling) == (6, "uniform")
    assert cfg.temporal_size == 12  # the architecture's size is not what the model was validated with
    with caplog.at_level(logging.INFO, logger="clipvip"):
        pipe = clipvip.load(out / "best", device="cpu")
    assert pipe.num_frames == 6
    assert any("6 frames" in r.getMessage() and "recorded" in r.getMessage() for r in caplog.records)
    assert clipvip.load(out / "best", device="cpu", num_frames=3).num_frames == 3


def test_cli_errors_are_one_line_exit_2(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipvip.cli import main

    base = [str(REPO / "configs" / "synthetic_finetune.yaml"), f"data.root={world}", "data.generate_synthetic=false",
            f"run.output_dir={tmp_path / 'run'}"]
    for extra, needle in ((["optim.lr=nan"], "optim.lr"), (["model.init=config:nosuch"], "model.init"),
                          (["optim.grad_clip=nan"], "optim.grad_clip"), (["--bogus"], "--bogus")):
        assert main(["train", *base, *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ synthetic world
def _gen_cfg(root: Path, *extra: str):
    from clipvip.train.config import load_config

    return load_config(REPO / "configs" / "synthetic_finetune.yaml", [f"data.root={root}", *extra])


@pytest.fixture()
def fake_world(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the generator by one that writes the world's annotation files (and records its calls)."""
    from clipvip.data import synthetic

    calls: list[Path] = []

    def generate_world(out_dir: str | Path, **kw: object) -> None:
        calls.append(Path(out_dir))
        for name in ("train", "val", "test", "pretrain", "images"):
            (Path(out_dir) / f"{name}.jsonl").write_text("{}\n")

    monkeypatch.setattr(synthetic, "generate_world", generate_world)
    return calls


def test_synthetic_world_is_generated_only_into_its_own_or_an_empty_folder(tmp_path: Path,
                                                                            fake_world: list[Path]) -> None:
    from clipvip.atomic import is_owned
    from clipvip.train.config import ConfigError
    from clipvip.train.loop import SYNTHETIC_OWNER, maybe_generate_synthetic

    new = tmp_path / "new"
    maybe_generate_synthetic(_gen_cfg(new))
    assert fake_world == [new] and is_owned(new, SYNTHETIC_OWNER)
    maybe_generate_synthetic(_gen_cfg(new))  # complete: nothing to do
    assert len(fake_world) == 1
    (new / "train.jsonl").unlink()  # our own world, incomplete: finished
    maybe_generate_synthetic(_gen_cfg(new))
    assert len(fake_world) == 2

    # A real dataset folder without train.jsonl: nothing is written into it.
    dataset = tmp_path / "msrvtt"
    dataset.mkdir()
    for name, text in (("val.jsonl", "mine\n"), ("test.jsonl", "mine too\n")):
        (dataset / name).write_text(text)
    with pytest.raises(ConfigError, match=r"data.train='train.jsonl'.*holds files the synthetic world did not create"):
        maybe_generate_synthetic(_gen_cfg(dataset))
    assert sorted(p.name for p in dataset.iterdir()) == ["test.jsonl", "val.jsonl"]
    assert (dataset / "val.jsonl").read_text() == "mine\n"
    assert len(fake_world) == 2


def test_a_misspelt_data_train_is_an_error_not_a_regeneration(tmp_path: Path, fake_world: list[Path]) -> None:
    from clipvip.train.config import ConfigError
    from clipvip.train.loop import maybe_generate_synthetic

    world = tmp_path / "world"
    maybe_generate_synthetic(_gen_cfg(world))
    (world / "videos").mkdir()
    (world / "videos" / "v0.mp4").write_bytes(b"precious")
    with pytest.raises(ConfigError, match=rf"data.train='trian.jsonl': {world / 'trian.jsonl'} not found"):
        maybe_generate_synthetic(_gen_cfg(world, "data.train=trian.jsonl"))
    assert len(fake_world) == 1 and (world / "videos" / "v0.mp4").read_bytes() == b"precious"
