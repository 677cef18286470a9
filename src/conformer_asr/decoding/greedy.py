"""Batched greedy decoding for CTC and RNN-T.

Both return, per utterance, the token ids and the encoder frame at which each
token was emitted (used for word timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.asr import ASRModel

BLANK = 0


@dataclass
class Hypothesis:
    """Decoded tokens, the encoder frame of each, and the total log-probability."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    score: float = 0.0


@torch.no_grad()
def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
    """log_probs (B, T, V), lengths (B,) -> best path with repeats merged and blanks removed."""
    best, best_ids = log_probs.max(dim=-1)  # (B, T)
    previous = torch.nn.functional.pad(best_ids, (1, 0), value=BLANK)[:, :-1]
    emit = (best_ids != BLANK) & (best_ids != previous)
    hyps = []
    for b in range(best_ids.shape[0]):
        n = int(lengths[b])
        frames = emit[b, :n].nonzero().flatten()
        hyps.append(Hypothesis(
            tokens=best_ids[b, frames].tolist(), frames=frames.tolist(),
            score=float(best[b, :n].sum()),
        ))
    return hyps


@torch.no_grad()
def rnnt_greedy(
    model: ASRModel, enc: torch.Tensor, lengths: torch.Tensor, max_symbols_per_frame: int = 5
) -> list[Hypothesis]:
    """enc (B, T, D) encoder output, lengths (B,) -> greedy transducer hypotheses.

    At each frame every utterance emits the joint's argmax until it is blank,
    at most ``max_symbols_per_frame`` times; the prediction network only
    advances for utterances that emitted a token.
    """
    assert model.predictor is not None and model.joint is not None, "model has no RNN-T head"
    predictor, joint = model.predictor, model.joint
    batch = enc.shape[0]
    enc_proj = joint.enc_proj(enc)  # (B, T, J)
    pred_out, state = predictor.step(enc.new_zeros(batch, dtype=torch.long), None)
    pred_proj = joint.pred_proj(pred_out)  # (B, J)
    hyps = [Hypothesis() for _ in range(batch)]
    for t in range(int(lengths.max())):
        active = lengths > t
        for _ in range(max_symbols_per_frame):
            logp = joint(enc_proj[:, t], pred_proj).log_softmax(dim=-1)
            score, token = logp.max(dim=-1)
            emit = active & (token != BLANK)
            for b in active.nonzero().flatten().tolist():
                hyps[b].score += float(score[b])
            if not bool(emit.any()):
                break
            for b in emit.nonzero().flatten().tolist():
                hyps[b].tokens.append(int(token[b]))
                hyps[b].frames.append(t)
            new_out, new_state = predictor.step(token.masked_fill(~emit, BLANK), state)
            keep = emit[:, None]
            pred_proj = torch.where(keep, joint.pred_proj(new_out), pred_proj)
            state = (
                torch.where(keep[None], new_state[0], state[0]),
                torch.where(keep[None], new_state[1], state[1]),
            )
            active = emit
    return hyps
