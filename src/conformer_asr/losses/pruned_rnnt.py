"""Pruned RNN-T loss (Kuang et al., 2022, "Pruned RNN-T for fast, memory-efficient ASR training").

The full loss evaluates the joint network at every (frame, label position) pair, a
``(B, T, U+1, V)`` tensor that dominates a transducer's training step. Most of the
lattice carries almost no probability, so the pruned loss evaluates it in a band:

1. A *simple* joint whose logits are a sum ``am[t] + lm[u]`` of one projection of the
   encoder frame and one of the prediction-network state. Its lattice needs only the
   normalisers ``log sum_v exp(am[t, v] + lm[u, v])``, one batched matmul, and its
   loss (:func:`simple_rnnt_loss`) both trains the projections and gives, per frame,
   the posterior of every label position.
2. :func:`prune_windows` picks per frame a window of ``S`` consecutive label positions
   holding most of that posterior, with the first window at 0, windows never moving
   back nor jumping more than ``S - 1`` from one frame to the next, and the last
   frame's window reaching ``U_b``: a complete alignment always lies inside them.
3. The real joint network runs only in the windows, ``(B, T, S, V)``, and
   :func:`pruned_rnnt_loss` is the RNN-T loss on the lattice restricted to them.

Training minimises the pruned loss plus a weight times the simple loss.
"""

from __future__ import annotations

import math

import torch

from .rnnt import check_float, check_labels, lattice_nll, reduce_losses


def _simple_lattice(
    am: torch.Tensor, lm: torch.Tensor, targets: torch.Tensor, blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """am (B, T, V), lm (B, U+1, V), targets (B, U) -> log-probs of blank (B, T, U+1)
    and of the next label (B, T, U) under the joint ``log_softmax(am[t] + lm[u])``."""
    am_max = am.detach().amax(dim=2, keepdim=True)
    lm_max = lm.detach().amax(dim=2, keepdim=True)
    sums = torch.bmm((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))
    tiny = torch.finfo(sums.dtype).tiny  # keeps log finite if every product underflows
    lse = sums.clamp_min(tiny).log() + am_max + lm_max.transpose(1, 2)  # (B, T, U+1)
    blank_lp = am[:, :, blank, None] + lm[:, None, :, blank] - lse
    am_label = am.gather(2, targets[:, None, :].expand(-1, am.shape[1], -1))  # (B, T, U)
    lm_label = lm[:, :-1].gather(2, targets[..., None]).squeeze(2)  # (B, U)
    label_lp = am_label + lm_label[:, None, :] - lse[:, :, :-1]
    return blank_lp, label_lp


def simple_rnnt_loss(
    am: torch.Tensor,
    lm: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """RNN-T loss of the joint ``am[t] + lm[u]``, and where its alignments lie.

    Equal to ``rnnt_loss(am[:, :, None] + lm[:, None], ...)`` without building that
    (B, T, U+1, V) tensor.

    Args:
        am: (B, T, V) per-frame logits, float32 or float64.
        lm: (B, U+1, V) per-label-position logits, same dtype.
        targets, logit_lengths, target_lengths, blank, reduction: as ``rnnt_loss``.

    Returns:
        The loss, (B,) or scalar, and the occupancy (B, T, U+1): the posterior
        probability that the alignment passes through state (t, u) (no gradient),
        the input of :func:`prune_windows`.
    """
    if am.dim() != 3 or lm.dim() != 3 or am.shape[::2] != lm.shape[::2]:
        raise ValueError(f"am must be (B, T, V) and lm (B, U+1, V), got {tuple(am.shape)} "
                         f"and {tuple(lm.shape)}")
    check_float(am=am, lm=lm)
    batch, max_t, vocab = am.shape
    targets, logit_lengths, target_lengths = check_labels(
        (batch, max_t, lm.shape[1], vocab), am.device, targets, logit_lengths, target_lengths,
        blank, reduction,
    )
    blank_lp, label_lp = _simple_lattice(am, lm, targets, blank)
    losses, occupancy = lattice_nll(blank_lp, label_lp, logit_lengths, target_lengths)
    return reduce_losses(losses, reduction), occupancy


def prune_windows(
    occupancy: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Per frame, the label positions where the pruned loss evaluates the joint.

    Args:
        occupancy: (B, T, U+1) from :func:`simple_rnnt_loss`.
        logit_lengths: (B,) T_b.
        target_lengths: (B,) U_b.
        size: S >= 2, positions per frame (fewer if U+1 < S).

    Returns:
        (B, T, min(S, U+1)) int64: ``start_t + [0, 1, ..., S-1]``, where ``start_t`` is
        the start whose window holds the most occupancy at frame t, then moved where
        needed to satisfy ``start_0 = 0``, ``0 <= start_{t+1} - start_t <= S - 1`` and
        ``U_b`` inside the window of frame ``T_b - 1``. Frames past ``T_b`` repeat the
        last window.

    Raises:
        ValueError: if ``size < 2``, or an utterance has more labels than S - 1 per
            frame allow (``U_b > T_b * (S - 1)``).
    """
    if size < 2:
        raise ValueError(f"prune range must be at least 2, got {size}")
    max_t, max_u1 = occupancy.shape[1:]
    logit_lengths = logit_lengths.to(device=occupancy.device, dtype=torch.long)
    target_lengths = target_lengths.to(device=occupancy.device, dtype=torch.long)
    width = min(size, max_u1)
    if width < max_u1 and bool((target_lengths > logit_lengths * (width - 1)).any()):
        raise ValueError(
            f"prune range {size} is too small: an utterance has more than {width - 1} labels "
            f"per frame (labels {target_lengths.tolist()}, frames {logit_lengths.tolist()})"
        )
    totals = torch.nn.functional.pad(occupancy.cumsum(dim=2), (1, 0))
    starts = (totals[..., width:] - totals[..., :-width]).argmax(dim=2)  # (B, T)
    last = (target_lengths + 1 - width).clamp(min=0)[:, None]  # the highest useful start
    frames = torch.arange(max_t, device=occupancy.device)
    starts = torch.where(frames >= logit_lengths[:, None] - 1, last, starts.minimum(last))
    starts = starts.cummax(dim=1).values
    # No jump above S - 1: raise earlier starts (start_t >= start_{t+1} - (S - 1)),
    # then cap them all at (S - 1) * t so that the first is 0; both keep them monotone.
    ramp = frames * (width - 1)
    starts = (starts - ramp).flip(1).cummax(dim=1).values.flip(1) + ramp
    starts = starts.minimum(ramp)
    return starts[..., None] + torch.arange(width, device=occupancy.device)


def pruned_rnnt_loss(
    logits: torch.Tensor,
    windows: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """RNN-T loss on the lattice restricted to ``windows``.

    Args:
        logits: (B, T, S, V) joint output at frame t and label position
            ``windows[b, t, s]``, float32 or float64.
        windows: (B, T, S) from :func:`prune_windows`.
        targets, logit_lengths, target_lengths, blank, reduction: as ``rnnt_loss``.

    Returns:
        The loss, (B,) or scalar. With windows covering every position it equals
        ``rnnt_loss``; otherwise it is at least as large (fewer alignments).
    """
    if logits.dim() != 4 or windows.shape != logits.shape[:3]:
        raise ValueError(f"logits must be (B, T, S, V) and windows (B, T, S), got "
                         f"{tuple(logits.shape)} and {tuple(windows.shape)}")
    check_float(logits=logits)
    batch, max_t, width, vocab = logits.shape
    max_u1 = targets.shape[1] + 1 if targets.dim() == 2 else 1  # else check_labels says why
    targets, logit_lengths, target_lengths = check_labels(
        (batch, max_t, max_u1, vocab), logits.device, targets, logit_lengths, target_lengths,
        blank, reduction,
    )
    windows = windows.to(device=logits.device, dtype=torch.long)
    lse = logits.logsumexp(dim=3)  # (B, T, S)
    next_label = torch.nn.functional.pad(targets, (0, 1), value=blank)  # (B, U+1)
    labels = next_label.gather(1, windows.flatten(1)).view(batch, max_t, width)
    label_w = logits.gather(3, labels[..., None]).squeeze(3) - lse
    blank_w = logits[..., blank] - lse
    outside = logits.new_full((batch, max_t, max_u1), -math.inf)
    blank_lp = outside.scatter(2, windows, blank_w)
    label_lp = outside.scatter(2, windows, label_w)[:, :, :-1]
    losses, _ = lattice_nll(blank_lp, label_lp, logit_lengths, target_lengths)
    return reduce_losses(losses, reduction)
