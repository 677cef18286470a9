"""Batched CTC prefix beam search in log space, with optional shallow fusion.

Each hypothesis is a distinct label prefix with two probabilities: that the
frames so far spell it and end in blank (``p_blank``) or in its last label
(``p_label``). At frame t, with frame log-probs ``lp``:

    stay in blank:      p_blank'  = (p_blank + p_label) * lp[blank]
    repeat last label:  p_label'  = p_label * lp[last]
    append label c:     p_label'' = (p_blank + p_label) * lp[c]   (c != last)
                                  = p_blank * lp[c]               (c == last)

(products in probability space, sums of logs here). When an appended prefix is
already in the beam, the two are merged. Appending a label adds the fusion
score (``fusion.py``); hypotheses are ranked by log(p_blank + p_label) plus
their fusion scores.

A prefix's labels are timed by its most probable way in: a prefix can enter a wide
beam frames before its last label is spoken, at a tiny probability, and when the real
emission then merges into it with more probability, the prefix takes that emission's
frame, and the frames of the prefix it extends, for its own.
"""

from __future__ import annotations

import torch

from .beam import NEG_INF, Prefixes, beam_rows, select
from .fusion import FusionScores, ShallowFusion
from .greedy import BLANK, Hypothesis
from .rescore import Rescoring, rescored


@torch.no_grad()
def ctc_beam_search(
    log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int,
    fusion: ShallowFusion | None = None, threshold: float | None = None,
    rescoring: Rescoring | None = None,
) -> list[Hypothesis]:
    """log_probs (B, T, V) CTC log-probabilities, lengths (B,) -> best prefix per utterance.

    ``Hypothesis.score`` is log P_CTC(tokens) plus the fusion terms, and the rescoring
    term where ``rescoring`` is given (``rescore.py``); ``frames`` is
    the frame at which each token was emitted on the prefix's most probable way in
    (module docstring). Each frame keeps the ``beam_size`` best candidates that score
    within ``threshold`` of the best (``beam.select``).
    """
    batch, _, vocab = log_probs.shape
    device = log_probs.device
    p_blank = torch.full((batch, beam_size), NEG_INF, device=device)
    p_blank[:, 0] = 0.0
    p_label = torch.full_like(p_blank, NEG_INF)
    fused = torch.zeros_like(p_blank)  # sum of the fusion scores of each prefix
    last = torch.zeros(batch, beam_size, dtype=torch.long, device=device)
    timed_by = torch.full_like(p_blank, NEG_INF)  # the append that timed each last label
    prefixes = Prefixes(batch, beam_size)
    lm = FusionScores(fusion or ShallowFusion(), batch * beam_size, vocab, device)
    for t in range(int(lengths.max())):
        lp = log_probs[:, t].float()  # (B, V)
        active = (lengths > t).to(device)[:, None]  # (B, 1)
        total = torch.logaddexp(p_blank, p_label)  # (B, K)
        lp_last = lp.gather(1, last)
        stay_blank = torch.where(active, total + lp[:, BLANK, None], p_blank)
        repeat = torch.where(last != BLANK, p_label + lp_last, NEG_INF)
        stay_label = torch.where(active, repeat, p_label)

        append = total[:, :, None] + lp[:, None, :]  # (B, K, V)
        append.scatter_(2, last[:, :, None], (p_blank + lp_last)[:, :, None])
        append[:, :, BLANK] = NEG_INF
        append.masked_fill_(~active[:, :, None], NEG_INF)
        b, k, p, c = prefixes.merge_pairs((total > NEG_INF) & active)
        if b:
            stay_label[b, k] = torch.logaddexp(stay_label[b, k], append[b, p, c])
            later = append[b, p, c] > timed_by[b, k]
            for i in later.nonzero().flatten().tolist():
                prefixes.retime(b[i], k[i], p[i], t)
            timed_by[b, k] = torch.maximum(timed_by[b, k], append[b, p, c])
            append[b, p, c] = NEG_INF

        fused_next = fused[:, :, None] + lm.token_scores().reshape(batch, beam_size, vocab)
        candidates = append + fused_next
        candidates[:, :, BLANK] = torch.logaddexp(stay_blank, stay_label) + fused
        scores, sources, tokens = select(candidates, beam_size, threshold)

        flat = sources * vocab + tokens
        stayed = tokens == BLANK
        dead = scores == NEG_INF  # blank in ``select``'s output: not a stay
        p_blank = torch.where(stayed & ~dead, stay_blank.gather(1, sources), NEG_INF)
        p_label = torch.where(stayed, stay_label.gather(1, sources),
                              append.flatten(1).gather(1, flat)).masked_fill(dead, NEG_INF)
        fused = fused_next.flatten(1).gather(1, flat)  # slot 0 adds nothing
        last = torch.where(stayed, last.gather(1, sources), tokens)
        timed_by = torch.where(stayed, timed_by.gather(1, sources), p_label)
        prefixes.advance(sources, tokens, t)
        lm.follow(beam_rows(sources), tokens.flatten())
    final = torch.logaddexp(p_blank, p_label) + fused + lm.end_scores().view(batch, beam_size)
    if rescoring is not None:
        final = rescored(final, prefixes.tokens,
                         lm.sentence_log_probs().view(batch, beam_size), rescoring)
    return prefixes.best(final)
