"""Shallow fusion: an external language model's scores added to a beam search's.

For every emitted token the search adds
``weight * log P_LM(token | previous tokens) + length_bonus``, and once at the
end ``weight * log P_LM(end | all tokens)``. The LM uses the recogniser's token
ids; id 0 (blank) is its sentence start and end symbol. With a lexicon, every
word a hypothesis completes outside it costs ``oov_penalty`` (``lexicon.py``).
All of these depend on the tokens alone, so hypotheses that spell the same
tokens get the same fusion score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .beam import RecurrentState, follow
from .greedy import BLANK
from .lexicon import Lexicon


class FusionLM(Protocol):
    """What a search needs from a language model (``models.lm.WordPieceLM`` is one)."""

    def step(
        self, tokens: torch.Tensor, state: RecurrentState | None
    ) -> tuple[torch.Tensor, RecurrentState]:
        """tokens (N,), state (each (layers, N, hidden)) -> (log-probs (N, V), new state).

        ``state`` None starts a sentence; feed token 0 first.
        """
        ...


@dataclass(frozen=True)
class ShallowFusion:
    """An LM and its weights, and a lexicon and its penalty. Without an LM, or with
    ``weight`` 0, the LM term is off; without a lexicon, or with ``oov_penalty`` 0,
    the lexicon term."""

    lm: FusionLM | None = None
    weight: float = 0.0
    length_bonus: float = 0.0
    lexicon: Lexicon | None = None
    oov_penalty: float = 0.0


class FusionScores:
    """The fusion terms of every row of a beam: N = B * K rows, each one hypothesis."""

    def __init__(self, fusion: ShallowFusion, rows: int, vocab_size: int,
                 device: torch.device) -> None:
        self.weight = fusion.weight
        self.lm = fusion.lm if fusion.weight != 0 else None
        # 1 for tokens, 0 for blank: appending nothing earns no fusion score.
        self.is_token = torch.ones(vocab_size, device=device)
        self.is_token[BLANK] = 0.0
        self.bonus = fusion.length_bonus * self.is_token  # (V,)
        self.log_probs = torch.zeros(rows, vocab_size, device=device)
        self.lm_sums = torch.zeros(rows, device=device)  # log P_LM of each row's tokens
        self.state: RecurrentState = ()
        if self.lm is not None:
            self.log_probs, self.state = self.lm.step(
                torch.full((rows,), BLANK, dtype=torch.long, device=device), None)
            if self.log_probs.shape[1] != vocab_size:
                raise ValueError(f"the LM has {self.log_probs.shape[1]} tokens but the "
                                 f"recogniser {vocab_size}: they must share one tokenizer")
        self.oov_penalty = fusion.oov_penalty
        self.lexicon = fusion.lexicon if fusion.oov_penalty != 0 else None
        self.words = [""] * rows  # the word each row is spelling
        self.unknown = torch.zeros(rows, device=device)  # 1.0 where that word is unknown
        if self.lexicon is not None:
            if self.lexicon.vocab_size != vocab_size:
                raise ValueError(f"the lexicon spells {self.lexicon.vocab_size} tokens but "
                                 f"the recogniser has {vocab_size}: they must share one "
                                 "tokenizer")
            self.word_starts = self.lexicon.word_starts(device)  # (V,)

    def token_scores(self) -> torch.Tensor:
        """(N, V): what appending each token adds to each row's score (0 for blank)."""
        if self.lm is None:
            scores = self.bonus.expand_as(self.log_probs)
        else:
            scores = self.weight * self.log_probs * self.is_token + self.bonus
        if self.lexicon is not None:  # a new word ends the one being spelled
            scores = scores - self.oov_penalty * self.unknown[:, None] * self.word_starts
        return scores

    def end_scores(self) -> torch.Tensor:
        """(N,): what ending the sentence adds to each row's final score."""
        return self.weight * self.log_probs[:, BLANK] - self.oov_penalty * self.unknown

    def sentence_log_probs(self) -> torch.Tensor:
        """(N,): log P_LM of each row's tokens and the sentence's end, unweighted (0 without
        an LM): what rescoring hands a share of to the backward LM."""
        return self.lm_sums + self.log_probs[:, BLANK]

    def follow(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """rows (N,): the old row each new row continues; tokens (N,): what it appended."""
        if self.lm is not None:
            appended = self.log_probs[rows, tokens].masked_fill(tokens == BLANK, 0.0)
            self.lm_sums = self.lm_sums[rows] + appended
            self.log_probs, self.state = follow(self.lm.step, self.log_probs, self.state,
                                                rows, tokens)
        if self.lexicon is not None:
            extend, is_unknown = self.lexicon.extend, self.lexicon.is_unknown
            self.words = [extend(self.words[row], token)
                          for row, token in zip(rows.tolist(), tokens.tolist(), strict=True)]
            self.unknown = torch.tensor([float(is_unknown(w)) for w in self.words],
                                        device=self.unknown.device)
