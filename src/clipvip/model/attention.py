"""Multi-head self-attention for both towers, and CLIP-ViP's proxy-guided attention (reference §1.5).

Who sees whom in the video tower (M proxies, T frames of L patches, N = M + T·L tokens):

============================  =============================================
query                         keys / values
============================  =============================================
each proxy                    all N tokens
a patch of frame t            the M proxies + the L patches of frame t
============================  =============================================

Three ways to compute it, one set of weights:

* ``"masked"`` (:func:`proxy_attention_mask` + explicit masked softmax): the readable reference; builds the
  N×N mask and the N×N scores (dense; the official ``forward2`` is block-sparse like ``"proxy"``).
* ``"proxy"`` (:meth:`CLIPAttention.forward_proxy`): the same numbers, block-sparsely, in two
  ``scaled_dot_product_attention`` calls per layer and a fixed number of tensor ops whatever the batch B and
  the frame count T (no Python loop over videos or frames: on a GPU every op is a kernel launch, so a
  per-video loop makes training launch-bound at large batch). The hidden state is kept as two tensors,
  proxies ``[B, M, D]`` and patches ``[B·T, L, D]``, so every frame is a batch row and all head reshapes are
  views. Patch queries cost ``T·L·(M+L)`` score entries and proxy queries ``M·N`` instead of ``N²``.
* ``"full"``: dense attention over all N tokens without a mask (the paper's ablation).

The price of one SDPA call per query group is two concatenations per layer: the proxy keys/values broadcast
over frames in front of each frame's keys/values (``[B·T, H, M+L, d]``), and the proxy keys/values in front
of all patch keys/values of a video (``[B, H, M+T·L, d]``). Both are O(T·L·D) copies, memory-bound, next to
the O(T·L·D²) projections; SDPA's fused kernels never store the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TokenLayout:
    """Shape of the video token sequence: batch ``B``, ``M`` proxies, ``T`` frames of ``L`` patches."""

    batch: int
    num_proxies: int
    num_frames: int
    patches_per_frame: int

    @property
    def num_tokens(self) -> int:
        return self.num_proxies + self.num_frames * self.patches_per_frame


def proxy_attention_mask(num_proxies: int, num_frames: int, patches: int, device: torch.device | str = "cpu") -> Tensor:
    """The dense boolean ``[N, N]`` mask of reference §1.5 (True = may attend), built from the shapes on
    each call (a few element-wise ops; nothing cached, so tracing and export see it as computation).

    Every token gets a group: -1 for the proxies, ``t`` for the patches of frame ``t``. A query may attend
    to a key if the query is a proxy, the key is a proxy, or both lie in the same frame.
    """
    proxy = torch.full((num_proxies,), -1, dtype=torch.long, device=device)
    frame = torch.arange(num_frames, device=device).repeat_interleave(patches)
    group = torch.cat([proxy, frame])
    query, key = group[:, None], group[None, :]
    return (query < 0) | (key < 0) | (query == key)


class CLIPAttention(nn.Module):
    """CLIP's multi-head attention (transformers' parameter names ``{q,k,v,out}_proj``)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_dim = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x: Tensor) -> Tensor:
        """``[..., S, D]`` -> ``[..., H, S, d]`` as a view (SDPA accepts the strides)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _merge(self, x: Tensor) -> Tensor:
        """``[..., H, S, d]`` -> ``[..., S, D]``."""
        return x.transpose(-3, -2).flatten(-2)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def _drop(self) -> float:
        return self.dropout if self.training else 0.0

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Dense attention over ``x`` ``[B, S, D]``; ``attn_mask`` is boolean (True = attend), broadcastable
        to ``[B, H, S, S]``. Used by the text tower (causal + padding), ``"masked"``, ``"full"``, ``"frame"``.

        Without a mask this is one fused SDPA call. With a mask it is the textbook computation, written out:
        scores ``q·kᵀ/√d``, masked to ``-inf``, softmax, times ``v``. That is the readable reference the
        ``"masked"`` mode promises: dense, it stores the N×N scores (the benchmark's ``"masked"`` row shows
        what block sparsity saves), and it keeps the proxy-vs-masked tests independent of SDPA's kernels.
        For the text tower (77 tokens) it costs nothing.
        """
        q, k, v = self._qkv(x)
        if attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self._drop())
        else:
            scores = (q @ k.transpose(-1, -2)) * self.scale
            scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs = F.dropout(scores.softmax(dim=-1), self._drop(), self.training)
            out = probs @ v
        return self.out_proj(self._merge(out))

    def forward_proxy(self, proxies: Tensor, patches: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor]:
        """Proxy-guided attention on the split state: ``proxies [B, M, D]``, ``patches [B·T, L, D]``.

        Two SDPA calls, each over the whole batch: proxy queries against ``[proxy keys ; all T·L patch keys
        of their video]``, patch queries against ``[proxy keys ; own frame's L patch keys]``.
        """
        b, m, t, l = layout.batch, layout.num_proxies, layout.num_frames, layout.patches_per_frame
        h, d = self.num_heads, self.head_dim
        qp, kp, vp = self._qkv(proxies)  # [B, H, M, d]
        q_lin, k_lin, v_lin = self.q_proj(patches), self.k_proj(patches), self.v_proj(patches)  # [B·T, L, D]

        # Proxy queries: the video's patch keys as [B, H, T·L, d] are a view of the projection output
        # (frames are consecutive rows), put behind the proxy keys: one copy of the keys, one SDPA call.
        k_video = torch.cat([kp, self._heads(k_lin.reshape(b, t * l, self.embed_dim))], dim=2)
        v_video = torch.cat([vp, self._heads(v_lin.reshape(b, t * l, self.embed_dim))], dim=2)
        out_p = F.scaled_dot_product_attention(qp, k_video, v_video, dropout_p=self._drop())  # [B, H, M, d]

        # Patch queries: the proxy keys broadcast over the T frames (expand is a view) and put in front of
        # each frame's keys, concatenated in [B, T, H, ·, d] so that no batch size turns the broadcast into
        # an extra copy; one SDPA call over the batch B·T.
        kp_t = kp.unsqueeze(1).expand(b, t, h, m, d)
        vp_t = vp.unsqueeze(1).expand(b, t, h, m, d)
        k_frame = torch.cat([kp_t, self._heads(k_lin).unflatten(0, (b, t))], dim=3).flatten(0, 1)  # [B·T, H, M+L, d]
        v_frame = torch.cat([vp_t, self._heads(v_lin).unflatten(0, (b, t))], dim=3).flatten(0, 1)
        out_f = F.scaled_dot_product_attention(self._heads(q_lin), k_frame, v_frame, dropout_p=self._drop())
        return self.out_proj(self._merge(out_p)), self.out_proj(self._merge(out_f))
