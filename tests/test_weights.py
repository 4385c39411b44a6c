"""Weights: from transformers CLIP, the official checkpoint layout (strict, no pickle code), our format,
and the ``clipvip convert`` command."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from clipvip.config import CLIPViPConfig
from clipvip.model import CLIPViP
from clipvip.weights import CheckpointError, infer_config


def _features(out):
    return out if torch.is_tensor(out) else out.pooler_output


@pytest.fixture(scope="module")
def hf_clip():
    from transformers import CLIPModel

    torch.manual_seed(2)
    return CLIPModel(CLIPViPConfig.from_name("clipvip-tiny").to_hf()).eval()


def _official_file(hf_clip, path, num_added=3, temporal=None, drop=None, reshape=None):
    """An official-layout checkpoint made from transformers' state dict: ``clipmodel.`` prefix, fp16,
    ``position_ids`` buffers, and the two CLIP-ViP keys."""
    width = hf_clip.config.vision_config.hidden_size
    state = {f"clipmodel.{k}": v.half() for k, v in hf_clip.state_dict().items()}
    state["clipmodel.vision_model.embeddings.position_ids"] = torch.arange(17).view(1, 17)
    state["clipmodel.text_model.embeddings.position_ids"] = torch.arange(77).view(1, 77)
    if num_added:
        state["clipmodel.vision_model.embeddings.added_cls"] = torch.randn(num_added, width).half()
    state["clipmodel.vision_model.embeddings.temporal_embedding"] = (
        temporal if temporal is not None else torch.randn(1, 12, width)).half()
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(3, 3).half()
    torch.save(state, path)
    return state


def test_official_layout_loads_and_reproduces_transformers(hf_clip, tmp_path):
    path = tmp_path / "pretrain_clipvip_tiny.pt"
    raw = _official_file(hf_clip, path, num_added=0, temporal=torch.zeros(1, 12, 48))
    config = CLIPViPConfig.from_name("clipvip-tiny", num_proxies=1)
    model = CLIPViP.from_official_checkpoint(path, config=config).eval()
    assert model.vision_model.embeddings.class_embedding.dtype == torch.float32
    # the reference: transformers' CLIPModel with the same (fp16-rounded) weights
    from transformers import CLIPModel

    ref = CLIPModel(config.to_hf()).eval()
    ref.load_state_dict({k[len("clipmodel."):]: v.float() for k, v in raw.items()
                         if "position_ids" not in k and "temporal" not in k}, strict=False)
    images = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[49406, 320, 1929, 49407, 49407], [49406, 320, 2533, 533, 49407]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        v_ref = torch.nn.functional.normalize(_features(ref.get_image_features(pixel_values=images)), dim=-1)
        t_ref = torch.nn.functional.normalize(_features(ref.get_text_features(input_ids=ids, attention_mask=mask)),
                                              dim=-1)
        torch.testing.assert_close(model.encode_video(images[:, None]), v_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(ids, mask), t_ref, atol=1e-5, rtol=0)


def test_official_layout_with_proxies_keeps_every_tensor(hf_clip, tmp_path):
    path = tmp_path / "ckpt.pt"
    raw = _official_file(hf_clip, path)
    model = CLIPViP.from_official_checkpoint(path, config=CLIPViPConfig.from_name("clipvip-tiny"))
    own = model.state_dict()
    for key, value in raw.items():
        if "position_ids" not in key:
            assert torch.equal(own[key[len("clipmodel."):]], value.float()), key


def test_missing_and_mismatched_keys_are_all_named(hf_clip, tmp_path):
    config = CLIPViPConfig.from_name("clipvip-tiny")
    path = tmp_path / "broken.pt"
    _official_file(hf_clip, path, drop="clipmodel.visual_projection.weight")
    with pytest.raises(CheckpointError, match="missing.*visual_projection.weight") as err:
        CLIPViP.from_official_checkpoint(path, config=config)
    assert str(path) in str(err.value)
    _official_file(hf_clip, path, reshape="clipmodel.vision_model.embeddings.patch_embedding.weight")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*patch_embedding.weight: checkpoint \(3, 3\)"):
        CLIPViP.from_official_checkpoint(path, config=config)
    # a B/16-shaped proxy table against a 1-proxy config: unexpected key named
    _official_file(hf_clip, path)
    with pytest.raises(CheckpointError, match="unexpected.*added_cls"):
        CLIPViP.from_official_checkpoint(path, config=config.replace(num_proxies=1))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.makedirs, (self.marker,))


def test_pickle_with_code_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"clipmodel.logit_scale": _Payload(str(marker))}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refusing"):
        CLIPViP.from_official_checkpoint(path)
    assert not marker.exists()


def test_architecture_inferred_from_shapes():
    state = {"vision_model.embeddings.patch_embedding.weight": torch.empty(768, 3, 16, 16),
             "vision_model.embeddings.added_cls": torch.empty(3, 768),
             "vision_model.embeddings.temporal_embedding": torch.empty(1, 12, 768)}
    config = infer_config(state)
    assert (config.vision.patch_size, config.num_proxies, config.temporal_size) == (16, 4, 12)
    state["vision_model.embeddings.patch_embedding.weight"] = torch.empty(768, 3, 32, 32)
    assert infer_config(state).vision.patch_size == 32
    state["vision_model.embeddings.patch_embedding.weight"] = torch.empty(48, 3, 8, 8)
    with pytest.raises(CheckpointError, match="config="):
        infer_config(state)


def test_from_clip_local_dir(hf_clip, tmp_path):
    hf_clip.save_pretrained(tmp_path / "clip")
    model = CLIPViP.from_clip(tmp_path / "clip", num_proxies=4)
    emb = model.vision_model.embeddings
    ref = hf_clip.state_dict()
    assert torch.equal(emb.class_embedding, ref["vision_model.embeddings.class_embedding"])
    assert torch.equal(emb.temporal_embedding, torch.zeros(1, 12, 48))
    assert emb.added_cls.shape == (3, 48) and 0.5 < float(emb.added_cls.detach().std()) < 1.5  # N(0, 1)
    assert math.isclose(float(model.logit_scale.detach()), 4.60, rel_tol=1e-6)  # official init, not ln 100
    assert torch.equal(model.state_dict()["text_model.encoder.layers.1.mlp.fc2.weight"],
                       ref["text_model.encoder.layers.1.mlp.fc2.weight"])


def test_save_and_load_round_trip_with_tokenizer(tmp_path):
    from clipvip.tokenizer import build_word_tokenizer, load_tokenizer

    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny", attention="masked")).eval()
    tok = load_tokenizer(build_word_tokenizer(["red dog"], tmp_path / "tok"))
    out = model.save_pretrained(tmp_path / "model", tokenizer=tok)
    model.save_pretrained(out, tokenizer=tok)  # overwriting an existing dir is atomic too
    loaded = CLIPViP.from_pretrained(out).eval()
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_tokenizer(out).convert_tokens_to_ids("dog</w>") == tok.convert_tokens_to_ids("dog</w>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tok"]  # no temp dirs left


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CLIPViP.from_pretrained(tmp_path / "nope")
    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    out = model.save_pretrained(tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        CLIPViP.from_pretrained(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CLIPViP.from_pretrained(out)


def test_convert_cli(hf_clip, tmp_path, capsys):
    from clipvip.cli import main

    path = tmp_path / "official.pt"
    _official_file(hf_clip, path)
    assert main(["convert", str(path), str(tmp_path / "out"), "--config", "clipvip-tiny"]) == 0
    converted = CLIPViP.from_pretrained(tmp_path / "out")
    direct = CLIPViP.from_official_checkpoint(path, config=CLIPViPConfig.from_name("clipvip-tiny"))
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in converted.state_dict().items())
    assert main(["convert", str(path), str(tmp_path / "out2")]) == 2  # tiny shapes: cannot infer
    assert "pass config=" in capsys.readouterr().err


def test_inflate_is_strict_seedable_and_keeps_or_resets_the_temperature():
    """One inflation path for transformers CLIP and our own 1-proxy image model (reference §1.3)."""
    from clipvip.weights import inflate

    image_cfg = CLIPViPConfig.from_name("clipvip-tiny", num_proxies=1)
    image = CLIPViP(image_cfg)
    with torch.no_grad():
        image.logit_scale.fill_(2.5)
        image.vision_model.embeddings.temporal_embedding.fill_(7.0)  # dropped: the temporal table starts at 0
    video_cfg = image_cfg.replace(num_proxies=4)
    a = inflate(image.state_dict(), video_cfg, generator=torch.Generator().manual_seed(5))
    b = inflate(image.state_dict(), video_cfg, generator=torch.Generator().manual_seed(5))
    expected = torch.randn(3, 48, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.vision_model.embeddings.added_cls, expected)
    assert torch.equal(b.vision_model.embeddings.added_cls, expected)
    assert torch.count_nonzero(a.vision_model.embeddings.temporal_embedding) == 0
    assert float(a.logit_scale.detach()) == 2.5  # the source's temperature by default
    assert math.isclose(float(inflate(image.state_dict(), video_cfg, logit_scale=math.log(100)).logit_scale.detach()),
                        math.log(100), rel_tol=1e-6)
    state = dict(image.state_dict(), stray=torch.zeros(1))
    with pytest.raises(CheckpointError, match=r"the image model(.|\n)*unexpected \(1\): stray"):
        inflate(state, video_cfg, source="the image model")


def _not_checkpoints(tmp_path):
    """Files that are not (complete) checkpoints, each made here: name -> path."""
    import os

    files = {"empty": tmp_path / "empty.pt", "text": tmp_path / "text.pt", "random": tmp_path / "random.pt",
             "half_zip": tmp_path / "half_zip.pt", "half_legacy": tmp_path / "half_legacy.pt",
             "numpy": tmp_path / "numpy.pt", "pickle5": tmp_path / "pickle5.pt"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello world\n")
    files["random"].write_bytes(os.urandom(2000))
    for name, zipped in (("half_zip", True), ("half_legacy", False)):
        full = tmp_path / f"{name}.full"
        torch.save({"clipmodel.logit_scale": torch.ones(())}, full, _use_new_zipfile_serialization=zipped)
        data = full.read_bytes()
        files[name].write_bytes(data[: len(data) // 2])
    import numpy as np

    with open(files["numpy"], "wb") as fh:
        np.save(fh, np.ones(3))
    with open(files["pickle5"], "wb") as fh:
        pickle.dump({"a": 1}, fh, protocol=5)
    return files


def test_files_that_are_not_checkpoints_get_one_clear_error_naming_the_file(tmp_path):
    files = _not_checkpoints(tmp_path)
    expected = {"empty": "is empty (0 bytes): not a checkpoint"}
    for name, path in files.items():
        with pytest.raises(CheckpointError) as err:  # before: IndexError (empty), "load failed: 101" (text)
            CLIPViP.from_official_checkpoint(path)
        message = str(err.value)
        assert str(path) in message, message
        assert expected.get(name, "not a checkpoint") in message, message
        assert "refusing" not in message  # these hold no code: they are simply not checkpoints


def test_checkpoints_without_a_state_dict_are_named(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    torch.save({"a": "text"}, tmp_path / "strings.pt")
    torch.save({}, tmp_path / "nothing.pt")
    for name, what in (("tensor", "Tensor"), ("strings", "non-tensor values"), ("nothing", "an empty dict")):
        with pytest.raises(CheckpointError, match=rf"{name}\.pt is not a checkpoint: expected a state dict of "
                                                  rf"tensors, got .*{what}"):
            CLIPViP.from_official_checkpoint(tmp_path / f"{name}.pt")


def test_config_values_torch_rejects_are_wrapped_naming_the_config(tmp_path):
    import json

    model = CLIPViP(CLIPViPConfig.from_name("clipvip-tiny"))
    out = model.save_pretrained(tmp_path / "m")
    good = json.loads((out / "config.json").read_text())
    for section, key, value in (("vision", "num_hidden_layers", 2.5), (None, "projection_dim", [32])):
        cfg = json.loads(json.dumps(good))
        (cfg[section] if section else cfg)[key] = value
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError) as err:  # before: a raw torch TypeError
            CLIPViP.from_pretrained(out)
        assert str(out / "config.json") in str(err.value)
