"""RNN-Transducer decoder: LSTM prediction network and joint network (Graves 2012)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout
from .lstm_step import LSTMState, lstm_step


class PredictionNetwork(nn.Module):
    """Embedding + 1-layer LSTM over previous non-blank tokens; blank (0) is the start symbol."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers=1, batch_first=True)
        self.dropout = Dropout(dropout)
        self.hidden_dim = hidden_dim

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, U) -> (B, U+1, H): output before each target and after the last."""
        start = targets.new_zeros(targets.shape[0], 1)
        out, _ = self.lstm(self.embed(torch.cat([start, targets], dim=1)))
        return self.dropout(out)

    def step(
        self, tokens: torch.Tensor, state: LSTMState | None
    ) -> tuple[torch.Tensor, LSTMState]:
        """One step: tokens (B,), state -> (out (B, H), new state)."""
        return lstm_step(self.lstm, self.embed(tokens), state)


class JointNetwork(nn.Module):
    """Linear(enc) + Linear(pred) -> tanh -> Linear(vocab).

    The two input projections are separate methods so that callers project
    each side once and only broadcast the cheap sum.
    """

    def __init__(self, enc_dim: int, pred_dim: int, joint_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joint_dim)
        self.pred_proj = nn.Linear(pred_dim, joint_dim)
        self.out = nn.Linear(joint_dim, vocab_size)

    def forward(self, enc_projected: torch.Tensor, pred_projected: torch.Tensor) -> torch.Tensor:
        """Broadcastable projected inputs, e.g. (B, T, 1, J) + (B, 1, U+1, J) -> (B, T, U+1, V)."""
        hidden = torch.tanh_(enc_projected + pred_projected)  # the sum is a temporary
        if not isinstance(self.out, nn.Linear):  # e.g. int8 (quantize_int8)
            return self.out(hidden)
        # Adding the bias after the product: nn.Linear's addmm first copies the bias into
        # every row of its output, an extra pass over training's largest tensor.
        return F.linear(hidden, self.out.weight).add_(self.out.bias)

    def full(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc (B, T, D), pred (B, U+1, H) -> logits (B, T, U+1, V)."""
        return self(self.enc_proj(enc)[:, :, None, :], self.pred_proj(pred)[:, None, :, :])

    def pruned(self, enc: torch.Tensor, pred: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """enc (B, T, D), pred (B, U+1, H), windows (B, T, S) label positions
        -> logits (B, T, S, V) at frame t and label position ``windows[b, t, s]``."""
        pred_projected = self.pred_proj(pred)  # (B, U+1, J)
        batch, max_t, width = windows.shape
        index = windows.reshape(batch, max_t * width, 1).expand(-1, -1, pred_projected.shape[2])
        pred_windows = pred_projected.gather(1, index).view(batch, max_t, width, -1)
        return self(self.enc_proj(enc)[:, :, None, :], pred_windows)


class SimpleJoint(nn.Module):
    """The pruned loss's cheap joint: logits ``am[t] + lm[u]``, one Linear per side.

    Only training uses it, to find where the alignments lie (``simple_rnnt_loss``).
    """

    def __init__(self, enc_dim: int, pred_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.am = nn.Linear(enc_dim, vocab_size)
        self.lm = nn.Linear(pred_dim, vocab_size)

    def forward(
        self, enc: torch.Tensor, pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """enc (B, T, D), pred (B, U+1, H) -> am (B, T, V), lm (B, U+1, V)."""
        return self.am(enc), self.lm(pred)

