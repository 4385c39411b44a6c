"""The module that DistributedDataParallel wraps: a batch in, the features of every stream out.

DDP only synchronises gradients correctly when the wrapped module's ``forward`` runs (its hooks prepare the
reducer). ``CLIPViP.forward`` returns logits of one text×video pair, while training needs several encoder
calls per step (video, middle frame, subtitle, caption, optional image-text pairs), so this thin wrapper
does all of them in one ``forward``. It holds no parameters of its own: its ``state_dict`` is the model's
under the prefix ``model.``, and checkpoints always save the unwrapped ``CLIPViP``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn


class FeatureModel(nn.Module):
    """``forward(batch, image_batch=None)`` -> dict of L2-normalised features.

    Retrieval batches (``pixel_values``, ``input_ids``, ``attention_mask``) give ``video`` and ``text``.
    Pretraining batches (``pixel_values``, ``frame_pixel_values``, subtitle and caption tokens) give
    ``video``, ``frame``, ``subtitle`` and ``caption``. An image-text batch adds ``image`` and ``image_text``.
    """

    def __init__(self, model: nn.Module, task: str = "retrieval") -> None:
        super().__init__()
        self.model = model
        self.task = task

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale  # type: ignore[return-value]

    def _text(self, batch: Mapping[str, Any], prefix: str) -> Tensor:
        ids, mask = text_inputs(batch, prefix)
        return self.model.encode_text(ids, mask, normalize=True)

    def forward(self, batch: Mapping[str, Any], image_batch: Mapping[str, Any] | None = None
                ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"video": self.model.encode_video(batch["pixel_values"], normalize=True)}
        if self.task == "pretrain":
            if "frame_pixel_values" in batch and batch["frame_pixel_values"] is not None:
                out["frame"] = self.model.encode_video(batch["frame_pixel_values"], normalize=True)
            out["subtitle"] = self._text(batch, "subtitle")
            if has_text(batch, "caption"):
                out["caption"] = self._text(batch, "caption")
        else:
            out["text"] = self._text(batch, "")
        if image_batch is not None:
            pixels = image_batch["pixel_values"]
            if pixels.ndim == 4:  # [B, 3, H, W] images are one-frame videos (reference §1.7)
                pixels = pixels.unsqueeze(1)
            out["image"] = self.model.encode_video(pixels, normalize=True)
            out["image_text"] = self._text(image_batch, "")
        return out


def has_text(batch: Mapping[str, Any], prefix: str) -> bool:
    """Whether the batch holds token ids for ``prefix`` (see :func:`text_inputs` for the key forms)."""
    try:
        text_inputs(batch, prefix)
    except KeyError:
        return False
    return True


def text_inputs(batch: Mapping[str, Any], prefix: str) -> tuple[Tensor, Tensor | None]:
    """Token ids and mask of one text stream, accepting the collated key forms.

    ``prefix=""``: ``input_ids`` / ``attention_mask``. Otherwise ``{prefix}_input_ids`` /
    ``{prefix}_attention_mask``, or a nested ``batch[prefix] = {"input_ids", "attention_mask"}``.
    """
    if not prefix:
        return batch["input_ids"], batch.get("attention_mask")
    nested = batch.get(prefix)
    if isinstance(nested, Mapping) and "input_ids" in nested:
        return nested["input_ids"], nested.get("attention_mask")
    key = f"{prefix}_input_ids"
    if key in batch:
        return batch[key], batch.get(f"{prefix}_attention_mask")
    raise KeyError(f"batch has no token ids for {prefix!r} (keys: {sorted(batch)})")


def move_to(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors of a (nested) batch moved to ``device``; everything else untouched."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, list):
        return [move_to(v, device, non_blocking) for v in batch]
    return batch
