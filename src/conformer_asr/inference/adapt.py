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
forward and a backward pass of the encoder's Conformer blocks on the whole batch; the
subsampling before them, which no adapted parameter feeds, runs once.

Self-training (``targets``) goes one further, once the utterance has been transcribed: a
few Adam steps of the CTC loss towards its own transcript train each utterance's
LayerNorms first, and SUTA's steps then start from where those left them (step 4e). The
transcript of the full decoding, beam search with the LM and lexicon, is far better than
the acoustic model's own best path, and that is what it teaches the encoder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..decoding.fusion import FusionLM
from ..decoding.greedy import Hypothesis
from ..decoding.lexicon import Lexicon
from ..decoding.ngram import SpelledNgram
from ..decoding.rescore import SentenceLM
from ..decoding.search import DecodingOptions, decode
from ..models.asr import ASRModel

TEMPERATURE = 2.5  # SUTA's: posteriors softened before both terms
ENTROPY_WEIGHT = 0.3  # SUTA's: the rest of the loss is minimum class confusion
MAX_FRAMES = 6000  # feature frames (60 s at 10 ms) adapted in one batched pass
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8


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


def _encoder_layer_norms(model: ASRModel) -> list[tuple[str, nn.LayerNorm]]:
    """The encoder's LayerNorms with their dotted names, in module order."""
    return [(name, m) for name, m in model.encoder.named_modules() if isinstance(m, nn.LayerNorm)]


def adapted_parameters(model: ASRModel) -> list[nn.Parameter]:
    """The parameters adaptation changes: every LayerNorm's gain and bias in the encoder."""
    return [p for _, m in _encoder_layer_norms(model) for p in (m.weight, m.bias)]


class RowwiseLayerNorm(nn.Module):
    """A LayerNorm's normalisation, then a gain and bias of each batch row's own:
    x (B, ..., D) -> (B, ..., D). The gains and biases are columns of ``table``
    (B, P): ``start:start + D`` the gains, the next D the biases."""

    def __init__(self, norm: nn.LayerNorm, table: torch.Tensor, start: int) -> None:
        super().__init__()
        self.normalized_shape = norm.normalized_shape
        self.eps = norm.eps
        self.table = table
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.normalized_shape[-1]
        gain = self.table[:, self.start : self.start + width]
        bias = self.table[:, self.start + width : self.start + 2 * width]
        extra = (1,) * (x.dim() - 2)  # broadcast over the dimensions between B and D
        normed = F.layer_norm(x, self.normalized_shape, eps=self.eps)
        return torch.addcmul(bias.view(-1, *extra, width), normed, gain.view(-1, *extra, width))


def with_rowwise_layer_norms(model: ASRModel, rows: int) -> tuple[ASRModel, torch.Tensor]:
    """A copy of ``model`` whose encoder LayerNorms are ``RowwiseLayerNorm``s, all reading
    the returned leaf (rows, P): row b holds, per LayerNorm in ``adapted_parameters``
    order, its gain and then its bias for batch row b, each row starting as the module's
    own. The copy shares every other module and every parameter with ``model``, which is
    left as it is, so that threads can adapt with one model at once."""
    norms = _encoder_layer_norms(model)
    table = torch.cat([p.detach().reshape(-1) for p in adapted_parameters(model)])
    table = table.expand(rows, -1).clone().requires_grad_()
    replacements: dict[str, nn.Module] = {}
    start = 0
    for name, norm in norms:
        replacements[f"encoder.{name}"] = RowwiseLayerNorm(norm, table, start)
        start += 2 * norm.weight.numel()
    adapting = _with_submodules(model, replacements)
    assert isinstance(adapting, ASRModel)
    return adapting, table


def with_own_layer_norms(model: ASRModel) -> ASRModel:
    """A copy of ``model`` whose encoder LayerNorms are copies of its own, to be trained;
    it shares every other module and parameter with ``model``, which is left as it is."""
    norms = {f"encoder.{name}": copy.deepcopy(norm) for name, norm in _encoder_layer_norms(model)}
    adapting = _with_submodules(model, norms)
    assert isinstance(adapting, ASRModel)
    return adapting


class Adam:
    """torch.optim.Adam's update at its default betas and eps, on ``params`` (leaves whose
    gradients the caller computes). Written out: the first step of any torch.optim
    optimiser imports torch._dynamo, which took 0.85 s, a quarter of a one-file
    ``conformer-asr transcribe``."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params, self.lr, self.steps = params, lr, 0
        self.mean = [torch.zeros_like(p) for p in params]
        self.mean_square = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        scale = math.sqrt(1 - ADAM_BETAS[1] ** self.steps)
        step_size = -self.lr / (1 - ADAM_BETAS[0] ** self.steps)
        for param, grad, mean, mean_square in zip(self.params, grads, self.mean,
                                                   self.mean_square, strict=True):
            mean.lerp_(grad, 1 - ADAM_BETAS[0])
            mean_square.mul_(ADAM_BETAS[1]).addcmul_(grad, grad, value=1 - ADAM_BETAS[1])
            denominator = (mean_square.sqrt() / scale).add_(ADAM_EPS)
            param.addcdiv_(mean, denominator, value=step_size)


def _with_submodules(module: nn.Module, replacements: dict[str, nn.Module],
                     path: str = "") -> nn.Module:
    """A shallow copy of ``module`` (itself at dotted ``path``) with each submodule named in
    ``replacements`` (by dotted path) swapped in; a submodule with none of them below it is
    shared, not copied."""
    if path in replacements:
        return replacements[path]
    if path and not any(name.startswith(f"{path}.") for name in replacements):
        return module
    copied = copy.copy(module)
    copied.__dict__["_modules"] = {
        name: None if child is None else _with_submodules(
            child, replacements, f"{path}.{name}" if path else name)
        for name, child in module._modules.items()}
    return copied


@dataclass(frozen=True)
class SelfTraining:
    """Each utterance's CTC steps towards its own transcript, before SUTA's steps."""

    targets: Sequence[Sequence[int]]  # row b's transcript, token ids; empty: no steps
    steps: int
    lr: float


def encode_adapted(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, steps: int, lr: float,
    max_frames: int = MAX_FRAMES, self_training: SelfTraining | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (B, T, F), lengths (B,) -> encoder output (B, T', D), lengths (B,), each
    utterance encoded after ``steps`` Adam steps at learning rate ``lr`` of its own
    (module docstring), and before them, with ``self_training``, its CTC steps towards
    its transcript. ``model`` (CTC head, eval mode) is left as it was given.

    Rows adapt together, in runs of consecutive rows of at most ``max_frames`` padded
    feature frames (at least one row), which bounds the activations a backward pass keeps.
    Rows of an eval-mode encoder do not see each other, each row has LayerNorm parameters
    of its own (``with_rowwise_layer_norms``) and its own loss, and Adam works elementwise, so
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
    encoded = []
    for rows in runs:
        run_training = None if self_training is None else replace(
            self_training, targets=[self_training.targets[row] for row in rows])
        encoded.append(_adapt_rows(model, feats[rows], lengths[rows], steps, lr, run_training))
    out_lengths = torch.cat([n for _, n in encoded])
    out = feats.new_zeros(feats.shape[0], int(out_lengths.max()), encoded[0][0].shape[-1])
    for rows, (enc, _) in zip(runs, encoded, strict=True):
        out[rows[0]: rows[-1] + 1, : enc.shape[1]] = enc
    return out, out_lengths


def _adapt_rows(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, steps: int, lr: float,
    self_training: SelfTraining | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_adapted`` of one run of rows, all at once."""
    feats = feats[:, : int(lengths.max())]
    with torch.no_grad():  # eval mode: no SpecAugment; before every LayerNorm: once
        subsampled, sub_lengths = model.encoder.subsampling(feats, lengths)
    adapting, table = with_rowwise_layer_norms(model, feats.shape[0])

    def train(loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], steps: int,
              lr: float) -> None:
        """``steps`` steps of a fresh Adam on ``table``, of ``loss_of(enc, enc_lengths)``."""
        adam = Adam([table], lr)
        for _ in range(steps):
            with torch.enable_grad():
                enc, enc_lengths = adapting.encoder.run_blocks(subsampled, sub_lengths)
                adam.step(torch.autograd.grad(loss_of(enc, enc_lengths), table))

    if self_training is not None:
        train(lambda enc, n: ctc_losses(adapting, enc, n, self_training.targets).sum(),
              self_training.steps, self_training.lr)
    train(lambda enc, n: sum(adaptation_loss(row[: int(length)])
                             for row, length in zip(adapting.ctc_head(enc), n, strict=True)),
          steps, lr)
    with torch.no_grad():
        return adapting.encoder.run_blocks(subsampled, sub_lengths)


def ctc_losses(model: ASRModel, enc: torch.Tensor, enc_lengths: torch.Tensor,
               targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """enc (B, T, D), lengths (B,) -> (B,): each row's CTC loss towards its token ids
    ``targets[b]`` (0 for a row without any, and where no alignment fits)."""
    assert model.ctc_head is not None, "the CTC loss needs a CTC head"
    log_probs = model.ctc_head(enc).float().log_softmax(dim=-1)
    device = log_probs.device
    flat = torch.tensor([t for tokens in targets for t in tokens], dtype=torch.long,
                        device=device)
    target_lengths = torch.tensor([len(tokens) for tokens in targets], device=device)
    losses = F.ctc_loss(log_probs.transpose(0, 1), flat, enc_lengths, target_lengths,
                        blank=0, reduction="none", zero_infinity=True)
    return torch.where(target_lengths > 0, losses, torch.zeros_like(losses))


def encode(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, options: DecodingOptions,
    targets: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode``, or ``encode_adapted`` where ``options.adapt_steps`` > 0 or
    ``targets`` (each row's transcript) are given for ``options.self_train_steps`` > 0."""
    self_training = None
    if targets is not None and options.self_train_steps:
        self_training = SelfTraining(targets, options.self_train_steps, options.self_train_lr)
    if options.adapt_steps or self_training is not None:
        return encode_adapted(model, feats, lengths, options.adapt_steps, options.adapt_lr,
                              self_training=self_training)
    return model.encode(feats, lengths)


def mean_frame_entropy(model: ASRModel, enc: torch.Tensor,
                       enc_lengths: torch.Tensor) -> torch.Tensor:
    """enc (B, T, D), lengths (B,) -> (B,): each row's CTC posteriors' entropy (nats),
    averaged over its frames (blank ones too)."""
    log_probs = model.ctc_log_probs(enc)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # (B, T)
    valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lengths[:, None]
    return (entropy * valid).sum(dim=1) / enc_lengths.clamp(min=1)


@torch.no_grad()
def confidence_gate(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, options: DecodingOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """feats (B, T, F), lengths (B,) -> None where ``options.gates`` is false; else which
    rows are sure (B,) bool, their mean frame entropy at most ``options.confident_entropy``,
    and the unadapted encoder output (B, T', D) and lengths (B,) it was measured on."""
    if not options.gates:
        return None
    enc, enc_lengths = model.encode(feats, lengths)
    sure = mean_frame_entropy(model, enc, enc_lengths) <= options.confident_entropy
    return sure, enc, enc_lengths


def take_rows(x: torch.Tensor, lengths: torch.Tensor,
              rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, ...), lengths (B,), row indices (R,) -> those rows (R, T_r, ...), cut to the
    longest of them, and their lengths (R,)."""
    kept = lengths[rows]
    return x[rows, : int(kept.max())], kept


def self_trained(
    model: ASRModel, feats: torch.Tensor, lengths: torch.Tensor, options: DecodingOptions,
    first: Sequence[Hypothesis], lm: FusionLM | None, lexicon: Lexicon | None,
    backward_lm: SentenceLM | None = None, ngram: SpelledNgram | None = None,
) -> list[Hypothesis]:
    """feats (B, T, F), lengths (B,) and each row's first hypothesis -> the hypotheses of
    the second decoding, after ``options.self_train_steps`` CTC steps towards the first
    transcripts (and ``options.adapt_steps`` after them); ``first`` as it is where
    self-training is off."""
    if not options.self_train_steps:
        return list(first)
    enc, enc_lengths = encode(model, feats, lengths, options, [hyp.tokens for hyp in first])
    return decode(model, enc, enc_lengths, options, lm, lexicon, backward_lm, ngram)
