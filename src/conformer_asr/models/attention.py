"""Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019).

Score between query i and key j, per head::

    (q_i + u) . k_j            content term (a)+(c)
  + (q_i + v) . W_r R_{i-j}    position term (b)+(d)

R is a sinusoidal table of relative distances. The position term is computed
against all 2T-1 distances at once and then shifted so that column j holds the
distance i - j. Here the shift is a zero-copy strided view, and the summed
position term goes into ``scaled_dot_product_attention`` as an additive mask,
so the content term, softmax and value product use torch's fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_positions(length: int, d_model: int, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoids for distances ``length-1, ..., 0, ..., -(length-1)``: (2*length-1, d_model)."""
    distance = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
        * (-math.log(10000.0) / d_model)
    )
    angles = distance[:, None] * inv_freq[None, :]
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    return table.to(dtype)


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., T, 2T-1) scores for distances T-1..-(T-1) -> (..., T, T), [i, j] = distance i-j.

    Row i needs columns ``T-1-i .. 2T-2-i``: a strided view whose row stride is
    one less than the input's, so nothing is copied.
    """
    *lead, t, width = scores.shape
    assert width == 2 * t - 1, f"expected last dim {2 * t - 1}, got {width}"
    scores = scores.contiguous()
    lead_strides = scores.stride()[:-2]
    return scores.as_strided(
        (*lead, t, t), (*lead_strides, width - 1, 1), scores.storage_offset() + t - 1
    )


class RelPositionMultiHeadAttention(nn.Module):
    """Self-attention with content bias u and position bias v per head.

    forward(x (B, T, D), pos (2T-1, D), key_padding (B, T) bool, True = padded) -> (B, T, D)
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pos_proj = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, key_padding: torch.Tensor
    ) -> torch.Tensor:
        b, t, d = x.shape
        h, dh = self.n_heads, self.d_head
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, dh)
        p = self.pos_proj(pos).view(2 * t - 1, h, dh).permute(1, 2, 0)  # (H, dh, 2T-1)

        scale = 1.0 / math.sqrt(dh)
        position = relative_shift(
            torch.matmul(q + self.pos_bias_v[:, None, :], p)
        )  # (B, H, T, T)
        bias = (position * scale).masked_fill(key_padding[:, None, None, :], float("-inf"))
        context = F.scaled_dot_product_attention(
            q + self.pos_bias_u[:, None, :], k, v, attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0, scale=scale,
        )  # (B, H, T, dh)
        return self.out(context.transpose(1, 2).reshape(b, t, d))
