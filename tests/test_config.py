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
    assert cfg.logit_scale_init == pytest.approx(math.log(100.0))


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
