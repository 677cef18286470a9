"""Batched RNN-T "modified" beam search: at most one token per frame.

At every frame each hypothesis either takes blank (same prefix, next frame) or
emits exactly one token and moves to the next frame, so all hypotheses stay on
the same frame and the batch x beam can be scored in one joint call. A prefix
reached both by blank from the beam and by a token from a shorter hypothesis is
one hypothesis: the two probabilities are added. Emitting a token adds the
fusion score (``fusion.py``).
"""

from __future__ import annotations

import torch

from ..models.asr import ASRModel
from .beam import NEG_INF, Prefixes, RecurrentState, beam_rows, follow, select
from .fusion import FusionScores, ShallowFusion
from .greedy import BLANK, Hypothesis
from .rescore import Rescoring, rescored


@torch.no_grad()
def rnnt_beam_search(
    model: ASRModel, enc: torch.Tensor, lengths: torch.Tensor, beam_size: int,
    fusion: ShallowFusion | None = None, threshold: float | None = None,
    rescoring: Rescoring | None = None,
) -> list[Hypothesis]:
    """enc (B, T, D) encoder output, lengths (B,) -> best hypothesis per utterance.

    ``Hypothesis.score`` is the log-probability of the hypothesis summed over its
    one-token-per-frame alignments that stayed in the beam, plus the fusion terms, and
    the rescoring term where ``rescoring`` is given (``rescore.py``).
    Beam size 1 is greedy search with ``max_symbols_per_frame`` 1. Each frame keeps the
    ``beam_size`` best candidates that score within ``threshold`` of the best
    (``beam.select``).
    """
    assert model.predictor is not None and model.joint is not None, "model has no RNN-T head"
    predictor, joint = model.predictor, model.joint
    batch, vocab = enc.shape[0], model.cfg.vocab_size
    rows = batch * beam_size

    def predict(
        tokens: torch.Tensor, state: RecurrentState | None
    ) -> tuple[torch.Tensor, RecurrentState]:
        out, new_state = predictor.step(tokens, state)
        return joint.pred_proj(out), new_state

    enc_proj = joint.enc_proj(enc)  # (B, T, J)
    pred_proj, pred_state = predict(enc.new_zeros(rows, dtype=torch.long), None)  # (N, J)
    scores = torch.full((batch, beam_size), NEG_INF, device=enc.device)
    scores[:, 0] = 0.0
    prefixes = Prefixes(batch, beam_size)
    lm = FusionScores(fusion or ShallowFusion(), rows, vocab, enc.device)
    for t in range(int(lengths.max())):
        active = (lengths > t).to(enc.device)
        logits = joint(enc_proj[:, t, None, :], pred_proj.view(batch, beam_size, -1))
        candidates = (scores[:, :, None] + logits.float().log_softmax(dim=-1)
                      + lm.token_scores().reshape(batch, beam_size, vocab))  # (B, K, V)
        b, k, p, c = prefixes.merge_pairs((scores > NEG_INF) & active[:, None])
        if b:
            candidates[b, k, BLANK] = torch.logaddexp(candidates[b, k, BLANK],
                                                      candidates[b, p, c])
            candidates[b, p, c] = NEG_INF
        finished = torch.full_like(candidates, NEG_INF)
        finished[:, :, BLANK] = scores
        candidates = torch.where(active[:, None, None], candidates, finished)
        scores, sources, tokens = select(candidates, beam_size, threshold)

        prefixes.advance(sources, tokens, t)
        moved, appended = beam_rows(sources), tokens.flatten()
        pred_proj, pred_state = follow(predict, pred_proj, pred_state, moved, appended)
        lm.follow(moved, appended)
    final = scores + lm.end_scores().view(batch, beam_size)
    if rescoring is not None:
        final = rescored(final, prefixes.tokens,
                         lm.sentence_log_probs().view(batch, beam_size), rescoring)
    return prefixes.best(final)
