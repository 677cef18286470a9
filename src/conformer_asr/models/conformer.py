"""The Conformer encoder: macaron FFN, relative-position MHSA, convolution module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import RelPositionMultiHeadAttention, relative_positions
from .config import EncoderConfig, get_config
from .dropout import Dropout
from .subsampling import Conv2dSubsampling


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True where the frame is padding."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def tracks_grad(x: torch.Tensor) -> bool:
    """Whether autograd records operations on ``x`` (so they must leave it as it is)."""
    return torch.is_grad_enabled() and x.requires_grad


class Swish(nn.Module):
    """SiLU, x * sigmoid(x), any shape, written over its input where autograd does not
    track it (inference): no second tensor of the input's size is made and written.
    Only for inputs that nothing else reads, such as a Linear layer's fresh output. On a
    2-core VM the eval encoder's forward ran up to 7% faster in float32 and up to 10%
    under ``quantize_int8`` (conformer-s and -m, batch 1 and 8, 2026-12-05), most of it
    while the VM ran slow, little while it ran fast (benchmarks/README.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not tracks_grad(x))


class FeedForward(nn.Module):
    """LayerNorm -> Linear(d, m*d) -> Swish -> Dropout -> Linear(m*d, d) -> Dropout."""

    def __init__(self, d_model: int, multiplier: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, multiplier * d_model),
            Swish(),
            Dropout(dropout),
            nn.Linear(multiplier * d_model, d_model),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.net(x)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose training statistics come from valid frames only.

    In eval mode it is the usual per-frame affine map with running statistics,
    so padding cannot leak in either mode.
    """

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x (B, C, T), valid (B, T) bool -> (B, C, T)."""
        if not self.training:
            return super().forward(x)
        weight = valid[:, None, :].to(x.dtype)
        count = weight.sum().clamp(min=1.0)
        mean = (x * weight).sum(dim=(0, 2)) / count
        var = (((x - mean[None, :, None]) ** 2) * weight).sum(dim=(0, 2)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        x = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return x * self.weight[None, :, None] + self.bias[None, :, None]


class ConvolutionModule(nn.Module):
    """LayerNorm -> pointwise(d, 2d) -> GLU -> depthwise conv -> BatchNorm -> Swish
    -> pointwise(d, d) -> Dropout.

    Pointwise convolutions are Linear layers on (B, T, D) (the same parameters
    as Conv1d with kernel 1, without transposes). Padded frames are zeroed
    before the depthwise convolution so that it sees zeros, not garbage. In eval
    mode the batch norm, a per-channel affine map, is folded into the depthwise
    kernel and bias (:meth:`depthwise_with_batch_norm`), which saves a pass over
    the activations.
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(
            d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model
        )
        self.batch_norm = MaskedBatchNorm1d(d_model)
        self.swish = Swish()
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pad (B, T) bool (True = padding) -> (B, T, D)."""
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        x = x.masked_fill(pad[:, :, None], 0.0)
        if self.training:
            conv = self.depthwise
            x = self.batch_norm(self.depthwise_channels_last(x, conv.weight, conv.bias), ~pad)
        else:
            x = self.depthwise_channels_last(x, *self.depthwise_with_batch_norm())
        return self.dropout(self.pointwise_out(self.swish(x).transpose(1, 2)))

    def depthwise_channels_last(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, D), weight (D, 1, k), bias (D,) -> (B, D, T): the depthwise
        convolution with ``self.depthwise``'s padding of x read as (B, D, T).

        The (B, T, D) memory is handed over as a channels-last (B, D, 1, T) image
        and convolved with a (D, 1, 1, k) kernel: the same sums, but oneDNN's
        channels-last depthwise kernel is more than 10x faster on a CPU than its
        Conv1d over the transposed (B, D, T) view.

        On a CPU, bfloat16 and float16 inputs (and bfloat16 autocast) are convolved in
        float32: oneDNN's bfloat16 kernel for this layout (``brdgmm_dw``, torch 2.13)
        never finished on an Intel Xeon with AMX for one utterance of 250 frames at
        some widths (16, 144 as in conformer-s, 208, 272), and this convolution is a
        small share of the encoder's work.
        """
        low_precision = x.dtype in (torch.bfloat16, torch.float16)
        if x.device.type == "cpu" and (low_precision or torch.is_autocast_enabled("cpu")):
            dtype = torch.float32 if low_precision else x.dtype
            with torch.autocast("cpu", enabled=False):
                y = self.depthwise_channels_last(
                    x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
            return y.to(x.dtype)
        y = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight.unsqueeze(2), bias,
                     padding=(0, self.depthwise.padding[0]), groups=self.depthwise.groups)
        return y.squeeze(2)

    def depthwise_with_batch_norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The depthwise kernel (D, 1, k) and bias (D,) with the eval-mode batch norm
        folded in: ``norm(conv(x)) = (conv(x) - mean) * scale + beta`` is a convolution
        whose kernel is scaled by ``scale = gamma / sqrt(var + eps)`` per channel."""
        conv, norm = self.depthwise, self.batch_norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        bias = (conv.bias - norm.running_mean) * scale + norm.bias
        return conv.weight * scale[:, None, None], bias


class ConformerBlock(nn.Module):
    """x + FFN/2 -> x + MHSA -> x + Conv -> x + FFN/2 -> LayerNorm."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ffn1 = FeedForward(d, cfg.ffn_multiplier, cfg.dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RelPositionMultiHeadAttention(d, cfg.n_heads, cfg.dropout)
        self.attn_dropout = Dropout(cfg.dropout)
        self.conv = ConvolutionModule(d, cfg.conv_kernel_size, cfg.dropout)
        self.ffn2 = FeedForward(d, cfg.ffn_multiplier, cfg.dropout)
        self.final_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pos (2T-1, D), pad (B, T) -> (B, T, D)."""
        x = torch.add(x, self.ffn1(x), alpha=0.5)  # x + 0.5 * ffn1(x) in one pass
        x = x + self.attn_dropout(self.attn(self.attn_norm(x), pos, pad))
        x = x + self.conv(x, pad)
        x = torch.add(x, self.ffn2(x), alpha=0.5)
        return self.final_norm(x)


class ConformerEncoder(nn.Module):
    """Conv2d subsampling followed by ``n_layers`` Conformer blocks.

    forward(feats (B, T, n_mels), lengths (B,)) -> (out (B, T', D), out_lengths (B,)),
    with T' about T / subsampling_factor (see ``subsampled_lengths``) and padded output
    frames set to zero.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsampling = Conv2dSubsampling(
            cfg.n_mels, cfg.channels, cfg.d_model, cfg.dropout, cfg.subsampling_factor
        )
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.n_layers))

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run_blocks(*self.subsampling(feats, lengths))

    def run_blocks(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Conformer blocks alone: ``self.subsampling``'s output x (B, T', D) and
        lengths (B,) -> (out (B, T', D), lengths (B,)), as ``forward`` returns them."""
        pad = padding_mask(lengths, x.shape[1])
        pos = relative_positions(x.shape[1], self.cfg.d_model, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, pos, pad)
        return x.masked_fill(pad[:, :, None], 0.0), lengths


def build_encoder(name_or_config: str | EncoderConfig) -> ConformerEncoder:
    """Encoder of a named model (``conformer-s``/``-m``/``-l``) or of an ``EncoderConfig``."""
    if isinstance(name_or_config, str):
        return ConformerEncoder(get_config(name_or_config).encoder)
    return ConformerEncoder(name_or_config)
