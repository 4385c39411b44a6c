"""Loading and saving CLIP-ViP weights: transformers CLIP, the official checkpoints, our own format.

Nothing here executes pickled code: ``.pt`` files go through ``torch.load(weights_only=True)`` and our own
format is safetensors + JSON. Every loader is strict: the official loader skips mismatched keys silently,
which is how users ended up fine-tuning from random patch embeddings ("R@1 = 0", reference §7.6).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clipvip.atomic import follow_umask, make_temp_dir
from clipvip.config import CLIPViPConfig
from clipvip.model.clipvip import CLIPViP

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OFFICIAL_PREFIX = "clipmodel."
#: The weight files of a transformers model directory (a cached hub snapshot counts if it has one).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded exactly; the message names the file and every offending key."""


# ---------------------------------------------------------------------------------------------- strict load
def load_state_dict_strict(model: CLIPViP, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``model`` or raise :class:`CheckpointError` listing every missing, unexpected and
    shape-mismatched key at once (one round trip to fix a conversion, not one per key)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        lines = [f"cannot load {source} into a CLIP-ViP model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, value in state.items():
            try:
                own[key].copy_(value.to(own[key].dtype))
            except (RuntimeError, TypeError) as exc:
                raise CheckpointError(f"cannot load {source}: tensor {key} ({value.dtype}) does not fit the "
                                      f"model ({_first_line(exc)})") from None


# ---------------------------------------------------------------------------------------------- inflation
ADDED_CLS = "vision_model.embeddings.added_cls"
TEMPORAL = "vision_model.embeddings.temporal_embedding"


def inflate(
    clip_state: Mapping[str, Tensor],
    config: CLIPViPConfig,
    *,
    generator: torch.Generator | None = None,
    logit_scale: float | None = None,
    source: str | Path = "CLIP weights",
) -> CLIPViP:
    """A CLIP-ViP video model started from image-text CLIP weights: the one inflation path (reference §1.3).

    ``clip_state`` is a transformers ``CLIPModel`` state dict, or the state dict of a 1-proxy CLIP-ViP image
    model (the demo's stage 0). Every CLIP weight is copied by name and strictly (a missing, extra or
    mis-shaped key is a :class:`CheckpointError` naming ``source``). Proxy 0 *is* CLIP's class embedding
    (the same parameter), the ``M - 1`` added proxies are N(0, 1) draws (from ``generator`` when given,
    else the model's own ``torch.randn`` init, so seeding the global RNG reproduces both), and the temporal
    table is zeros, so with attention ``frame`` the inflated model is the image model applied per frame.
    Whatever the source had for ``added_cls``/``temporal_embedding`` is dropped: those are the new parts.

    ``logit_scale`` (log space) defaults to the source's own value, or ``config.logit_scale_init`` if it
    has none; :func:`from_clip` passes ``config.logit_scale_init`` (4.60), as the official wrapper resets it.
    """
    model = CLIPViP(config)
    own = model.state_dict()
    state = {k: v for k, v in clip_state.items()
             if not k.endswith("position_ids") and k not in (ADDED_CLS, TEMPORAL)}
    if ADDED_CLS in own:
        added = own[ADDED_CLS]
        if generator is not None:
            added = torch.randn(added.shape, generator=generator, dtype=added.dtype)
        state[ADDED_CLS] = added
    state[TEMPORAL] = torch.zeros_like(own[TEMPORAL])
    if logit_scale is not None or "logit_scale" not in state:
        value = float(config.logit_scale_init if logit_scale is None else logit_scale)
        state["logit_scale"] = torch.tensor(value)
    load_state_dict_strict(model, state, source)
    return model


# ---------------------------------------------------------------------------------------------- transformers CLIP
def from_clip(name_or_dir: str | Path, **overrides: Any) -> CLIPViP:
    """Start CLIP-ViP from transformers CLIP weights (a hub name, or a local dir: then fully offline).

    The weights go through :func:`inflate`, with ``logit_scale`` reset to ``config.logit_scale_init``
    (4.60) as the official VidCLIP wrapper does (reference §1.9). ``overrides`` go to
    :meth:`CLIPViPConfig.from_hf`. A hub name that is neither cached nor reachable fails at once (see
    :func:`clipvip.tokenizer.resolve_hub_name`) instead of after transformers' minute and a half of retries.
    """
    from transformers import CLIPModel

    from clipvip.tokenizer import resolve_hub_name

    text = str(name_or_dir)
    if Path(text).is_dir():
        location = text
    else:
        try:
            location = resolve_hub_name(text, "CLIP model", needs=HF_WEIGHT_FILES)
        except FileNotFoundError as exc:
            raise CheckpointError(str(exc)) from exc
    try:
        hf = CLIPModel.from_pretrained(location, local_files_only=Path(location).is_dir())
    except OSError as exc:
        raise CheckpointError(f"cannot load CLIP weights from {name_or_dir}: {exc}") from exc
    config = CLIPViPConfig.from_hf(hf.config, **overrides)
    return inflate(hf.state_dict(), config, logit_scale=float(config.logit_scale_init), source=text)


# ---------------------------------------------------------------------------------------------- official .pt
def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (some torch errors, e.g. ``EOFError()``, have no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _read_torch_file(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.pt``/``.pth``/``.bin`` file, loaded with ``weights_only=True``.

    Every failure is a :class:`CheckpointError` naming the file and what it is: empty, not a checkpoint (or a
    truncated one), or refused because it holds pickled code / objects other than tensors.
    """
    import pickle

    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (expected a .pt checkpoint)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted download or copy?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        # A torch.* name weights_only does not know is a name cut short (a truncated file), not a payload;
        # either way nothing is loaded.
        if found and not found.group(1).startswith(("torch.", "collections.")):
            what = f" (it references {found.group(1)})"
            raise CheckpointError(f"refusing to load {path}: it holds pickled code or objects other than tensors"
                                  f"{what}; only plain tensor checkpoints are loaded (weights_only=True)") from None
        raise CheckpointError(f"{path} is not a checkpoint, or a truncated one: not a PyTorch file holding "
                              f"tensors ({size} bytes; the pickle data is unreadable)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises EOFError, KeyError, RuntimeError... for non-checkpoints
        raise CheckpointError(f"{path} is not a checkpoint, or a truncated one ({size} bytes): torch.load "
                              f"failed ({_first_line(exc)})") from None
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict", "module"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else ("an empty dict" if not obj else "a dict "
                                                                        "with non-tensor values")
        raise CheckpointError(f"{path} is not a checkpoint: expected a state dict of tensors, got {kind}")
    return dict(obj)


def official_to_state_dict(raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map the official layout to ours: strip ``clipmodel.``, drop ``*.position_ids``, cast to fp32."""
    state = {}
    for key, value in raw.items():
        name = key[len(OFFICIAL_PREFIX):] if key.startswith(OFFICIAL_PREFIX) else key
        if name.endswith("position_ids"):
            continue
        state[name] = value.float() if value.is_floating_point() else value
    return state


def infer_config(state: Mapping[str, Tensor], source: str | Path = "checkpoint") -> CLIPViPConfig:
    """Pick B/32 or B/16 from the patch-embedding shape, and read ``num_proxies`` and ``temporal_size``
    from the tensors, so the config can never disagree with the weights."""
    key = "vision_model.embeddings.patch_embedding.weight"
    if key not in state:
        raise CheckpointError(f"cannot infer the architecture of {source}: no {key}")
    width, _, patch, _ = state[key].shape
    known = {32: "clipvip-b32", 16: "clipvip-b16"}
    if patch not in known or width != 768:
        raise CheckpointError(f"cannot infer the architecture of {source}: {key} has shape "
                              f"{tuple(state[key].shape)}; pass config= explicitly")
    added = state.get("vision_model.embeddings.added_cls")
    temporal = state.get("vision_model.embeddings.temporal_embedding")
    overrides: dict[str, Any] = {"num_proxies": 1 + (added.shape[0] if added is not None else 0)}
    if temporal is not None:
        overrides["temporal_size"] = temporal.shape[1]
    return CLIPViPConfig.from_name(known[patch], **overrides)


def from_official_checkpoint(path: str | Path, config: CLIPViPConfig | None = None) -> CLIPViP:
    """Load ``pretrain_clipvip_base_{32,16}.pt`` (or any file in that layout), strictly."""
    path = Path(path)
    state = official_to_state_dict(_read_torch_file(path))
    if config is None:
        config = infer_config(state, path)
    model = _build(config, path)
    load_state_dict_strict(model, state, path)
    return model


# ---------------------------------------------------------------------------------------------- our format
def save_pretrained(model: CLIPViP, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) atomically: everything goes to a
    temporary sibling directory first, which then replaces ``directory``, so a crash never leaves a
    half-written model behind."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(directory.parent, f".{directory.name}.")  # umask's mode, not mkdtemp's 0700
    try:
        model.config.to_json(tmp / CONFIG_FILE)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "library": "clipvip"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)  # safetensors writes 0600 whatever the umask
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> CLIPViP:
    """Load a directory written by :func:`save_pretrained`; errors name the directory and the reason."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}: not a saved CLIP-ViP model")
    try:
        config = CLIPViPConfig.from_json(directory / CONFIG_FILE)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: not a valid model config ({_first_line(exc)})") from None
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is corrupt: {exc}") from exc
    model = _build(config, directory / CONFIG_FILE)
    load_state_dict_strict(model, state, directory / WEIGHTS_FILE)
    return model.to(map_location)


def _build(config: CLIPViPConfig, source: str | Path) -> CLIPViP:
    """``CLIPViP(config)``; a config whose values torch rejects (a float layer count, a list where a size
    belongs) becomes a :class:`CheckpointError` naming ``source``, not a raw torch ``TypeError``."""
    try:
        return CLIPViP(config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{source}: cannot build a model from this config ({_first_line(exc)}); check "
                              f"the types and sizes of its fields") from None
