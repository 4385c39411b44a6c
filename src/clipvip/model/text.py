"""CLIP's text tower, unchanged (reference §2): causal + padding mask, final LN, EOT pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clipvip.config import CLIPViPConfig
from clipvip.model.embeddings import TextEmbeddings
from clipvip.model.vision import CLIPEncoder


class TextTransformer(nn.Module):
    def __init__(self, config: CLIPViPConfig) -> None:
        super().__init__()
        t = config.text
        self.embeddings = TextEmbeddings(t.vocab_size, t.hidden_size, t.max_position_embeddings)
        self.encoder = CLIPEncoder(t.num_hidden_layers, hidden_size=t.hidden_size, heads=t.num_attention_heads,
                                   intermediate_size=t.intermediate_size, act=t.hidden_act,
                                   eps=t.layer_norm_eps, dropout=t.attention_dropout)
        self.final_layer_norm = nn.LayerNorm(t.hidden_size, eps=t.layer_norm_eps)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, S]`` ids -> pooled ``[B, D_t]`` at the EOT token.

        Pooling takes ``input_ids.argmax(-1)``: the EOT id (49407) is the largest id, and because the pad id
        equals the EOT id, argmax must return the *first* maximum, which torch guarantees.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, S], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        x = self.embeddings(input_ids)
        mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.to(device=x.device, dtype=torch.bool)[:, None, None, :]
        (x,) = self.encoder([x], None, mask)
        x = self.final_layer_norm(x)
        eot = input_ids.to(x.device).argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot]
