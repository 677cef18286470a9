"""Transcript normalisation shared by the corpus builder, tokenizer training and scoring."""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase ASCII letters, apostrophes inside words, single spaces.

    Accents are stripped (``café`` -> ``cafe``), hyphens and other punctuation
    become word breaks, and apostrophes not between letters are dropped.
    """
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = _NOT_WORD.sub(" ", text.lower().replace("-", " "))
    words = (w.strip("'") for w in _SPACES.split(text))
    return " ".join(w for w in words if w)
