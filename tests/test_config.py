"""CLIPViPConfig: registry, JSON round-trip, validation and mapping from transformers' CLIPConfig."""

from __future__ import annotations

import math

import pytest

from clipvip.config import CLIPViPConfig, available_configs


def test_registry_has_the_named_architectures():
    assert {"clipvip-b32", "clipvip-b16", "clipvip-tiny"} <= set(available_configs())


@pytest.mark.parametrize("name,patch,num_patches", [("clipvip-b32", 32, 49), ("clipvip-b16", 16, 196)])
def test_base_sizes_match_openai_clip(name, patch, num_patches):
    cfg = CLIPViPConfig.from_name(name)
    assert cfg.vision.patch_size == patch and cfg.vision.num_patches == num_patches
    assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.num_attention_heads) == (768, 12, 12)
    assert (cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.text.num_attention_heads) == (512, 12, 8)
    assert cfg.projection_dim == 512 and cfg.num_proxies == 4 and cfg.temporal_size == 12
    assert cfg.attention == "proxy" and cfg.use_temporal_embedding
    # the official wrapper and every released config start at 4.60 (not ln 100 = 4.60517)
    assert cfg.logit_scale_init == 4.60 and CLIPViPConfig().logit_scale_init == 4.60


def test_json_round_trip(tmp_path):
    cfg = CLIPViPConfig.from_name("clipvip-tiny", attention="masked", num_proxies=2)
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert CLIPViPConfig.from_json(path) == cfg
    assert CLIPViPConfig.from_json(cfg.to_json()) == cfg


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="attention"):
        CLIPViPConfig(attention="sparse")
    with pytest.raises(ValueError, match="num_proxies"):
        CLIPViPConfig(num_proxies=0)
    with pytest.raises(ValueError, match="unknown config field 'proxies'"):
        CLIPViPConfig().replace(proxies=3)
    with pytest.raises(KeyError, match="clipvip-huge"):
        CLIPViPConfig.from_name("clipvip-huge")
    with pytest.raises(ValueError, match=r"vision: unknown field\(s\) \['width'\]"):
        CLIPViPConfig.from_dict({"vision": {"width": 3}})


def test_from_hf_copies_tower_sizes():
    from transformers import CLIPConfig

    hf = CLIPConfig(
        text_config={"hidden_size": 40, "num_hidden_layers": 3, "num_attention_heads": 5, "intermediate_size": 80},
        vision_config={"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "image_size": 48,
                       "patch_size": 16, "intermediate_size": 50},
        projection_dim=20,
    )
    cfg = CLIPViPConfig.from_hf(hf, num_proxies=2, temporal_size=8)
    assert (cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.text.num_attention_heads) == (40, 3, 5)
    assert (cfg.vision.hidden_size, cfg.vision.image_size, cfg.vision.patch_size) == (24, 48, 16)
    assert cfg.projection_dim == 20 and cfg.num_proxies == 2 and cfg.temporal_size == 8
    # and back: a transformers config with the same sizes
    back = cfg.to_hf()
    assert back.vision_config.hidden_size == 24 and back.text_config.intermediate_size == 80


def test_from_hf_local_dir(tmp_path):
    from transformers import CLIPConfig

    CLIPConfig(vision_config={"patch_size": 16}).save_pretrained(tmp_path)
    assert CLIPViPConfig.from_hf(str(tmp_path)).vision.patch_size == 16


def _tiny_json(tmp_path, **edits):
    import json

    data = CLIPViPConfig.from_name("clipvip-tiny").to_dict()
    for key, value in edits.items():
        if "." in key:
            sec, sub = key.split(".")
            data[sec][sub] = value
        else:
            data[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("key,value,needle", [
    ("use_temporal_embedding", "false", "use_temporal_embedding must be true or false, got 'false'"),
    ("num_proxies", "4", "num_proxies must be an integer, got '4'"),
    ("num_proxies", 4.0, "num_proxies must be an integer"),
    ("num_proxies", True, "num_proxies must be an integer"),
    ("vision.hidden_size", "48", "vision.hidden_size must be an integer"),
    ("vision.hidden_size", 0, "vision.hidden_size must be >= 1"),
    ("vision.layer_norm_eps", -1.0, "vision.layer_norm_eps must be > 0"),
    ("text.attention_dropout", 1.5, r"text.attention_dropout must be in \[0, 1\)"),
    ("text.eos_token_id", 10**6, "text.eos_token_id must be in"),
    ("logit_scale_init", "4.6", "logit_scale_init must be a number"),
    ("projection_dim", -3, "projection_dim must be >= 1"),
    ("attention", 3, "attention must be a string"),
    ("vision", [1, 2], "vision must be an object of VisionConfig fields"),
    ("frames", {"eval_num_frames": 0}, "frames.eval_num_frames must be >= 1"),
    ("frames", {"eval_sampling": "best"}, "frames.eval_sampling must be one of"),
    ("frames", {"eval_frames": 8}, r"frames: unknown field\(s\) \['eval_frames'\]"),
])
def test_config_json_is_checked_strictly_naming_file_key_and_type(tmp_path, key, value, needle):
    path = _tiny_json(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=needle) as info:
        CLIPViPConfig.from_json(path)
    assert str(path) in str(info.value)


def test_config_json_refuses_duplicate_keys_and_non_objects(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"num_proxies": 4, "num_proxies": 2}')
    with pytest.raises(ValueError, match="duplicate key 'num_proxies'"):
        CLIPViPConfig.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        CLIPViPConfig.from_json(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="not UTF-8"):
        CLIPViPConfig.from_json(path)


def test_frame_record_round_trips(tmp_path):
    cfg = CLIPViPConfig.from_name("clipvip-tiny").replace(
        frames={"train_num_frames": 8, "train_sampling": "jitter", "eval_num_frames": 8, "eval_sampling": "uniform"})
    cfg.to_json(tmp_path / "config.json")
    back = CLIPViPConfig.from_json(tmp_path / "config.json")
    assert back == cfg and back.frames.eval_num_frames == 8
    # configs written before frames were recorded still load, with no record
    assert CLIPViPConfig.from_name("clipvip-tiny").frames is None
