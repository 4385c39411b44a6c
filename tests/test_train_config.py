"""Training recipes and overrides: typed loading, errors naming the key, reference §6 values in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipvip.cli import main as cli_main
from clipvip.train.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_are_typed_yaml_values() -> None:
    cfg = load_config(None, ["optim.lr=1e-5", "optim.betas=[0.9, 0.99]", "run.global_batch_size=8",
                             "model.attention=full", "data.val=null", "run.freeze_text=true"])
    assert cfg.optim.lr == pytest.approx(1e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.9, 0.99]
    assert cfg.run.global_batch_size == 8
    assert cfg.model.attention == "full"
    assert cfg.data.val is None
    assert cfg.run.freeze_text is True


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("training.lr=1", "training"),
    ("lr=1", "section.key"),
    ("run.precision=fp8", "run.precision"),
    ("run.seed=1.5", "run.seed"),
    ("run.select_on=train", "run.select_on"),
    ("model.init=foo", "model.init"),
    ("optim.lr=fast", "optim.lr"),
    ("run.keep_every=-1", "run.keep_every"),
])
def test_bad_overrides_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_the_key(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  lr: 1.0e-5\n  warmup_steps: 10\n")
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps"):
        load_config(recipe)


def test_per_device_batch_is_derived_from_the_global_batch() -> None:
    cfg = load_config(None, ["run.global_batch_size=128"])
    assert cfg.per_device_batch(8) == 16
    assert cfg.per_device_batch(1) == 128
    with pytest.raises(ConfigError, match="not divisible"):
        cfg.per_device_batch(3)


def test_cli_reports_config_errors_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", str(CONFIGS / "msrvtt_b32.yaml"), "optim.nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "optim.nope" in err and "Traceback" not in err


def test_print_config_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", str(CONFIGS / "msrvtt_b32.yaml"), "--print-config", "optim.lr=3e-6"])
    out = capsys.readouterr().out
    assert code == 0
    assert "lr: 3.0e-06" in out


# Reference §6.1/§6.2, written out by hand: (frames, max_len, lr, wd, epochs, clip, global batch, lr_mul prefix)
EXPECTED = {
    "msrvtt_b32": (12, 50, 1e-6, 0.2, 100, 1.0, 128, ""),
    "msrvtt_b16": (12, 50, 1e-6, 0.2, 100, 1.0, 128, ""),
    "didemo_b32": (12, 50, 1e-6, 0.2, 20, 1.0, 128, ""),
    "didemo_b16": (12, 70, 1e-6, 0.2, 20, 1.0, 128, "logit_scale"),
    "activitynet_b32": (32, 70, 1e-6, 0.2, 20, 1.0, 128, ""),
    "activitynet_b16": (32, 70, 1e-6, 0.2, 20, 1.0, 64, ""),
    "lsmdc_b32": (12, 50, 1e-6, 0.2, 10, 1.0, 128, ""),
    "lsmdc_b16": (12, 50, 1e-6, 0.2, 10, 1.0, 128, ""),
    "pretrain_b32": (12, 70, 5e-6, 0.05, 3, 5.0, 1024, ""),
    "pretrain_b16": (12, 70, 5e-6, 0.05, 3, 5.0, 1024, ""),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipes_match_the_reference(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    frames, max_len, lr, wd, epochs, clip, gbs, prefix = EXPECTED[name]
    assert cfg.model.num_frames == frames
    assert cfg.model.max_length == max_len
    assert cfg.optim.lr == pytest.approx(lr)
    assert cfg.optim.weight_decay == pytest.approx(wd)
    assert cfg.optim.epochs == epochs
    assert cfg.optim.grad_clip == clip
    assert cfg.optim.betas == [0.9, 0.98] and cfg.optim.eps == pytest.approx(1e-6)
    assert cfg.optim.warmup_ratio == pytest.approx(0.01)
    assert cfg.run.global_batch_size == gbs
    assert cfg.optim.lr_mul_prefix == prefix
    assert cfg.optim.lr_mul == (10 if prefix else 1)
    assert cfg.run.select_on == "val"  # never the test split unless asked for
    assert cfg.data.task == ("pretrain" if name.startswith("pretrain") else "retrieval")
    if name.startswith("pretrain"):
        assert cfg.run.ocl_variant == "d"
        assert cfg.run.keep_every > 0  # kept checkpoints for the post-pretraining curves
        assert cfg.model.init.startswith("clip:openai/clip-vit-base-patch")
    assert cfg.data.paragraph == name.startswith(("didemo", "activitynet"))


@pytest.mark.parametrize("name", ["synthetic_finetune", "synthetic_pretrain"])
def test_synthetic_recipes_load(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.root=/somewhere"])
    assert cfg.data.resolve(cfg.data.train) == f"/somewhere/{cfg.data.train}"
    assert cfg.model.init == "config:clipvip-tiny"


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("optim.max_steps=-5", "optim.max_steps must be >= 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("optim.epochs=inf", "optim.epochs must be a finite number"),
    ("optim.grad_clip=nan", "optim.grad_clip must be a finite number"),
    ("model.eval_num_frames=0", "model.eval_num_frames must be >= 1"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas\[1\] must be in \[0, 1\)"),
    ("run.log_every=0", "run.log_every must be >= 1"),
    ("run.device=gpu0", "run.device='gpu0' is not a torch device"),
])
def test_out_of_range_overrides_are_refused_naming_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("optim:\n  lr: 1.0e-5\n  weight_decay: 0.1\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*duplicate key 'lr' \(first at line 2\).*line 4"):
        load_config(recipe)
    recipe.write_text("optim:\n  lr: 1.0e-5\noptim:\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match="duplicate key 'optim'"):
        load_config(recipe)


def test_cuda_device_without_cuda_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, ["run.device=cuda"])
    with pytest.raises(ConfigError, match="run.device=cuda: CUDA is not available"):
        cfg.check_runtime()


def test_config_changes_split_safe_and_unsafe_keys() -> None:
    from clipvip.train.config import SAFE_TO_CHANGE, config_changes

    old = load_config(None, ["optim.lr=0.002"])
    new = load_config(None, ["optim.lr=0.5", "optim.max_steps=20", "run.log_every=1", "model.attention=full"])
    unsafe, safe = config_changes(old.to_dict(), new)
    assert unsafe == ["model.attention: None -> 'full'", "optim.lr: 0.002 -> 0.5"]
    assert safe == ["optim.max_steps: None -> 20", "run.log_every: 10 -> 1"]
    assert {"optim.max_steps", "run.eval_every", "run.log_every"} <= SAFE_TO_CHANGE
    # a key added to the package after the run started counts as unchanged at its default
    partial = old.to_dict()
    del partial["data"]["cache"]
    assert config_changes(partial, old) == ([], [])


def test_official_init_uses_the_bundled_vocabulary_offline() -> None:
    """The fine-tuning recipes start from official checkpoints with `model.tokenizer: null`: the tokenizer
    must be OpenAI's vocabulary shipped with the package, not a hub name that fails offline."""
    from clipvip.tokenizer import BUNDLED_BPE, load_tokenizer
    from clipvip.train.loop import tokenizer_spec

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "msrvtt_b32.yaml",
                      ["model.init=official:pretrain_clipvip_base_32.pt"])
    spec = tokenizer_spec(cfg)
    assert spec == str(BUNDLED_BPE) and Path(spec).is_file()
    assert load_tokenizer(spec)("a dog")["input_ids"][:1] == [49406]  # <|startoftext|>
