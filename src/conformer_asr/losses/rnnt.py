"""RNN-T (transducer) loss in plain PyTorch, with torchaudio's ``rnnt_loss`` interface.

``rnnt_loss`` is the training path: a custom autograd function that never
materialises a log-softmax copy of the ``(B, T, U+1, V)`` joint output. It
reduces the logits to log-probabilities of shape ``(B, T, U+1)`` (blank) and
``(B, T, U)`` (next label), runs the alpha/beta recursions over anti-diagonals
``t + u = n`` (vectorised over batch and diagonal) and writes the gradient
in place into a single tensor of the logits' shape. Apart from that gradient,
the extra memory it needs is a small fraction of the logits. The forward
variables are renormalised on every diagonal and the backward ones share the
scale factors, so log-values stay small and float32 gradients stay accurate
on long lattices (no large ``alpha + beta - log_likelihood`` cancellation).

``rnnt_loss_reference`` is the textbook version (full log-softmax, cell-by-cell
alpha recursion, autograd), kept as a readable baseline for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

_REDUCTIONS = ("none", "mean", "sum")
# The logsumexp over V runs on slices along T of about this many bytes, through one
# scratch tensor of that size. Its temporaries then stay in cache and are not faulted
# in afresh: glibc hands blocks over 32 MiB back to the kernel when they are freed,
# and trims its heap, and a new page costs more than the logsumexp of its 1024 floats
# (M-size logits: 290 ms in 50 MB slices, 125 ms in new 4 MB ones).
_LSE_SLICE_BYTES = 4 * 2**20


def _check_inputs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the arguments of the loss functions.

    Returns:
        ``targets`` (B, U) with padding replaced by ``blank``, ``logit_lengths`` (B,)
        and ``target_lengths`` (B,), all int64 on the logits' device.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, T, U+1, V), got {tuple(logits.shape)}")
    check_float(logits=logits)
    return check_labels(logits.shape, logits.device, targets, logit_lengths, target_lengths,
                        blank, reduction)


def check_float(**tensors: torch.Tensor) -> None:
    """ValueError unless the named tensors are all float32 or all float64."""
    dtypes = [tensor.dtype for tensor in tensors.values()]
    if dtypes[0] not in (torch.float32, torch.float64) or len(set(dtypes)) > 1:
        both = " (one dtype)" if len(dtypes) > 1 else ""
        raise ValueError(f"{' and '.join(tensors)} must be float32 or float64{both}, got "
                         f"{', '.join(map(str, dtypes))}")


def check_labels(
    shape: tuple[int, int, int, int] | torch.Size,
    device: torch.device,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the label arguments of a lattice of ``shape`` (B, T, U+1, V); as
    :func:`_check_inputs` returns them."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    batch, max_t, max_u1, vocab = shape
    if max_t < 1 or max_u1 < 1 or vocab < 1:
        raise ValueError(f"logits must have non-empty T, U+1 and V, got {tuple(shape)}")
    if not 0 <= blank < vocab:
        raise ValueError(f"blank must be in [0, {vocab}), got {blank}")
    if targets.shape != (batch, max_u1 - 1) or targets.is_floating_point():
        raise ValueError(
            f"targets must be an integer tensor of shape (B, U) = {(batch, max_u1 - 1)}, "
            f"got {targets.dtype} {tuple(targets.shape)}"
        )
    for name, lengths, low, high in (
        ("logit_lengths", logit_lengths, 1, max_t),
        ("target_lengths", target_lengths, 0, max_u1 - 1),
    ):
        if lengths.shape != (batch,) or lengths.is_floating_point():
            raise ValueError(
                f"{name} must be an integer tensor of shape (B,) = ({batch},), "
                f"got {lengths.dtype} {tuple(lengths.shape)}"
            )
        if bool(((lengths < low) | (lengths > high)).any()):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {lengths.tolist()}")
    targets = targets.to(device=device, dtype=torch.long)
    logit_lengths = logit_lengths.to(device=device, dtype=torch.long)
    target_lengths = target_lengths.to(device=device, dtype=torch.long)
    padding = torch.arange(max_u1 - 1, device=device) >= target_lengths[:, None]
    targets = targets.masked_fill(padding, blank)
    if bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"targets must lie in [0, {vocab}) within target_lengths")
    return targets, logit_lengths, target_lengths


def reduce_losses(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Applies ``reduction`` to per-utterance losses (B,)."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _skew(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, R, W) -> (B, rows, W) with ``out[:, n, u] = x[:, n - u, u]``, -inf where out of range."""
    r, w = x.shape[1], x.shape[2]
    t = torch.arange(rows, device=x.device)[:, None] - torch.arange(w, device=x.device)
    out = x.gather(1, t.clamp(0, r - 1).expand(x.shape[0], -1, -1))
    return out.masked_fill_((t < 0) | (t >= r), -math.inf)


def _unskew(s: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of :func:`_skew`: (B, N, W) -> (B, rows, W), ``out[:, t, u] = s[:, t + u, u]``."""
    w = s.shape[2]
    n = torch.arange(rows, device=s.device)[:, None] + torch.arange(w, device=s.device)
    return s.gather(1, n.expand(s.shape[0], -1, -1))


@torch.no_grad()
def logsumexp_over_vocab(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, T, ..., V) -> (B, T, ...): logsumexp over the last dimension (no
    gradient), computed on slices along T of about ``_LSE_SLICE_BYTES`` in one reused
    scratch tensor."""
    frame_bytes = logits[:, :1].numel() * logits.element_size()
    frames = max(1, _LSE_SLICE_BYTES // max(frame_bytes, 1))
    out = logits.new_empty(logits.shape[:-1])
    scratch = torch.empty_like(logits[:, :frames])
    for piece, lse in zip(logits.split(frames, dim=1), out.split(frames, dim=1), strict=True):
        shift = piece.amax(dim=-1, keepdim=True)
        shift.masked_fill_(shift.isinf(), 0.0)  # rows of -inf give -inf, with +inf +inf
        exp = torch.sub(piece, shift, out=scratch[:, : piece.shape[1]]).exp_()
        torch.log(exp.sum(dim=-1), out=lse).add_(shift.squeeze(-1))
    return out


def _transition_log_probs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the lattice transitions, without a (B, T, U+1, V) log-softmax.

    Returns:
        ``lse`` (B, T, U+1), the logsumexp over V; ``blank_lp`` (B, T, U+1), the
        blank log-probs; ``label_lp`` (B, T, U), the next-label log-probs. Transitions
        that cannot lie on a complete alignment are -inf: any from ``t >= T_b`` or
        ``u > U_b``, labels from ``u = U_b``, and blanks from ``(T_b - 1, u < U_b)``.
    """
    max_t, max_u1 = logits.shape[1:3]
    lse = logsumexp_over_vocab(logits)
    index = targets[:, None, :, None].expand(-1, max_t, -1, 1)
    label_lp = logits[:, :, :-1].gather(3, index).squeeze(3) - lse[:, :, :-1]
    blank_lp = logits[..., blank] - lse
    no_blank, no_label = off_lattice(max_t, max_u1, logit_lengths, target_lengths)
    blank_lp.masked_fill_(no_blank, -math.inf)
    label_lp.masked_fill_(no_label, -math.inf)
    return lse, blank_lp, label_lp


def off_lattice(
    max_t: int, max_u1: int, logit_lengths: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the transitions that cannot lie on a complete alignment.

    Returns:
        (B, T, U+1) for blanks: any from ``t >= T_b`` or ``u > U_b``, and from
        ``(T_b - 1, u < U_b)``; (B, T, U) for labels: any from ``t >= T_b`` or ``u >= U_b``.
    """
    t = torch.arange(max_t, device=logit_lengths.device)[None, :, None]
    u = torch.arange(max_u1, device=logit_lengths.device)[None, None, :]
    last_t, last_u = logit_lengths[:, None, None] - 1, target_lengths[:, None, None]
    no_blank = (t > last_t) | (u > last_u) | ((t == last_t) & (u < last_u))
    no_label = (t > last_t) | (u[..., :-1] >= last_u)
    return no_blank, no_label


def _alpha(blank_lp: torch.Tensor, label_lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward variables, normalised to a maximum of 1 per anti-diagonal to keep float32 precise.

    Args:
        blank_lp: (B, T, U+1) blank log-probs from :func:`_transition_log_probs`.
        label_lp: (B, T, U) label log-probs from :func:`_transition_log_probs`.

    Returns:
        ``alpha`` (B, T, U+1), log alpha(t, u) minus ``log_scales[:, :t + u + 1].sum(1)``,
        and ``log_scales`` (B, T+U+1), the log-max of the forward variables on each
        anti-diagonal relative to the previous one (0 past an utterance's end). As the
        end state (T_b, U_b) is alone on its diagonal, the log-likelihood of utterance b
        is ``log_scales[b].sum()``.
    """
    batch, max_t, max_u1 = blank_lp.shape
    diagonals = max_t + max_u1  # the last one holds the end state (T, U)
    blank_s = _skew(blank_lp, diagonals)
    label_s = _skew(label_lp, diagonals)
    alpha = blank_lp.new_full((batch, diagonals, max_u1), -math.inf)
    alpha[:, 0, 0] = 0.0
    log_scales = blank_lp.new_zeros(diagonals, batch)
    # Each step writes into views of alpha and log_scales made once: on a GPU the
    # recursion's time is the host's cost of issuing its operations (6 kernels a diagonal
    # here, 10 with temporaries).
    alphas, scales = alpha.unbind(1), log_scales.unbind(0)
    blanks, labels = blank_s.unbind(1), label_s.unbind(1)
    for n in range(1, diagonals):
        prev, step = alphas[n - 1], alphas[n]
        torch.add(prev, blanks[n - 1], out=step)
        torch.logaddexp(step[:, 1:], prev[:, :-1] + labels[n - 1], out=step[:, 1:])
        scale = torch.amax(step, dim=1, out=scales[n])
        scale.nan_to_num_(nan=math.nan, posinf=math.inf, neginf=0.0)  # 0 past the end state
        step.sub_(scale[:, None])
    return _unskew(alpha, max_t), log_scales.t()


def _beta(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    log_scales: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
) -> torch.Tensor:
    """Backward variables, scaled with the forward ones' factors.

    With ``alpha`` from :func:`_alpha`, ``alpha[:, t, u] + log_prob + beta`` of the state a
    transition leads to is the posterior log-probability of that transition.

    Args:
        blank_lp: (B, T, U+1) blank log-probs from :func:`_transition_log_probs`.
        label_lp: (B, T, U) label log-probs from :func:`_transition_log_probs`.
        log_scales: (B, T+U+1) from :func:`_alpha`.
        logit_lengths: (B,) T_b.
        target_lengths: (B,) U_b.

    Returns:
        ``beta`` (B, T+1, U+1): log beta(t, u) minus ``log_scales[:, t + u:].sum(1)``,
        where beta(T_b, U_b) = 1 is the end state reached by the final blank.
    """
    batch, max_t, max_u1 = blank_lp.shape
    diagonals = max_t + max_u1
    # Each diagonal's scale is taken out of its transitions here, once, not in the loop.
    scales = log_scales[:, :, None]
    blank_s = _skew(blank_lp, diagonals).sub_(scales)
    label_s = _skew(label_lp, diagonals).sub_(scales)
    beta = blank_lp.new_full((batch, diagonals, max_u1), -math.inf)
    items = torch.arange(batch, device=beta.device)
    ends = logit_lengths + target_lengths
    beta[items, ends, target_lengths] = -log_scales[items, ends]
    step = beta.new_empty(batch, max_u1)
    betas, blanks, labels = beta.unbind(1), blank_s.unbind(1), label_s.unbind(1)
    for n in range(diagonals - 2, -1, -1):
        nxt = betas[n + 1]
        torch.add(nxt, blanks[n], out=step)
        torch.logaddexp(step[:, :-1], nxt[:, 1:] + labels[n], out=step[:, :-1])
        # logaddexp keeps the end state set above on diagonal n = T_b + U_b.
        torch.logaddexp(betas[n], step, out=betas[n])
    return _unskew(beta, max_t + 1)


def _posteriors(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    alpha: torch.Tensor,
    log_scales: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior probabilities of the blank (B, T, U+1) and label (B, T, U) transitions,
    each utterance's multiplied by ``weights`` (B,); exactly 0 outside its lattice.
    ``alpha`` and ``log_scales`` come from :func:`_alpha`."""
    beta = _beta(blank_lp, label_lp, log_scales, logit_lengths, target_lengths)
    scale = weights.to(alpha.dtype)[:, None, None]
    blank_flow = (alpha + blank_lp + beta[:, 1:]).exp_().mul_(scale)
    label_flow = (alpha[:, :, :-1] + label_lp + beta[:, :-1, 1:]).exp_().mul_(scale)
    return blank_flow, label_flow


class _LatticeNLL(torch.autograd.Function):
    """Per-utterance negative log-likelihood (B,) of a lattice given its transition
    log-probabilities, and the occupancy (B, T, U+1). The gradient of each loss is minus
    its transitions' posterior probabilities, which the occupancy sums: both come from
    one forward and one backward recursion, run here in ``forward``."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        blank_lp: torch.Tensor,
        label_lp: torch.Tensor,
        logit_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, log_scales = _alpha(blank_lp, label_lp)
        ones = blank_lp.new_ones(blank_lp.shape[0])
        blank_flow, label_flow = _posteriors(
            blank_lp, label_lp, alpha, log_scales, logit_lengths, target_lengths, ones
        )
        ctx.save_for_backward(blank_flow, label_flow)
        occupancy = blank_flow.clone()
        occupancy[:, :, :-1] += label_flow
        ctx.mark_non_differentiable(occupancy)
        return -log_scales.sum(dim=1), occupancy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_losses: torch.Tensor, grad_occupancy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        blank_flow, label_flow = ctx.saved_tensors
        scale = -grad_losses.to(blank_flow.dtype)[:, None, None]
        return blank_flow * scale, label_flow * scale, None, None


def lattice_nll(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RNN-T negative log-likelihood from transition log-probabilities, and where the
    alignments lie.

    Args:
        blank_lp: (B, T, U+1) log-probability of blank at each state (t, u).
        label_lp: (B, T, U) log-probability of label u + 1 at each state (t, u).
            Transitions that must not be used are -inf; those past each utterance's
            lengths (:func:`off_lattice`) need not be.
        logit_lengths: (B,) T_b, int64.
        target_lengths: (B,) U_b, int64.

    Returns:
        The losses (B,), differentiable in ``blank_lp`` and ``label_lp``, and the
        occupancy (B, T, U+1): the posterior probability that the alignment passes
        through state (t, u) (no gradient).
    """
    blank_lp, label_lp = _on_lattice(blank_lp, label_lp, logit_lengths, target_lengths)
    return _LatticeNLL.apply(blank_lp, label_lp, logit_lengths, target_lengths)


def _on_lattice(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``blank_lp`` and ``label_lp`` with the :func:`off_lattice` transitions -inf."""
    no_blank, no_label = off_lattice(blank_lp.shape[1], blank_lp.shape[2], logit_lengths,
                                     target_lengths)
    return blank_lp.masked_fill(no_blank, -math.inf), label_lp.masked_fill(no_label, -math.inf)


class _RNNTLoss(torch.autograd.Function):
    """Per-utterance RNN-T negative log-likelihood (B,) with a hand-written, in-place gradient."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        logit_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
        blank: int,
        overwrite_logits: bool,
    ) -> torch.Tensor:
        lse, blank_lp, label_lp = _transition_log_probs(
            logits, targets, logit_lengths, target_lengths, blank
        )
        alpha, log_scales = _alpha(blank_lp, label_lp)
        ctx.save_for_backward(
            logits, targets, logit_lengths, target_lengths, lse, blank_lp, label_lp, alpha,
            log_scales,
        )
        ctx.blank = blank
        ctx.overwrite_logits = overwrite_logits
        return -log_scales.sum(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (logits, targets, logit_lengths, target_lengths,
         lse, blank_lp, label_lp, alpha, log_scales) = ctx.saved_tensors
        blank_flow, label_flow = _posteriors(
            blank_lp, label_lp, alpha, log_scales, logit_lengths, target_lengths, grad_losses
        )
        occupancy = blank_flow.clone()  # state posterior = sum of its outgoing flows
        occupancy[:, :, :-1] += label_flow
        # d loss / d logits = softmax * occupancy - flow of the transition each logit emits.
        grad = logits if ctx.overwrite_logits else torch.empty_like(logits)
        torch.sub(logits, lse.unsqueeze(-1), out=grad).exp_().mul_(occupancy.unsqueeze(-1))
        grad[..., ctx.blank] -= blank_flow
        index = targets[:, None, :, None].expand(-1, logits.shape[1], -1, 1)
        grad[:, :, :-1].scatter_add_(3, index, label_flow.neg_().unsqueeze(-1))
        return grad, None, None, None, None, None


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
    overwrite_logits: bool = False,
) -> torch.Tensor:
    """RNN-T loss (negative log-likelihood), same meaning as ``torchaudio.functional.rnnt_loss``.

    Memory-lean: besides its gradient (one tensor of the logits' shape) it keeps
    and allocates only tensors of size (B, T, U+1) and a small chunk of the logits.
    Runs on any device; recursions use the logits' dtype.

    Args:
        logits: (B, T, U+1, V) unnormalised joint-network output, float32 or float64.
        targets: (B, U) integer label ids, padded (padding values are ignored).
        logit_lengths: (B,) valid frames per utterance, 1 <= T_b <= T.
        target_lengths: (B,) valid labels per utterance, 0 <= U_b <= U.
        blank: Blank id in [0, V).
        reduction: ``"none"`` for per-utterance losses (B,), ``"mean"`` over the batch
            or ``"sum"``.
        overwrite_logits: The backward pass writes the gradient into the logits'
            memory instead of a new tensor: no allocation of the largest tensor of a
            training step (on a CPU, faulting in its fresh pages costs more than
            computing the gradient). The logits hold the gradient after
            ``backward()``: use it only when nothing reads them again, as for the
            joint network's output in ``ASRModel``.

    Returns:
        The loss, (B,) or scalar depending on ``reduction``.

    Raises:
        ValueError: If an argument has a wrong shape, dtype or range; the message
            names the argument.
    """
    targets, logit_lengths, target_lengths = _check_inputs(
        logits, targets, logit_lengths, target_lengths, blank, reduction
    )
    losses = _RNNTLoss.apply(logits, targets, logit_lengths, target_lengths, blank,
                             overwrite_logits)
    return reduce_losses(losses, reduction)


def rnnt_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Textbook RNN-T loss: full log-softmax and a cell-by-cell alpha recursion under autograd.

    Same arguments, result and errors as :func:`rnnt_loss`; slow and memory-hungry
    (a log-softmax copy of the logits plus its autograd graph), used as a baseline.
    """
    targets, logit_lengths, target_lengths = _check_inputs(
        logits, targets, logit_lengths, target_lengths, blank, reduction
    )
    log_probs = logits.log_softmax(dim=-1)  # (B, T, U+1, V)
    max_t, max_u1 = log_probs.shape[1:3]
    index = targets[:, None, :, None].expand(-1, max_t, -1, 1)
    # Per-cell (B,) tensors: blank[t][u] and label[t][u] (emitting targets[:, u]).
    blank_lp = [list(row) for row in log_probs[..., blank].permute(1, 2, 0)]
    label_lp = [list(row) for row in log_probs[:, :, :-1].gather(3, index)[..., 0].permute(1, 2, 0)]
    alpha = [[log_probs.new_zeros(len(logits))] * max_u1 for _ in range(max_t)]  # log 1 at (0, 0)
    for t in range(max_t):
        for u in range(max_u1):
            if t == 0 and u > 0:
                alpha[t][u] = alpha[t][u - 1] + label_lp[t][u - 1]
            elif t > 0 and u == 0:
                alpha[t][u] = alpha[t - 1][u] + blank_lp[t - 1][u]
            elif t > 0:
                alpha[t][u] = torch.logaddexp(
                    alpha[t - 1][u] + blank_lp[t - 1][u], alpha[t][u - 1] + label_lp[t][u - 1]
                )
    ends = zip(logit_lengths.tolist(), target_lengths.tolist(), strict=True)
    losses = torch.stack([
        -(alpha[t - 1][u][b] + blank_lp[t - 1][u][b]) for b, (t, u) in enumerate(ends)
    ])
    return reduce_losses(losses, reduction)
