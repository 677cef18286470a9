"""Rescoring a beam search's finished hypotheses with a backward LM and a word n-gram LM.

Shallow fusion (``fusion.py``) scores each word piece given the pieces before it, as the
search spells them. A backward LM (``models.lm``, ``LMConfig.backward``) reads a finished
sentence last piece first, so it scores each piece given the pieces after it: context
that the forward LM never sees. When the search has ended, each utterance's ``TOP`` best
hypotheses have a share of their LM term handed to the backward LM: with the fusion weight
w and the share a, ``w * log P_forward(tokens)`` becomes
``w * ((1 - a) * log P_forward(tokens) + a * log P_backward(tokens))``, and the best of
them wins; the others drop out. A word n-gram LM (``ngram.py``), which counts every phrase
of its text, can take a share the same way: with shares a (backward) and b (n-gram), the LM
term becomes ``w * ((1 - a - b) * log P_forward + a * log P_backward + b * log P_ngram)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .beam import NEG_INF
from .ngram import SpelledNgram

TOP = 8  # hypotheses rescored per utterance (recipes/synthetic/README.md, step 4k)


@runtime_checkable
class SentenceLM(Protocol):
    """What rescoring needs from an LM (``models.lm.WordPieceLM`` is one)."""

    def token_log_probs(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token-id lists, first token first -> (B, U + 1) log-probabilities, 0 at padding."""
        ...


@dataclass(frozen=True)
class Rescoring:
    """A backward LM and a word n-gram LM, either of them None, each with its weight: the
    fusion weight times its share (module docstring)."""

    backward: SentenceLM | None
    backward_weight: float
    ngram: SpelledNgram | None = None
    ngram_weight: float = 0.0


@torch.no_grad()
def rescored(scores: torch.Tensor, tokens: Sequence[Sequence[tuple[int, ...]]],
             forward: torch.Tensor, rescoring: Rescoring) -> torch.Tensor:
    """scores (B, K) final scores, ``tokens[b][k]`` hypothesis (b, k)'s token ids, forward
    (B, K) log P_forward of each, as the search summed it (``FusionScores``) -> (B, K):
    each utterance's ``TOP`` best live hypotheses plus ``backward_weight`` x (log P_backward -
    log P_forward) and ``ngram_weight`` x (log P_ngram - log P_forward), -inf elsewhere."""
    values, index = scores.topk(min(TOP, scores.shape[1]), dim=1)
    picked = [(b, k) for b, (row_values, row_index) in enumerate(
                  zip(values.tolist(), index.tolist(), strict=True))
              for value, k in zip(row_values, row_index, strict=True) if value > NEG_INF]
    out = torch.full_like(scores, NEG_INF)
    if not picked:
        return out
    sentences = [tokens[b][k] for b, k in picked]
    b, k = (torch.tensor(column, device=scores.device) for column in zip(*picked, strict=True))
    out[b, k] = scores[b, k]
    if rescoring.backward is not None and rescoring.backward_weight:
        backward = rescoring.backward.token_log_probs(sentences).sum(dim=1)
        out[b, k] += rescoring.backward_weight * (backward.to(scores.device, scores.dtype)
                                                  - forward[b, k])
    if rescoring.ngram is not None and rescoring.ngram_weight:
        ngram = torch.from_numpy(rescoring.ngram.sentence_log_probs(sentences))
        out[b, k] += rescoring.ngram_weight * (ngram.to(scores.device, scores.dtype)
                                               - forward[b, k])
    return out
