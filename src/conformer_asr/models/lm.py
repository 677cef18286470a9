"""Word-piece LSTM language model, for shallow fusion with the recogniser.

The LM uses the recogniser's tokenizer. Id 0, the recogniser's blank, never
occurs in text, so the LM reuses it as the sentence boundary: a sentence
``w1 .. wn`` is read as inputs ``0 w1 .. wn`` that predict ``w1 .. wn 0``, so
id 0 is both the start symbol and the end-of-sentence token.

A backward LM (``LMConfig.backward``) reads each sentence's word pieces last to first,
``0 wn .. w1`` predicting ``wn .. w1 0``. It cannot follow a search left to right; it
rescores the search's finished hypotheses (``decoding.rescore``), where it sees each word
with the words after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..text.tokenizer import BLANK_ID, Tokenizer
from .config import ConfigError, build_section
from .dropout import Dropout
from .lstm_step import LSTMState, lstm_step

BOUNDARY = BLANK_ID  # sentence start and end
IGNORE = -100  # padding in targets (cross_entropy's default ignore_index)


@dataclass(frozen=True)
class LMConfig:
    """Embedding -> ``n_layers`` LSTM layers of ``hidden_dim`` -> softmax over the vocabulary;
    ``backward``: reads sentences last word piece first (module docstring)."""

    name: str = "custom"
    vocab_size: int = 1000
    embed_dim: int = 256
    hidden_dim: int = 512
    n_layers: int = 2
    dropout: float = 0.1
    backward: bool = False

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError("lm.vocab_size: needs at least the boundary and one token")
        for name in ("embed_dim", "hidden_dim", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"lm.{name}: must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lm.dropout: must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        return build_section(cls, data, "lm")


# The paper fuses a 3-layer LSTM LM of width 4096 (its embedding width is not
# given; 1024 here). The small sizes train on a CPU. ``vocab_size`` is replaced
# by the tokenizer's at training time.
LM_CONFIGS: dict[str, LMConfig] = {
    "lstm-lm-tiny": LMConfig(name="lstm-lm-tiny", embed_dim=64, hidden_dim=128, n_layers=1,
                             dropout=0.0),
    "lstm-lm-small": LMConfig(name="lstm-lm-small", embed_dim=256, hidden_dim=512, n_layers=2,
                              dropout=0.1),
    "lstm-lm-medium": LMConfig(name="lstm-lm-medium", embed_dim=256, hidden_dim=768,
                               n_layers=2, dropout=0.1),
    "lstm-lm-paper": LMConfig(name="lstm-lm-paper", embed_dim=1024, hidden_dim=4096,
                              n_layers=3, dropout=0.1),
}


def get_lm_config(name: str) -> LMConfig:
    """``lstm-lm-tiny|small|medium|paper``, or the short form ``tiny|small|medium|paper``."""
    config = LM_CONFIGS.get(name) or LM_CONFIGS.get(f"lstm-lm-{name}")
    if config is None:
        raise ConfigError(f"lm config: unknown name {name!r} (known: {', '.join(LM_CONFIGS)})")
    return config


def boundary_batch(
    sentences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> inputs ``0 w1 .. wn`` and targets ``w1 .. wn 0``, each (B, U + 1),
    padded with 0 (inputs) and IGNORE (targets)."""
    width = max(len(s) for s in sentences) + 1
    inputs = torch.full((len(sentences), width), BOUNDARY, dtype=torch.long)
    targets = torch.full((len(sentences), width), IGNORE, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        ids = torch.tensor(list(sentence), dtype=torch.long)
        inputs[i, 1:len(ids) + 1] = ids
        targets[i, :len(ids)] = ids
        targets[i, len(ids)] = BOUNDARY
    return inputs.to(device), targets.to(device)


class WordPieceLM(nn.Module):
    """LSTM LM over the recogniser's word pieces; ``step`` is the shallow-fusion API."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, num_layers=cfg.n_layers,
                            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0, batch_first=True)
        self.dropout = Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, cfg.vocab_size)

    def forward(
        self, inputs: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """inputs (B, U) token ids -> (logits (B, U, V) for the next token, state)."""
        out, state = self.lstm(self.dropout(self.embed(inputs)), state)
        return self.out(self.dropout(out)), state

    def step(
        self, tokens: torch.Tensor, state: LSTMState | None
    ) -> tuple[torch.Tensor, LSTMState]:
        """tokens (N,), state -> (log P(next token) (N, V), state). Start with token 0
        and state None. (A backward LM's next token is the one before.)"""
        out, state = lstm_step(self.lstm, self.dropout(self.embed(tokens)), state)
        return self.out(self.dropout(out)).float().log_softmax(dim=-1), state

    def token_log_probs(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token-id lists, first token first -> (B, U + 1) log-probability of each token
        and of the end symbol, in the order the LM reads them, 0 at padding."""
        if self.cfg.backward:
            sentences = [list(reversed(sentence)) for sentence in sentences]
        inputs, targets = boundary_batch(sentences, self.embed.weight.device)
        logits, _ = self(inputs)
        log_probs = logits.float().log_softmax(dim=-1)
        valid = targets != IGNORE
        picked = log_probs.gather(2, targets.clamp(min=0)[:, :, None])[:, :, 0]
        return picked.masked_fill(~valid, 0.0)

    @torch.no_grad()
    def score(self, text: str, tokenizer: Tokenizer) -> float:
        """Natural-log probability of a whole sentence (its end included); call ``eval()``
        first."""
        return float(self.token_log_probs([tokenizer.encode(text)]).sum())
