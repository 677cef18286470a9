"""Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019).

Score between query i and key j, per head::

    (q_i + u) . k_j            content term (a)+(c)
  + (q_i + v) . W_r R_{i-j}    position term (b)+(d)

R is a sinusoidal table of relative distances. The position term is computed
against all 2T-1 distances at once and then shifted so that column j holds the
distance i - j. Here the shift is a zero-copy view, and the summed
position term goes into ``scaled_dot_product_attention`` as an additive mask,
so the content term, softmax and value product use torch's fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import draws_own_mask, dropout


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
    """(..., T, W) scores whose first 2T-1 columns hold distances T-1..-(T-1) (W >= 2T-1;
    columns past 2T-1 are ignored) -> (..., T, T) with [i, j] = distance i-j.

    Row i needs columns ``T-1-i .. 2T-2-i``. Flattening the last two dims, dropping the
    first T-1 entries and reading rows of W-1 entries moves each row one column further
    left than the one above, so the result is a view: nothing is copied (for contiguous
    input), and it is made of reshapes and slices only, which ``torch.compile`` traces.
    """
    *lead, t, width = scores.shape
    assert width >= 2 * t - 1, f"expected last dim >= {2 * t - 1}, got {width}"
    flat = scores.contiguous().flatten(-2)[..., t - 1 : t - 1 + t * (width - 1)]
    return flat.unflatten(-1, (t, width - 1))[..., :t]


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
        scale = dh**-0.5
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).unbind(2)  # each (B, T, H, dh)
        # Position term: one (H, B*T, dh) @ (H, dh, W) product per head, with the 2T-1
        # distances padded with zeros to W, a multiple of 8 (the GEMM's fast path). The
        # bias and the scale go into q in one pass. (Read in place, with a row stride of
        # D, q slows the product more than its copy costs.) The shift is a view of that
        # (H, B, T, W) buffer, and the padding fill writes the additive mask in one pass.
        width = 2 * t - 1
        padded = -(-width // 8) * 8
        q_v = torch.add(self.pos_bias_v * scale, q, alpha=scale)  # (q + v) * scale
        q_v = q_v.permute(2, 0, 1, 3).reshape(h, b * t, dh)
        p = F.pad(self.pos_proj(pos), (0, 0, 0, padded - width))
        p = p.view(padded, h, dh).permute(1, 2, 0)  # (H, dh, W)
        scores = torch.bmm(q_v, p).view(h, b, t, padded)
        position = relative_shift(scores).transpose(0, 1)  # (B, H, T, T)
        bias = torch.where(key_padding[:, None, None, :], float("-inf"), position)
        q_u, k, v = (q + self.pos_bias_u).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.training and self.dropout > 0.0 and draws_own_mask(x):
            context = attention_with_dropout(q_u, k, v, bias, scale, self.dropout)
        else:
            context = F.scaled_dot_product_attention(
                q_u, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
                scale=scale,
            )  # (B, H, T, dh)
        return self.out(context.transpose(1, 2).reshape(b, t, d))


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
    p: float,
) -> torch.Tensor:
    """q, k, v (B, H, T, dh), bias (B, H, T, T) -> (B, H, T, dh):
    ``scaled_dot_product_attention`` with dropout ``p`` on the attention weights.

    On a CPU, torch's version with dropout runs these same unfused steps, but draws
    its mask with ``bernoulli_``, which costs more than the rest of the attention on
    AMD processors; :func:`~conformer_asr.models.dropout.dropout` is several times
    cheaper (:func:`~conformer_asr.models.dropout.draws_own_mask`). Every query must
    have a key with a finite bias.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).add_(bias)
    return torch.matmul(dropout(scores.softmax(dim=-1), p), v)
