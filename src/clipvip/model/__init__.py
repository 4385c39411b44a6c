"""The CLIP-ViP model: embeddings, attention modes, the two towers and :class:`CLIPViP`."""

from clipvip.model.clipvip import CLIPViP

__all__ = ["CLIPViP"]
