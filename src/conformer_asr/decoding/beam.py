"""Bookkeeping shared by the batched beam searches.

A search keeps K hypotheses for each of B utterances. Scores live in (B, K)
tensors, recurrent states in rows ``b * K + k`` of (layers, B * K, hidden)
tensors, and token histories in Python tuples (``Prefixes``).

Every frame each hypothesis proposes V candidates, laid out as (B, K, V):
slot 0 keeps its prefix unchanged (a blank), slot c >= 1 appends token c.
``select`` keeps the K best of the K * V candidates of each utterance; ties go
to the lower flat index (earlier hypothesis, then lower token id), so the
search is deterministic. With a threshold it also drops every candidate that scores
more than the threshold below its utterance's best, as flashlight's and pyctcdecode's
beam searches do: a beam then holds fewer than K hypotheses where few are plausible, and
the LM (and an RNN-T's predictor) runs only for the rows that are live.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .greedy import BLANK, Hypothesis

NEG_INF = float("-inf")
RecurrentState = tuple[torch.Tensor, ...]  # each (layers, rows, hidden)
StepFn = Callable[[torch.Tensor, RecurrentState | None], tuple[torch.Tensor, RecurrentState]]


def select(
    candidates: torch.Tensor, beam: int, threshold: float | None = None
) -> tuple[torch.Tensor, ...]:
    """candidates (B, K, V) -> (scores, source hypothesis, token), each (B, beam), best first.

    Candidates more than ``threshold`` (None: any amount) below the best of their
    utterance count as -inf. A row that scores -inf is dead (there were not ``beam``
    candidates left): it continues hypothesis 0 with a blank, so that no recurrent state
    is advanced for it, and the search must keep it dead. ``topk`` finds the best set;
    only when a tie between live scores straddles its cut-off does a full stable sort
    decide which entries are in.
    """
    vocab = candidates.shape[2]
    flat = candidates.flatten(1)
    if threshold is not None:
        floor = flat.max(dim=1, keepdim=True).values - threshold
        flat = flat.masked_fill(flat < floor, NEG_INF)
    values, index = flat.topk(beam, dim=1)
    cutoff = values[:, -1:]
    straddled = ((flat >= cutoff).sum(dim=1) > beam) & (cutoff[:, 0] > NEG_INF)
    if not bool(straddled.any()):
        index = index.sort(dim=1).values  # the same set, in index order...
        scores, order = flat.gather(1, index).sort(dim=1, descending=True, stable=True)
        index = index.gather(1, order)  # ...then by score: ties stay in index order
    else:
        scores, index = flat.sort(dim=1, descending=True, stable=True)
        scores, index = scores[:, :beam], index[:, :beam]
    dead = scores == NEG_INF
    return scores, (index // vocab).masked_fill(dead, 0), (index % vocab).masked_fill(dead, BLANK)


def follow(
    step: StepFn, out: torch.Tensor, state: RecurrentState, rows: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, RecurrentState]:
    """Move a recurrent network's rows to the selected hypotheses and advance the
    rows that appended a token.

    out (N, ...) and state (each (layers, N, hidden)) belong to the old rows; rows
    (N,) is the old row each new row continues, tokens (N,) what it appended
    (blank: nothing). ``step(tokens (M,), state) -> (out (M, ...), state)``.
    """
    out = out.index_select(0, rows)
    state = tuple(s.index_select(1, rows) for s in state)
    moved = (tokens != BLANK).nonzero().flatten()
    if moved.numel():
        new_out, new_state = step(tokens[moved], tuple(s[:, moved] for s in state))
        out = out.index_copy(0, moved, new_out.to(out.dtype))
        state = tuple(s.index_copy(1, moved, n) for s, n in zip(state, new_state, strict=True))
    return out, state


def beam_rows(sources: torch.Tensor) -> torch.Tensor:
    """sources (B, K) hypothesis indices -> (B * K,) row indices into the old (B * K) rows."""
    batch, beam = sources.shape
    offsets = torch.arange(batch, device=sources.device)[:, None] * beam
    return (sources + offsets).flatten()


class Prefixes:
    """Token ids and emission frames of every hypothesis, as tuples in (B, K) lists."""

    def __init__(self, batch: int, beam: int) -> None:
        self.tokens: list[list[tuple[int, ...]]] = [[()] * beam for _ in range(batch)]
        self.frames: list[list[tuple[int, ...]]] = [[()] * beam for _ in range(batch)]

    def merge_pairs(self, alive: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
        """alive (B, K) bool -> lists (b, k, p, c) for every live hypothesis k whose
        prefix is live hypothesis p plus token c.

        Candidate (b, p, c) then spells the same tokens as hypothesis (b, k); a
        search adds its probability to k's and drops it.
        """
        bs: list[int] = []
        ks: list[int] = []
        ps: list[int] = []
        cs: list[int] = []
        for b, row in enumerate(alive.tolist()):
            index = {self.tokens[b][k]: k for k, live in enumerate(row) if live}
            for prefix, k in index.items():
                parent = index.get(prefix[:-1]) if prefix else None
                if parent is not None:
                    bs.append(b)
                    ks.append(k)
                    ps.append(parent)
                    cs.append(prefix[-1])
        return bs, ks, ps, cs

    def advance(self, sources: torch.Tensor, tokens: torch.Tensor, frame: int) -> None:
        """sources, tokens (B, K) from ``select``: each new hypothesis continues
        hypothesis ``sources`` and appends ``tokens`` (at ``frame``) unless it is blank."""
        for b, (row_src, row_tok) in enumerate(zip(sources.tolist(), tokens.tolist(),
                                                   strict=True)):
            old_tokens, old_frames = self.tokens[b], self.frames[b]
            self.tokens[b] = [old_tokens[s] + (c,) if c != BLANK else old_tokens[s]
                              for s, c in zip(row_src, row_tok, strict=True)]
            self.frames[b] = [old_frames[s] + (frame,) if c != BLANK else old_frames[s]
                              for s, c in zip(row_src, row_tok, strict=True)]

    def retime(self, b: int, k: int, parent: int, frame: int) -> None:
        """Hypothesis (b, k), which is hypothesis (b, ``parent``) plus a token, takes its
        parent's frames and that token's emission at ``frame``."""
        self.frames[b][k] = (*self.frames[b][parent], frame)

    def best(self, scores: torch.Tensor) -> list[Hypothesis]:
        """scores (B, K) final scores -> the best hypothesis of each utterance
        (the first one on ties)."""
        hyps = []
        for b, k in enumerate(scores.argmax(dim=1).tolist()):
            hyps.append(Hypothesis(tokens=list(self.tokens[b][k]),
                                   frames=list(self.frames[b][k]), score=float(scores[b, k])))
        return hyps
