"""A textbook Conformer encoder, transducer loss step and LM step: the baseline of every
benchmark.

The same math as ``conformer_asr.models``, written the plain way (as in ESPnet or
the Transformer-XL paper): separate q/k/v projections, explicit scores ``q k^T``,
the pad-and-reshape relative shift, masked softmax, dropout, ``probs @ v``;
Conv1d pointwise convolutions on (B, D, T); Swish as ``x * sigmoid(x)``; BatchNorm
statistics of valid frames picked by boolean indexing. ``plain_state_dict`` maps
a ``ConformerEncoder`` state dict (or its gradients) onto this model, so both can
run with the same weights and be compared. ``PlainStepLM`` steps the LM's LSTM module
one token at a time, as ``nn.LSTM`` is usually called. ``adapt_one_at_a_time`` is the
test-time adaptation taken one utterance at a time, on the model's own parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from conformer_asr.inference.adapt import adaptation_loss, adapted_parameters
from conformer_asr.losses.rnnt import rnnt_loss_reference
from conformer_asr.models import ASRModel, EncoderConfig
from conformer_asr.models.lm import WordPieceLM
from conformer_asr.models.lstm_step import LSTMState


def sinusoids(length: int, d_model: int) -> torch.Tensor:
    """Embeddings of distances ``length-1 .. -(length-1)``: (2*length-1, d_model)."""
    position = torch.arange(length - 1, -length, -1, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                    * (-math.log(10000.0) / d_model))
    table = torch.zeros(2 * length - 1, d_model)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T-1) -> (B, H, T, T), [i, j] = distance i - j (Transformer-XL's trick)."""
    b, h, t, width = scores.shape
    padded = torch.cat([scores.new_zeros(b, h, t, 1), scores], dim=-1)  # (B, H, T, 2T)
    padded = padded.view(b, h, width + 1, t)
    return padded[:, :, 1:].reshape(b, h, t, width)[..., :t]


class PlainSubsampling(nn.Module):
    """Conv2d(3, stride 2) + ReLU, log2(factor) times, then Linear: (B, T, F) -> (B, T', D)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        freq = cfg.n_mels
        for i in range(int(math.log2(cfg.subsampling_factor))):
            layers += [nn.Conv2d(1 if i == 0 else cfg.channels, cfg.channels, 3, stride=2),
                       nn.ReLU()]
            freq = (freq - 1) // 2
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(cfg.channels * freq, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.n_convs = len(layers) // 2

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = x.transpose(1, 2).contiguous().view(b, t, c * f)
        for _ in range(self.n_convs):
            lengths = (lengths - 1) // 2
        return self.dropout(self.out(x)), lengths


class PlainFeedForward(nn.Module):
    """(B, T, D) -> (B, T, D): LayerNorm, Linear, Swish, Dropout, Linear, Dropout."""

    def __init__(self, d_model: int, multiplier: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.w_1 = nn.Linear(d_model, multiplier * d_model)
        self.w_2 = nn.Linear(multiplier * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_1(self.layer_norm(x))
        h = self.dropout(h * torch.sigmoid(h))
        return self.dropout(self.w_2(h))


class PlainRelPositionAttention(nn.Module):
    """forward(x (B, T, D), pos (2T-1, D), mask (B, T) True = padding) -> (B, T, D)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.h, self.d_k = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.linear_out = nn.Linear(d_model, d_model)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)  # (B, H, T, d_k)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(2 * t - 1, self.h, self.d_k).transpose(0, 1)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, H, T, T)
        matrix_bd = rel_shift(torch.matmul(q_v, p.transpose(-2, -1)))  # (B, H, T, T)
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        mask = mask[:, None, None, :]
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        attn = attn.masked_fill(mask, 0.0)
        context = torch.matmul(self.dropout(attn), v)  # (B, H, T, d_k)
        return self.linear_out(context.transpose(1, 2).contiguous().view(b, t, d))


class PlainMaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d on (B, C, T) whose training statistics come from valid (B, T) frames."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        frames = x.transpose(1, 2)[valid]  # (N, C)
        mean = frames.mean(dim=0)
        var = frames.var(dim=0, unbiased=False)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * frames.var(dim=0, unbiased=True))
            self.num_batches_tracked += 1
        x = (x - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


class PlainConvModule(nn.Module):
    """(B, T, D), mask (B, T) -> (B, T, D): LayerNorm, Conv1d(1), GLU, depthwise Conv1d,
    BatchNorm, Swish, Conv1d(1), Dropout."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size,
                                        padding=kernel_size // 2, groups=d_model)
        self.batch_norm = PlainMaskedBatchNorm(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.pointwise_conv1(self.layer_norm(x).transpose(1, 2))  # (B, 2D, T)
        x = F.glu(x, dim=1).masked_fill(mask[:, None, :], 0.0)
        x = self.batch_norm(self.depthwise_conv(x), ~mask)
        x = self.pointwise_conv2(x * torch.sigmoid(x))
        return self.dropout(x.transpose(1, 2))


class PlainConformerBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ffn1 = PlainFeedForward(d, cfg.ffn_multiplier, cfg.dropout)
        self.norm_mha = nn.LayerNorm(d)
        self.self_attn = PlainRelPositionAttention(d, cfg.n_heads, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv_module = PlainConvModule(d, cfg.conv_kernel_size, cfg.dropout)
        self.ffn2 = PlainFeedForward(d, cfg.ffn_multiplier, cfg.dropout)
        self.norm_final = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos, mask))
        x = x + self.conv_module(x, mask)
        x = x + 0.5 * self.ffn2(x)
        return self.norm_final(x)


class PlainConformerEncoder(nn.Module):
    """forward(feats (B, T, n_mels), lengths (B,)) -> (B, T', D) with padding zeroed, (B,)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.subsampling = PlainSubsampling(cfg)
        self.blocks = nn.ModuleList(PlainConformerBlock(cfg) for _ in range(cfg.n_layers))

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling(feats, lengths)
        t = x.shape[1]
        mask = torch.arange(t, device=x.device)[None, :] >= lengths[:, None]
        pos = sinusoids(t, x.shape[2]).to(x)
        for block in self.blocks:
            x = block(x, pos, mask)
        return x.masked_fill(mask[:, :, None], 0.0), lengths


# Our parameter names (after "blocks.N.") -> the plain model's.
_RENAMES = {
    "ffn1.net.0.": "ffn1.layer_norm.", "ffn1.net.1.": "ffn1.w_1.", "ffn1.net.4.": "ffn1.w_2.",
    "ffn2.net.0.": "ffn2.layer_norm.", "ffn2.net.1.": "ffn2.w_1.", "ffn2.net.4.": "ffn2.w_2.",
    "attn_norm.": "norm_mha.", "attn.pos_proj.": "self_attn.linear_pos.",
    "attn.out.": "self_attn.linear_out.", "attn.pos_bias_": "self_attn.pos_bias_",
    "conv.norm.": "conv_module.layer_norm.", "conv.pointwise_in.": "conv_module.pointwise_conv1.",
    "conv.depthwise.": "conv_module.depthwise_conv.", "conv.batch_norm.": "conv_module.batch_norm.",
    "conv.pointwise_out.": "conv_module.pointwise_conv2.", "final_norm.": "norm_final.",
}


def plain_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``ConformerEncoder`` state dict (or dict of gradients) -> ``PlainConformerEncoder``'s.

    The fused q/k/v projection is split in three and pointwise Linear weights
    (out, in) become Conv1d weights (out, in, 1); everything else is renamed.
    """
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("blocks."):
            plain[key] = value
            continue
        _, number, rest = key.split(".", 2)
        prefix = f"blocks.{number}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]  # weight or bias
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                plain[f"{prefix}self_attn.linear_{name}.{kind}"] = part
            continue
        old = next(o for o in _RENAMES if rest.startswith(o))
        new_key = prefix + _RENAMES[old] + rest[len(old):]
        pointwise = old.startswith(("conv.pointwise_in", "conv.pointwise_out"))
        plain[new_key] = value[..., None] if pointwise and rest.endswith("weight") else value
    return plain


def plain_encoder_like(encoder: nn.Module, cfg: EncoderConfig) -> PlainConformerEncoder:
    """A plain encoder holding a copy of ``encoder``'s weights, in the same train/eval mode."""
    plain = PlainConformerEncoder(cfg)
    plain.load_state_dict(plain_state_dict(encoder.state_dict()))
    return plain.train(encoder.training)


def plain_training_loss(
    encoder: PlainConformerEncoder,
    heads: ASRModel,
    feats: torch.Tensor,
    feat_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
) -> torch.Tensor:
    """Mean RNN-T loss: plain encoder, ``heads``' prediction and joint networks, joint
    evaluated unfused on the broadcast sum, and the textbook ``rnnt_loss_reference``."""
    assert heads.predictor is not None and heads.joint is not None
    enc, enc_lengths = encoder(feats, feat_lengths)
    pred = heads.predictor(targets)
    joint = heads.joint
    hidden = joint.enc_proj(enc)[:, :, None, :] + joint.pred_proj(pred)[:, None, :, :]
    logits = joint.out(torch.tanh(hidden)).float()  # (B, T', U+1, V), float32 as in ASRModel
    return rnnt_loss_reference(logits, targets.int(), enc_lengths.int(), target_lengths.int(),
                               blank=0, reduction="mean")


class PlainStepLM(WordPieceLM):
    """``WordPieceLM`` whose ``step`` calls the whole module on a one-token sequence."""

    def step(
        self, tokens: torch.Tensor, state: LSTMState | None
    ) -> tuple[torch.Tensor, LSTMState]:
        logits, state = self(tokens[:, None], state)
        return logits[:, 0].float().log_softmax(dim=-1), state


def plain_lm_like(lm: WordPieceLM) -> PlainStepLM:
    """A ``PlainStepLM`` holding a copy of ``lm``'s weights, in the same train/eval mode."""
    plain = PlainStepLM(lm.cfg)
    plain.load_state_dict(lm.state_dict())
    return plain.train(lm.training)


def adapt_one_at_a_time(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, steps: int, lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``inference.adapt.encode_adapted`` the plain way: feats (B, T, F), lengths (B,) ->
    encoder output (B, T', D), lengths (B,). Each utterance in turn, cut from the batch,
    takes ``steps`` steps of torch's Adam on the model's own LayerNorm parameters, is
    encoded, and the parameters are put back."""
    params = adapted_parameters(model)
    original = [p.detach().clone() for p in params]
    outputs = []
    for row in range(feats.shape[0]):
        one, length = feats[row:row + 1, : int(lengths[row])], lengths[row:row + 1]
        optimiser = torch.optim.Adam(params, lr=lr)
        try:
            for _ in range(steps):
                with torch.enable_grad():
                    enc, _ = model.encode(one, length)
                    loss = adaptation_loss(model.ctc_head(enc[0]))
                    grads = torch.autograd.grad(loss, params)
                for p, grad in zip(params, grads, strict=True):
                    p.grad = grad
                optimiser.step()
            with torch.no_grad():
                outputs.append(model.encode(one, length)[0][0])
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, original, strict=True):
                    p.copy_(p0)
                    p.grad = None
    enc_lengths = torch.tensor([len(out) for out in outputs])
    return nn.utils.rnn.pad_sequence(outputs, batch_first=True), enc_lengths
