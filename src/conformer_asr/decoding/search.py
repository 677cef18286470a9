"""One entry point that picks the decoder for a model and the chosen options."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..models.asr import ASRModel
from .ctc_beam import ctc_beam_search
from .fusion import FusionLM, ShallowFusion
from .greedy import Hypothesis, ctc_greedy, rnnt_greedy
from .lexicon import Lexicon
from .ngram import SpelledNgram
from .rescore import Rescoring, SentenceLM
from .rnnt_beam import rnnt_beam_search

HEADS = ("auto", "ctc", "transducer")


@dataclass(frozen=True)
class DecodingOptions:
    """How to search, and how to adapt the encoder to each utterance before.

    ``beam_size`` 1 without an LM or length bonus is greedy search (up to
    ``max_symbols_per_frame`` tokens per frame for RNN-T); anything else is beam
    search (prefix search for CTC, one token per frame for RNN-T). ``lm_weight``
    applies only when an LM is given to ``decode``, ``oov_penalty`` only when a
    lexicon is (it is subtracted for every word a hypothesis spells outside the
    lexicon); ``length_bonus`` is added per emitted token. A beam search drops at each
    frame the candidates that score more than ``beam_threshold`` below the best one
    (``beam.select``): the default, 10, left the bundled model's WER on ``dev`` as it was
    and made its search 1.3x faster; with a large one, such as 1000, the beam keeps as many
    hypotheses as it has room for, as it did before. ``head`` picks the output of a
    hybrid CTC + transducer model: "auto" (the transducer where there is one), "ctc" or
    "transducer". ``adapt_steps`` > 0 adapts the encoder to each utterance with that many
    steps at learning rate ``adapt_lr`` before it is decoded (``inference.adapt``; the
    transcriber does it, ``decode`` takes encoder output); it needs a CTC head.
    ``self_train_steps`` > 0 decodes each utterance twice: the second time after that many
    CTC steps at ``self_train_lr`` towards the first transcript (self-training, also in
    ``inference.adapt``), with the adaptation steps after them; it needs a CTC head too.
    ``confident_entropy`` > 0 encodes each utterance unadapted first, and decodes once,
    without adaptation or self-training, each one whose CTC posteriors have a mean entropy
    per frame (in nats) of at most that (``inference.adapt.mean_frame_entropy``): the
    utterances the model is sure of, where adapting gains nothing; 0 adapts all.
    ``backward_share`` > 0 hands that share (at most 1) of the LM term of each utterance's
    best finished hypotheses to a backward LM given to ``decode``, and picks the best of
    them again (``rescore.py``); 0 leaves the search's choice. ``ngram_share`` does the
    same for a word n-gram LM given to ``decode``; the two shares add up to at most 1.
    ``ngram_order`` is the order at which a model folder's n-gram text is counted
    (``inference.model_dir.load_ngram``); ``decode`` takes the counted LM.
    ``speaker_adaptation`` asks the callers that know whose speech each input is to learn
    each speaker first (``inference.speaker_adapt``): ``Transcriber.transcribe`` and the
    ``transcribe`` command take each input as a speaker, ``evaluate`` a manifest's
    speakers; it needs a CTC head, and ``decode`` itself does not read it.
    """

    beam_size: int = 1
    beam_threshold: float = 10.0
    max_symbols_per_frame: int = 5
    lm_weight: float = 0.3
    length_bonus: float = 0.0
    oov_penalty: float = 0.0
    head: str = "auto"
    adapt_steps: int = 0  # off
    adapt_lr: float = 0.002
    self_train_steps: int = 0  # off
    self_train_lr: float = 0.002
    confident_entropy: float = 0.0  # off
    backward_share: float = 0.0  # off
    ngram_share: float = 0.0  # off
    ngram_order: int = 3
    speaker_adaptation: bool = False  # off

    def __post_init__(self) -> None:
        # checked here, where a caller can be told: 8.0, True or "8" failed inside torch at
        # the first search
        for name in ("beam_size", "max_symbols_per_frame", "adapt_steps", "self_train_steps",
                     "ngram_order"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name}: must be a whole number, got {value!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size: must be >= 1, got {self.beam_size}")
        if self.max_symbols_per_frame < 1:
            raise ValueError("max_symbols_per_frame: must be >= 1")
        if self.ngram_order < 2:
            raise ValueError(f"ngram_order: must be >= 2, got {self.ngram_order}")
        for name in ("adapt_steps", "self_train_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("beam_threshold", "lm_weight", "length_bonus", "oov_penalty", "adapt_lr",
                     "self_train_lr", "confident_entropy", "backward_share", "ngram_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name}: must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight: must be >= 0, got {self.lm_weight}")
        for name in ("backward_share", "ngram_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.backward_share + self.ngram_share > 1:
            raise ValueError("backward_share + ngram_share: must be at most 1 (the LM term's "
                             f"shares), got {self.backward_share} + {self.ngram_share}")
        for name in ("oov_penalty", "confident_entropy"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.beam_threshold <= 0:
            raise ValueError(f"beam_threshold: must be > 0, got {self.beam_threshold}")
        for name in ("adapt_lr", "self_train_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.head not in HEADS:
            raise ValueError(f"head: give one of {', '.join(HEADS)}, got {self.head!r}")
        if not isinstance(self.speaker_adaptation, bool):
            raise ValueError(f"speaker_adaptation: True or False, got {self.speaker_adaptation!r}")

    def check_model(self, model: ASRModel) -> None:
        """ValueError where ``head`` names an output ``model`` does not have."""
        if self.head == "ctc" and model.ctc_head is None:
            raise ValueError("head ctc: the model has no CTC head (it is a transducer)")
        if self.head == "transducer" and model.joint is None:
            raise ValueError("head transducer: the model has no transducer (it is CTC only)")
        for name, what in (("adapt_steps", "test-time adaptation"),
                           ("self_train_steps", "self-training"),
                           ("confident_entropy", "the confidence gate"),
                           ("speaker_adaptation", "adaptation to each speaker")):
            if getattr(self, name) and model.ctc_head is None:
                raise ValueError(f"{name}: {what} needs a CTC head (the model is a "
                                 "transducer only)")

    @property
    def gates(self) -> bool:
        """Whether the confidence gate is on: ``confident_entropy`` > 0, and the utterances
        it does not let through are adapted or self-trained."""
        return bool(self.confident_entropy) and bool(self.adapt_steps or self.self_train_steps)

    def uses_transducer(self, model: ASRModel) -> bool:
        return model.joint is not None if self.head == "auto" else self.head == "transducer"


@torch.no_grad()
def decode(
    model: ASRModel, enc: torch.Tensor, lengths: torch.Tensor, options: DecodingOptions,
    lm: FusionLM | None = None, lexicon: Lexicon | None = None,
    backward_lm: SentenceLM | None = None, ngram: SpelledNgram | None = None,
) -> list[Hypothesis]:
    """enc (B, T, D), lengths (B,) -> one hypothesis per utterance.

    Uses the head ``options.head`` picks; ``lm`` and ``lexicon`` (sharing the model's
    tokenizer) are fused into beam search, and ``backward_lm`` (an LM with
    ``token_log_probs``, as ``models.lm.WordPieceLM`` has) and ``ngram`` rescore its result.
    """
    options.check_model(model)
    fusion = ShallowFusion(lm, options.lm_weight, options.length_bonus, lexicon,
                           options.oov_penalty)
    backward_weight = options.backward_share * options.lm_weight if backward_lm is not None else 0.0
    ngram_weight = options.ngram_share * options.lm_weight if ngram is not None else 0.0
    rescoring = None
    if lm is not None and (backward_weight or ngram_weight):
        rescoring = Rescoring(backward_lm, backward_weight, ngram, ngram_weight)
    greedy = (options.beam_size == 1 and lm is None and options.length_bonus == 0
              and (lexicon is None or options.oov_penalty == 0))
    if options.uses_transducer(model):
        if greedy:
            return rnnt_greedy(model, enc, lengths, options.max_symbols_per_frame)
        return rnnt_beam_search(model, enc, lengths, options.beam_size, fusion,
                                options.beam_threshold, rescoring)
    log_probs = model.ctc_log_probs(enc)
    if greedy:
        return ctc_greedy(log_probs, lengths)
    return ctc_beam_search(log_probs, lengths, options.beam_size, fusion,
                           options.beam_threshold, rescoring)
