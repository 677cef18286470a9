"""The recogniser: SpecAugment -> Conformer encoder -> CTC and/or RNN-T heads, and its loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.spec_augment import SpecAugment
from ..losses import prune_windows, pruned_rnnt_loss, rnnt_loss, simple_rnnt_loss
from .config import ModelConfig
from .conformer import ConformerEncoder
from .transducer import JointNetwork, PredictionNetwork, SimpleJoint


@dataclass
class LossOutput:
    """Weighted training loss and its parts (per-utterance means; None if the head is absent).

    With the pruned RNN-T loss, ``rnnt`` is pruned + ``rnnt_simple_weight`` x simple.
    """

    loss: torch.Tensor
    ctc: torch.Tensor | None
    rnnt: torch.Tensor | None


class ASRModel(nn.Module):
    """Features in, losses or encoder states out. Token 0 is blank.

    The feature extractor is not part of the module: features are computed in
    data-loader workers during training and by the transcriber at inference.
    SpecAugment runs inside ``encode`` in training mode only.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec_augment = SpecAugment(cfg.spec_augment)
        self.encoder = ConformerEncoder(cfg.encoder)
        d = cfg.encoder.d_model
        self.ctc_head = nn.Linear(d, cfg.vocab_size) if cfg.has_ctc else None
        self.predictor: PredictionNetwork | None = None
        self.joint: JointNetwork | None = None
        self.simple_joint: SimpleJoint | None = None
        if cfg.has_transducer:
            self.predictor = PredictionNetwork(
                cfg.vocab_size, cfg.pred_embed_dim, cfg.pred_hidden_dim, cfg.encoder.dropout
            )
            self.joint = JointNetwork(d, cfg.pred_hidden_dim, cfg.joint_dim, cfg.vocab_size)
        if cfg.rnnt_prune_range:
            self.simple_joint = SimpleJoint(d, cfg.pred_hidden_dim, cfg.vocab_size)

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), lengths (B,) -> encoder output (B, T', D), lengths (B,)."""
        return self.encoder(self.spec_augment(feats, lengths), lengths)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, T', V) log-probabilities of the CTC head."""
        assert self.ctc_head is not None, "this model has no CTC head"
        return F.log_softmax(self.ctc_head(enc).float(), dim=-1)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        pred_weight_noise: float = 0.0,
    ) -> LossOutput:
        """feats (B, T, F), feat_lengths (B,), targets (B, U) padded, target_lengths (B,):
        ``encode``, then ``loss``."""
        enc, enc_lengths = self.encode(feats, feat_lengths)
        return self.loss(enc, enc_lengths, targets, target_lengths, pred_weight_noise)

    def loss(
        self,
        enc: torch.Tensor,
        enc_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        pred_weight_noise: float = 0.0,
    ) -> LossOutput:
        """enc (B, T', D), enc_lengths (B,) from ``encode``; targets (B, U) padded,
        target_lengths (B,).

        ``pred_weight_noise`` > 0 is the standard deviation of the variational noise on the
        prediction network's weights (training mode only; see ``predict``).
        """
        ctc = rnnt = None
        if self.ctc_head is not None:
            ctc = F.ctc_loss(
                self.ctc_log_probs(enc).transpose(0, 1), targets, enc_lengths, target_lengths,
                blank=0, reduction="sum", zero_infinity=True,
            ) / targets.shape[0]
        if self.predictor is not None:
            rnnt = self.transducer_loss(enc, enc_lengths, targets, target_lengths,
                                        pred_weight_noise)
        w = self.cfg.ctc_weight
        if ctc is None:
            loss = rnnt
        elif rnnt is None:
            loss = ctc
        else:
            loss = w * ctc + (1.0 - w) * rnnt
        assert loss is not None
        return LossOutput(loss=loss, ctc=ctc, rnnt=rnnt)

    def predict(self, targets: torch.Tensor, weight_noise: float = 0.0) -> torch.Tensor:
        """targets (B, U) -> prediction network outputs (B, U+1, H).

        In training mode with ``weight_noise`` > 0 the network runs on its weights plus
        fresh Gaussian noise of that standard deviation (the paper's variational noise on
        the decoder; Graves, 2011): the loss sees noisy weights, the gradients and the
        update go to the clean ones.
        """
        assert self.predictor is not None, "this model has no transducer"
        if not (self.training and weight_noise > 0):
            return self.predictor(targets)
        noisy = {name: p + weight_noise * torch.randn_like(p)
                 for name, p in self.predictor.named_parameters()}
        return torch.func.functional_call(self.predictor, noisy, (targets,))

    def transducer_loss(
        self,
        enc: torch.Tensor,
        enc_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        pred_weight_noise: float = 0.0,
    ) -> torch.Tensor:
        """enc (B, T', D), enc_lengths (B,), targets (B, U), target_lengths (B,) -> the
        RNN-T loss, full or pruned (``rnnt_prune_range``), mean over utterances."""
        assert self.joint is not None
        pred = self.predict(targets, pred_weight_noise)  # (B, U+1, H)
        labels = (targets.long(), enc_lengths.long(), target_lengths.long())
        if self.simple_joint is None:
            logits = self.joint.full(enc, pred).float()  # (B, T', U+1, V), read by the loss only
            return rnnt_loss(logits, *labels, overwrite_logits=True)
        am, lm = self.simple_joint(enc, pred)
        simple, occupancy = simple_rnnt_loss(am.float(), lm.float(), *labels)
        windows = prune_windows(occupancy, enc_lengths, target_lengths, self.cfg.rnnt_prune_range)
        pruned = pruned_rnnt_loss(self.joint.pruned(enc, pred, windows).float(), windows, *labels)
        return pruned + self.cfg.rnnt_simple_weight * simple


HEADS = ("ctc_head", "predictor", "joint", "simple_joint")


def load_encoder_and_heads(model: ASRModel, state: dict[str, torch.Tensor]) -> list[str]:
    """Start ``model`` from another recogniser's weights ``state`` (its ``state_dict``).

    The encoder must match exactly (RuntimeError otherwise). Each of ``model``'s heads
    (CTC, prediction network, joint, simple joint) loads when ``state`` has it with the
    same names and shapes and keeps its own weights otherwise, so a trained CTC model can
    start a hybrid or transducer one. Heads in ``state`` that ``model`` lacks are ignored.
    Returns the names of the heads that kept their own weights.
    """

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix + "."): v for k, v in state.items()
                if k.startswith(prefix + ".")}

    model.encoder.load_state_dict(part("encoder"))
    kept = []
    for name in HEADS:
        head = getattr(model, name)
        if head is None:
            continue
        own, given = head.state_dict(), part(name)
        if given.keys() == own.keys() and all(given[k].shape == own[k].shape for k in own):
            head.load_state_dict(given)
        else:
            kept.append(name)
    return kept


def count_parameters(model: ASRModel) -> dict[str, int]:
    """Parameter counts: encoder, decoder (prediction net), joint, ctc, total."""

    def n(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    counts = {
        "encoder": n(model.encoder),
        "decoder": n(model.predictor),
        "joint": n(model.joint) + n(model.simple_joint),
        "ctc": n(model.ctc_head),
    }
    counts["total"] = sum(counts.values())
    return counts
