"""Test-time adaptation of the encoder to each utterance, before it is decoded.

SUTA (Lin, Li and Lee, "Listen, Adapt, Better WER: Source-free Single-utterance
Test-time Adaptation for Automatic Speech Recognition", Interspeech 2022): a few Adam
steps on the encoder's LayerNorm gains and biases, for each utterance on its own, that
make its CTC posteriors more confident (lower entropy on the frames that are not
blank) and less confused (minimum class confusion), both at a softening temperature.
Every utterance of a batch has LayerNorm parameters of its own while it adapts, and the
model is left as it was, so an utterance's transcript depends on it alone (up to
rounding), not on what else is in its batch.

It needs no labels and no other data, and it moves a model trained on synthetic voices
towards a voice it never heard (recipes/synthetic/README.md, step 4b). Each step is a
forward and a backward pass of the encoder on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..decoding.search import DecodingOptions
from ..models.asr import ASRModel

TEMPERATURE = 2.5  # SUTA's: posteriors softened before both terms
ENTROPY_WEIGHT = 0.3  # SUTA's: the rest of the loss is minimum class confusion
MAX_FRAMES = 6000  # feature frames (60 s at 10 ms) adapted in one batched pass


def check_int8_adaptation(adapt_steps: int | None) -> None:
    """ValueError where an int8 model is asked to adapt: its int8 layers have no gradients."""
    if adapt_steps:
        raise ValueError("adapt_steps: an int8 model cannot be adapted (its int8 layers have "
                         "no gradients); give adapt_steps=0 or int8=False")


def adaptation_loss(logits: torch.Tensor) -> torch.Tensor:
    """logits (T, V) of one utterance's CTC head, token 0 blank -> scalar.

    ``ENTROPY_WEIGHT`` x the mean entropy of the frames whose most likely token is not
    blank (0 where all are blank) + the rest x the minimum class confusion: the softened
    posteriors' class-by-class co-occurrence matrix, frames weighted by 1 + exp(-entropy)
    (confident frames count more), rows normalised; its off-diagonal mass over V.
    """
    scaled = logits.float() / TEMPERATURE
    log_probs = scaled.log_softmax(dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(dim=-1)  # (T,)
    labelled = scaled.argmax(dim=-1) != 0
    mean_entropy = entropy[labelled].mean() if labelled.any() else entropy.sum() * 0.0
    weights = 1.0 + torch.exp(-entropy)
    weights = (weights * len(weights) / weights.sum())[:, None]
    confusion = (probs * weights).T @ probs  # (V, V)
    confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1e-12)
    cross = (confusion.sum() - confusion.trace()) / confusion.shape[0]
    return ENTROPY_WEIGHT * mean_entropy + (1.0 - ENTROPY_WEIGHT) * cross


def adapted_parameters(model: ASRModel) -> list[nn.Parameter]:
    """The parameters adaptation changes: every LayerNorm's gain and bias in the encoder."""
    return [p for m in model.encoder.modules() if isinstance(m, nn.LayerNorm)
            for p in m.parameters()]


@contextmanager
def rowwise_layer_norms(model: ASRModel, rows: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, each encoder LayerNorm scales and shifts batch row b by a gain and
    bias of its own: the yielded leaves, gain (rows, D) and bias (rows, D) per LayerNorm in
    ``adapted_parameters`` order, each row starting as the module's own. The module's
    parameters are not touched; its output is replaced by a forward hook."""
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.LayerNorm)]
    leaves = [p.detach().expand(rows, -1).clone().requires_grad_()
              for m in norms for p in (m.weight, m.bias)]

    def hook_for(gain: torch.Tensor, bias: torch.Tensor) -> Callable[..., torch.Tensor]:
        def hook(module: nn.LayerNorm, args: tuple[torch.Tensor], _: torch.Tensor
                 ) -> torch.Tensor:
            normed = F.layer_norm(args[0], module.normalized_shape, eps=module.eps)
            return torch.addcmul(bias[:, None, :], normed, gain[:, None, :])
        return hook

    handles = [m.register_forward_hook(hook_for(leaves[2 * i], leaves[2 * i + 1]))
               for i, m in enumerate(norms)]
    try:
        yield leaves
    finally:
        for handle in handles:
            handle.remove()


def encode_adapted(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, steps: int, lr: float,
    max_frames: int = MAX_FRAMES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (B, T, F), lengths (B,) -> encoder output (B, T', D), lengths (B,), each
    utterance encoded after ``steps`` Adam steps at learning rate ``lr`` of its own
    (module docstring). ``model`` (CTC head, eval mode) is left as it was given.

    Rows adapt together, in runs of consecutive rows of at most ``max_frames`` padded
    feature frames (at least one row), which bounds the activations a backward pass keeps.
    Rows of an eval-mode encoder do not see each other, each row has LayerNorm parameters
    of its own (``rowwise_layer_norms``) and its own loss, and Adam works elementwise, so
    a run's steps are each row's steps taken alone (up to the rounding of batched
    kernels), at the cost of one batched pass per step.
    """
    assert model.ctc_head is not None, "test-time adaptation needs a CTC head"
    runs: list[list[int]] = [[]]
    longest = 0  # of the last run
    for row, length in enumerate(lengths.tolist()):
        longest = max(longest, length)
        if runs[-1] and longest * (len(runs[-1]) + 1) > max_frames:
            runs.append([])
            longest = length
        runs[-1].append(row)
    encoded = [_adapt_rows(model, feats[rows], lengths[rows], steps, lr) for rows in runs]
    out_lengths = torch.cat([n for _, n in encoded])
    out = feats.new_zeros(feats.shape[0], int(out_lengths.max()), encoded[0][0].shape[-1])
    for rows, (enc, _) in zip(runs, encoded, strict=True):
        out[rows[0]: rows[-1] + 1, : enc.shape[1]] = enc
    return out, out_lengths


def _adapt_rows(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, steps: int, lr: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_adapted`` of one run of rows, all at once."""
    feats = feats[:, : int(lengths.max())]
    with rowwise_layer_norms(model, feats.shape[0]) as leaves:
        optimiser = torch.optim.Adam(leaves, lr=lr)
        for _ in range(steps):
            with torch.enable_grad():
                enc, enc_lengths = model.encode(feats, lengths)
                logits = model.ctc_head(enc)
                loss = sum(adaptation_loss(logits[row, : int(n)])
                           for row, n in enumerate(enc_lengths))
                grads = torch.autograd.grad(loss, leaves)
            for leaf, grad in zip(leaves, grads, strict=True):
                leaf.grad = grad
            optimiser.step()
        with torch.no_grad():
            return model.encode(feats, lengths)


def encode(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, options: DecodingOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode``, or ``encode_adapted`` where ``options.adapt_steps`` > 0."""
    if options.adapt_steps:
        return encode_adapted(model, feats, lengths, options.adapt_steps, options.adapt_lr)
    return model.encode(feats, lengths)
