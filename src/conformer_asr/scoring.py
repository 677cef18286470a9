"""Word error rate with its parts (jiwer), summed over utterances and groups."""

from __future__ import annotations

from dataclasses import dataclass

import jiwer


@dataclass
class WordErrors:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    words: int = 0  # reference words

    @property
    def wer(self) -> float:
        """Percent; 0 for an empty reference with no insertions."""
        errors = self.substitutions + self.deletions + self.insertions
        return 100.0 * errors / self.words if self.words else (100.0 if errors else 0.0)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(self.substitutions + other.substitutions,
                          self.deletions + other.deletions,
                          self.insertions + other.insertions, self.words + other.words)


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Errors of one utterance (texts already normalised)."""
    if not reference.split():
        return WordErrors(insertions=len(hypothesis.split()))
    out = jiwer.process_words(reference, hypothesis)
    return WordErrors(out.substitutions, out.deletions, out.insertions,
                      out.substitutions + out.deletions + out.hits)
