"""Known words, and how the recogniser's word pieces spell them.

Beam search uses a lexicon to penalise hypotheses that spell words outside it
(``DecodingOptions.oov_penalty``): a word is complete when the next piece starts a
new word (SentencePiece's ``▁`` prefix) or the utterance ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .greedy import BLANK

WORD_START = "\u2581"


class Lexicon:
    """``words``: the known words; ``pieces``: each token id's SentencePiece piece."""

    def __init__(self, words: Iterable[str], pieces: Sequence[str]) -> None:
        self.words = frozenset(words)
        self.texts = [piece.removeprefix(WORD_START) for piece in pieces]
        self.starts = [i != BLANK and piece.startswith(WORD_START)
                       for i, piece in enumerate(pieces)]

    @property
    def vocab_size(self) -> int:
        return len(self.texts)

    def word_starts(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) 1.0 for the pieces that begin a word, else 0.0."""
        return torch.tensor(self.starts, dtype=torch.float32, device=device)

    def extend(self, word: str, token: int) -> str:
        """The word being spelled after ``token`` follows a hypothesis that is spelling
        ``word`` (blank appends nothing)."""
        if token == BLANK:
            return word
        return self.texts[token] if self.starts[token] else word + self.texts[token]

    def is_unknown(self, word: str) -> bool:
        """True if ``word``, ended here, is not a known word ("" is no word at all)."""
        return bool(word) and word not in self.words
