"""Grid search of the LM weight, length bonus, OOV penalty and the backward and n-gram LMs'
shares on a dev manifest (``conformer-asr tune``).

Every utterance is encoded once; each setting only re-runs the beam search over
the stored encoder outputs, and, with self-training, the self-training and a second
search, which start from that setting's transcripts. Utterances are decoded whole (the
``Transcriber`` cuts long recordings into windows), which suits dev sets of utterances
up to about 30 s; a manifest with one longer than ``MAX_SECONDS`` is refused before any
work, since attention's time and memory grow with the square of the length (the bundled
model's adapted encoding of one 300 s utterance took 87 s and 3.5 GB on 2 CPU threads).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.features import LogMelFeatures
from ..audio.io import AudioError, audio_duration, load_audio
from ..decoding.fusion import FusionLM
from ..decoding.lexicon import Lexicon
from ..decoding.ngram import SpelledNgram
from ..decoding.rescore import SentenceLM
from ..decoding.search import DecodingOptions, decode
from ..models.asr import ASRModel
from ..scoring import WordErrors, word_errors
from ..text.tokenizer import Tokenizer
from .adapt import confidence_gate, encode, self_trained, take_rows
from .evaluate import Utterance, read_manifest

MAX_SECONDS = 60.0  # the longest utterance tune decodes (whole)


@dataclass
class TuneResult:
    lm_weight: float
    length_bonus: float
    oov_penalty: float
    backward_share: float
    ngram_share: float
    errors: WordErrors


@dataclass
class Tuning:
    """What ``tune`` found: a result per setting, in grid order, and a one-line reason for
    each utterance it could not read (scored as empty in every result)."""

    results: list[TuneResult]
    skipped: list[str]


@dataclass
class _Encoded:
    """A batch of utterances: their manifest indices, encoder output (B, T', D) and
    lengths (B,), and, kept for self-training only, features (B, T, F) and lengths (B,);
    ``sure`` where the confidence gate let them through unadapted."""

    indices: list[int]
    enc: torch.Tensor
    lengths: torch.Tensor
    feats: torch.Tensor | None
    feat_lengths: torch.Tensor
    sure: bool = False  # behind the confidence gate: decoded once, unadapted


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@torch.no_grad()
def _encode_all(
    model: ASRModel, utterances: Sequence[Utterance], batch_seconds: float,
    adapting: DecodingOptions, log: Callable[[str], None], warn: Callable[[str], None],
) -> tuple[list[_Encoded], list[str]]:
    """Encode the readable utterances, shortest first, ``batch_seconds`` of audio a batch
    -> (the batches, why each unreadable one was skipped), adapted as ``adapting`` says.
    ``warn`` gets a line for each skipped one, ``log`` one when all are encoded."""
    device = next(model.parameters()).device
    features = LogMelFeatures(model.cfg.features).to(device)
    durations = {}
    skipped = []
    for i, utt in enumerate(utterances):
        try:
            durations[i] = audio_duration(utt.audio)
        except AudioError as error:
            skipped.append(str(error))
            warn(f"skipped (scored as empty): {error}")
    too_long = [i for i in durations if durations[i] > MAX_SECONDS]
    if too_long:
        first = too_long[0]
        others = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
        raise ValueError(f"{utterances[first].audio}: {durations[first]:.1f} s long{others}; "
                         f"tune decodes each utterance whole, up to {MAX_SECONDS:g} s: cut "
                         "longer recordings into utterances (evaluate reads them in windows)")
    encoded: list[_Encoded] = []
    batch: list[int] = []
    start = time.perf_counter()
    order = sorted(durations, key=durations.__getitem__)
    for position, i in enumerate(order):
        batch.append(i)
        full = sum(durations[j] for j in batch) >= batch_seconds
        if full or position == len(order) - 1:
            waves = [torch.from_numpy(load_audio(utterances[j].audio)) for j in batch]
            lengths = torch.tensor([max(len(w), model.cfg.min_samples) for w in waves])
            padded = torch.zeros(len(waves), int(lengths.max()))
            for row, wave in enumerate(waves):
                padded[row, :len(wave)] = wave
            feats, feat_lengths = features(padded.to(device), lengths.to(device))
            encoded.extend(_encode_batch(model, batch, feats, feat_lengths, adapting))
            batch = []
    sure = sum(len(part.indices) for part in encoded if part.sure)
    gated = f"; {sure} sure enough to decode once, unadapted" if adapting.gates else ""
    log(f"encoded {len(order)} utterances ({sum(durations.values()):.1f} s of audio) in "
        f"{time.perf_counter() - start:.1f} s{gated}")
    return encoded, skipped


def _encode_batch(model: ASRModel, indices: list[int], feats: torch.Tensor,
                  feat_lengths: torch.Tensor, adapting: DecodingOptions) -> list[_Encoded]:
    """A batch's features (B, T, F) and lengths (B,) -> its encoded parts: the whole batch,
    adapted as ``adapting`` says, or, behind its confidence gate, the sure rows unadapted
    (no features kept: they are decoded once) and the others adapted."""
    self_training = bool(adapting.self_train_steps)
    gate = confidence_gate(model, feats, feat_lengths, adapting)
    if gate is None:
        enc, enc_lengths = encode(model, feats, feat_lengths, adapting)
        return [_Encoded(indices, enc, enc_lengths, feats if self_training else None,
                         feat_lengths)]
    sure, enc, enc_lengths = gate
    parts = []
    rows = sure.nonzero()[:, 0]
    if len(rows):
        parts.append(_Encoded([indices[i] for i in rows.tolist()],
                              *take_rows(enc, enc_lengths, rows), None, feat_lengths[rows],
                              sure=True))
    rows = (~sure).nonzero()[:, 0]
    if len(rows):
        unsure, unsure_lengths = take_rows(feats, feat_lengths, rows)
        enc, enc_lengths = encode(model, unsure, unsure_lengths, adapting)
        parts.append(_Encoded([indices[i] for i in rows.tolist()], enc, enc_lengths,
                              unsure if self_training else None, unsure_lengths))
    return parts


def tune(
    model: ASRModel, tokenizer: Tokenizer, lm: FusionLM, manifest: str | Path,
    beam_size: int, lm_weights: Sequence[float], length_bonuses: Sequence[float],
    oov_penalties: Sequence[float] = (0.0,), lexicon: Lexicon | None = None,
    batch_seconds: float = 160.0, adapt_steps: int = 0, self_train_steps: int = 0,
    confident_entropy: float = 0.0, beam_threshold: float = DecodingOptions.beam_threshold,
    backward_lm: SentenceLM | None = None, backward_shares: Sequence[float] = (0.0,),
    ngram: SpelledNgram | None = None, ngram_shares: Sequence[float] = (0.0,),
    log: Callable[[str], None] = print, warn: Callable[[str], None] = _to_stderr,
) -> Tuning:
    """WER of every (LM weight, length bonus, OOV penalty, backward share, n-gram share) whose
    shares add up to at most 1, in grid order; ``log`` gets a table row as each one
    finishes, ``warn`` a line for each utterance that cannot be read (stderr by default: the
    table stays whole on stdout). ``model``, ``lm`` and ``backward_lm`` must be in eval mode
    on one device, the LMs as the transcriber decodes with them (``lm_dir.lm_for_decoding``);
    the penalties need ``lexicon``, the shares > 0 ``backward_lm`` and ``ngram``, which
    rescore as ``DecodingOptions.backward_share`` and ``ngram_share`` say
    (``decoding.rescore``). ``adapt_steps`` > 0 adapts the encoder to each utterance first,
    as ``DecodingOptions.adapt_steps`` does, and ``self_train_steps`` > 0 self-trains it and
    decodes again, as ``DecodingOptions.self_train_steps`` does (the time of a full decoding
    per setting); ``confident_entropy`` > 0 decodes the utterances the unadapted model is
    sure of once, unadapted, as ``DecodingOptions.confident_entropy`` does (the gate does
    not depend on the setting); the searches drop hypotheses as
    ``DecodingOptions.beam_threshold`` says."""
    if lexicon is None and any(oov_penalties):
        raise ValueError("oov_penalties: the LM folder has no lexicon.txt, so they must be 0 "
                         "(train-lm writes one)")
    if backward_lm is None and any(backward_shares):
        raise ValueError("backward_shares: there is no backward LM, so they must be 0 "
                         "(train-lm --backward makes one)")
    if ngram is None and any(ngram_shares):
        raise ValueError("ngram_shares: there is no n-gram LM, so they must be 0")
    grid = list(_grid(beam_size, beam_threshold, lm_weights, length_bonuses, oov_penalties,
                      backward_shares, ngram_shares, adapt_steps, self_train_steps))  # checked
    if not grid:
        raise ValueError("backward_shares, ngram_shares: no pair adds up to at most 1")
    utterances = read_manifest(manifest)
    adapting = DecodingOptions(adapt_steps=adapt_steps, self_train_steps=self_train_steps,
                               confident_entropy=confident_entropy)
    adapting.check_model(model)
    encoded, skipped = _encode_all(model, utterances, batch_seconds, adapting, log, warn)
    if not encoded:
        raise ValueError(f"{manifest}: none of its audio could be read; nothing to tune on")
    log(HEADER)
    results = []
    for options in grid:
        texts = [""] * len(utterances)
        for part in encoded:
            hyps = decode(model, part.enc, part.lengths, options, lm, lexicon, backward_lm,
                          ngram)
            if part.feats is not None:
                hyps = self_trained(model, part.feats, part.feat_lengths, options, hyps, lm,
                                    lexicon, backward_lm, ngram)
            for i, hyp in zip(part.indices, hyps, strict=True):
                texts[i] = tokenizer.decode(hyp.tokens)
        errors = sum((word_errors(u.text, text) for u, text in zip(utterances, texts,
                                                                     strict=True)),
                     WordErrors())
        results.append(TuneResult(options.lm_weight, options.length_bonus,
                                  options.oov_penalty, options.backward_share,
                                  options.ngram_share, errors))
        log(format_row(results[-1]))
    return Tuning(results, skipped)


def _grid(beam_size: int, beam_threshold: float, lm_weights: Sequence[float],
          length_bonuses: Sequence[float], oov_penalties: Sequence[float],
          backward_shares: Sequence[float], ngram_shares: Sequence[float], adapt_steps: int,
          self_train_steps: int) -> Iterator[DecodingOptions]:
    for lm_weight, length_bonus, oov_penalty, backward_share, ngram_share in itertools.product(
            lm_weights, length_bonuses, oov_penalties, backward_shares, ngram_shares):
        if backward_share + ngram_share <= 1:
            yield DecodingOptions(beam_size=beam_size, beam_threshold=beam_threshold,
                                  lm_weight=lm_weight, length_bonus=length_bonus,
                                  oov_penalty=oov_penalty, adapt_steps=adapt_steps,
                                  self_train_steps=self_train_steps,
                                  backward_share=backward_share, ngram_share=ngram_share)


HEADER = (f"{'lm_weight':>9}  {'bonus':>6}  {'oov':>5}  {'share':>5}  {'ngram':>5}  "
          f"{'WER %':>7}  {'sub':>5}  {'del':>5}  {'ins':>5}")


def format_row(result: TuneResult) -> str:
    e = result.errors
    return (f"{result.lm_weight:>9.3g}  {result.length_bonus:>6.3g}  {result.oov_penalty:>5.3g}  "
            f"{result.backward_share:>5.3g}  {result.ngram_share:>5.3g}  {e.wer:>7.2f}  "
            f"{e.substitutions:>5}  {e.deletions:>5}  {e.insertions:>5}")


def best_result(results: Sequence[TuneResult]) -> TuneResult:
    """Lowest WER; on ties the earliest in grid order."""
    return min(results, key=lambda r: r.errors.wer)
