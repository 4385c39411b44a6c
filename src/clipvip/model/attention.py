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
  N×N mask and the N×N scores, as the official implementation does.
* ``"proxy"`` (:meth:`CLIPAttention.forward_proxy`): the same numbers, block-sparsely. The hidden state is
  kept as two tensors, proxies ``[B, M, D]`` and patches ``[B·T, L, D]``, so every frame is a batch row and
  all head reshapes are views. The N×N mask and score matrix never exist: patch queries cost
  ``T·L·(M+L)`` and proxy queries ``M·N`` score entries instead of ``N²``.
* ``"full"``: dense attention over all N tokens without a mask (the paper's ablation).

Why two code paths for the patch queries (measurements in docs/model.md): a patch query's keys are
``[M proxies ; L frame patches]``. ``"sdpa"`` (default) broadcasts the proxy keys/values over frames with
``expand``, concatenates them in front of each frame's keys/values and calls
``scaled_dot_product_attention`` once over the batch ``B·T``; the concatenation copies the keys/values once
per layer (memory-bound, O(T·L·D), next to the O(T·L·D²) projections), and SDPA's fused kernel never
stores the scores. ``"split"`` avoids the concatenation: two score blocks (patch·proxyᵀ by broadcasting,
patch·frameᵀ per frame) and one joint softmax by hand. It is not copy-free either: a 4-D ``matmul`` folds
the (B·T, H) batch dims, whose strides do not merge, so it copies q, k and v; and it stores the L×L
probabilities for backward. Both are exact; :data:`PROXY_IMPL` selects the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: How ``"proxy"`` attention computes the patch queries: ``"sdpa"`` or ``"split"`` (module docstring).
PROXY_IMPL = "sdpa"


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


@lru_cache(maxsize=4)
def _cached_mask(num_proxies: int, num_frames: int, patches: int, device: str) -> Tensor:
    m, t, l = num_proxies, num_frames, patches
    n = m + t * l
    allow = torch.zeros(n, n, dtype=torch.bool, device=device)
    allow[:m, :] = True  # proxies see everything
    for i in range(t):
        rows = slice(m + i * l, m + (i + 1) * l)
        allow[rows, :m] = True  # patches see the proxies ...
        allow[rows, rows] = True  # ... and their own frame
    return allow


def proxy_attention_mask(num_proxies: int, num_frames: int, patches: int, device: torch.device | str = "cpu") -> Tensor:
    """The dense boolean ``[N, N]`` mask of reference §1.5 (True = may attend), written as the table reads."""
    return _cached_mask(num_proxies, num_frames, patches, str(device))


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
        ``"masked"`` mode promises; it stores the N×N scores as the official implementation's ``bmm`` does
        (so the benchmark's ``"masked"`` row shows what the block-sparse ``"proxy"`` saves), and it keeps the
        proxy-vs-masked tests independent of SDPA's kernels. For the text tower (77 tokens) it costs nothing.
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
        """Proxy-guided attention on the split state: ``proxies [B, M, D]``, ``patches [B·T, L, D]``."""
        b, m, t, l = layout.batch, layout.num_proxies, layout.num_frames, layout.patches_per_frame
        qp, kp, vp = self._qkv(proxies)  # [B, H, M, d]
        qf, kf, vf = self._qkv(patches)  # [B·T, H, L, d]

        # Proxy queries see every token: scores against the proxies and against all T·L patches, as two
        # blocks of one softmax. Only M query rows, so this is cheap whatever T is.
        # kf/vf as [B, H, T·L, d] views of the projection outputs. A 4-D matmul would fold (B, H) into one
        # batch dim and copy them (their strides do not merge), so the products run per video as 3-D bmm.
        kf_seq = kf.transpose(1, 2).reshape(b, t * l, self.num_heads, self.head_dim).transpose(1, 2)
        vf_seq = vf.transpose(1, 2).reshape(b, t * l, self.num_heads, self.head_dim).transpose(1, 2)
        s_f = torch.stack([qp[i] @ kf_seq[i].transpose(-1, -2) for i in range(b)])  # [B, H, M, T·L]
        scores = torch.cat([qp @ kp.transpose(-1, -2), s_f], dim=-1) * self.scale
        probs = F.dropout(scores.softmax(dim=-1), self._drop(), self.training)
        p_f = probs[..., m:]
        out_p = probs[..., :m] @ vp + torch.stack([p_f[i] @ vf_seq[i] for i in range(b)])  # [B, H, M, d]

        if PROXY_IMPL == "split":
            out_f = self._patch_queries_split(qf, kp, vp, kf, vf, layout)
        else:
            out_f = self._patch_queries_sdpa(qf, kp, vp, kf, vf, layout)
        return self.out_proj(self._merge(out_p)), self.out_proj(self._merge(out_f))

    def _patch_queries_sdpa(self, qf: Tensor, kp: Tensor, vp: Tensor, kf: Tensor, vf: Tensor,
                            layout: TokenLayout) -> Tensor:
        """Patches of each frame attend to [proxies ; own frame]: one SDPA call over the batch B·T."""
        b, t = layout.batch, layout.num_frames
        h, m, d = kp.shape[1], kp.shape[2], kp.shape[3]
        kp_t = kp.unsqueeze(1).expand(b, t, h, m, d).reshape(b * t, h, m, d)
        vp_t = vp.unsqueeze(1).expand(b, t, h, m, d).reshape(b * t, h, m, d)
        k = torch.cat([kp_t, kf], dim=2)
        v = torch.cat([vp_t, vf], dim=2)
        return F.scaled_dot_product_attention(qf, k, v, dropout_p=self._drop())

    def _patch_queries_split(self, qf: Tensor, kp: Tensor, vp: Tensor, kf: Tensor, vf: Tensor,
                             layout: TokenLayout) -> Tensor:
        """The same as :meth:`_patch_queries_sdpa` with no copy of any key/value: two score blocks, one
        joint softmax. The proxy block broadcasts the proxy keys over frames through matmul batching."""
        b, t, l = layout.batch, layout.num_frames, layout.patches_per_frame
        h, d = qf.shape[1], qf.shape[3]
        q5 = qf.unflatten(0, (b, t))  # [B, T, H, L, d]
        s_p = (q5 @ kp.unsqueeze(1).transpose(-1, -2)).flatten(0, 1)  # [B·T, H, L, M]
        s_f = qf @ kf.transpose(-1, -2)  # [B·T, H, L, L]
        m = s_p.shape[-1]
        probs = (torch.cat([s_p, s_f], dim=-1) * self.scale).softmax(dim=-1)
        probs = F.dropout(probs, self._drop(), self.training)
        p_p, p_f = probs[..., :m], probs[..., m:]
        out = (p_p.unflatten(0, (b, t)) @ vp.unsqueeze(1)).flatten(0, 1) + p_f @ vf
        return out.reshape(b * t, h, l, d)
