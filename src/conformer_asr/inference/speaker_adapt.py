"""Adaptation to a speaker from the model's own transcripts of them (self-training).

The per-utterance adaptation of ``inference.adapt`` sees a few seconds of a voice. Where
more of one speaker is at hand (a long recording, or a test set's utterances of one
voice), the transcripts of the full decoding (beam search with the LM and lexicon, far
better than the acoustic model's own best path) can teach the encoder that voice: its
LayerNorm gains and biases are trained with the CTC loss towards those transcripts,
and the audio is transcribed again by the adapted encoder; ``rounds`` times, each
round's transcripts the next one's targets. This is self-training (pseudo-labelling) on
one speaker's unlabelled audio, with only the LayerNorms free so that a few minutes of
audio cannot pull the model far.

The rounds' transcripts are cheaper than the last one's: a narrower beam
(``label_beam_size``) and none of the per-utterance adaptation of ``inference.adapt``.
The last transcription keeps the per-utterance adaptation (``adapt_steps``) where the
decoding options ask for it, for every utterance (no ``confident_entropy`` gate), and
leaves out the per-utterance self-training (``self_train_steps``), which the speaker's
supersedes.

A speaker with less than half a minute of speech (``min_seconds``) is decoded as without
it, with the per-utterance self-training: on 40 utterances of one unseen voice (3 s each),
speakers of 1, 3, 6, 12 and 40 of them read 17.07%, 17.07%, 16.72%, 15.33% and 12.54%,
against 15.68% without speaker adaptation (docs/bundled-model.md).

Where the decoding options gate the per-utterance adaptation by confidence
(``DecodingOptions.confident_entropy``), they gate the speaker's too: a voice whose CTC
posteriors, unadapted, have a mean entropy over all its frames at most that threshold
(``speaker_entropy``) is one the model already knows, and is decoded as without; for
any other, the first round searches the encoding that measure read. On the
bundled model's seen-voice test that spared 22 of 45 voices, which had lost 9 word errors
in all by being learnt (recipes/synthetic/README.md, step 4o).

The bundled model's decoding asks for it (``DecodingOptions.speaker_adaptation``): its
unseen-voice test reads about 1.3 points better with each voice learnt than utterance by
utterance, in about the same time (recipes/synthetic/README.md, steps 4d, 4j and 4n).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..audio.io import SAMPLE_RATE, AudioError
from ..models.asr import ASRModel
from .adapt import (
    Adam,
    adapted_parameters,
    ctc_losses,
    mean_frame_entropy,
    with_own_layer_norms,
)
from .transcriber import (
    AudioInput,
    Progress,
    Transcriber,
    Transcript,
    batches_by_length,
    clock,
    header_length,
    input_name,
    read_again_later,
)

PLAIN_RUN = 64  # inputs of speakers not learnt, transcribed in one call (at
# 3 s each, more than fill the transcriber's batches of 160 s; 16 cost a tenth more time)


@dataclass(frozen=True)
class SpeakerAdaptation:
    """How a speaker's audio trains the encoder's LayerNorms (module docstring)."""

    rounds: int = 2  # transcribe, then train towards the transcripts; this many times
    epochs: int = 3  # passes over the audio in each round
    lr: float = 1e-3  # Adam's
    batch_seconds: float = 25.0  # audio in each training step (one segment at the least)
    max_seconds: float = 900.0  # of a speaker's speech trained on: the first this many
    min_seconds: float = 30.0  # less speech than this: decoded as without (too little to learn)
    label_beam_size: int = 32  # the rounds' beam (the transcriber's where that is narrower)
    seed: int = 0  # the order the segments are visited in

    def __post_init__(self) -> None:
        for name in ("rounds", "epochs", "label_beam_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: a whole number >= 1, got {value!r}")
        for name in ("lr", "batch_seconds", "max_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0 < value < math.inf:
                raise ValueError(f"{name}: a finite number > 0, got {value!r}")
        value = self.min_seconds
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 <= value < math.inf:
            raise ValueError(f"min_seconds: a finite number >= 0, got {value!r}")


def adapted_to(
    transcriber: Transcriber, inputs: Sequence[AudioInput], sample_rate: int = SAMPLE_RATE,
    settings: SpeakerAdaptation | None = None, progress: Progress | None = None,
) -> Transcriber:
    """A copy of ``transcriber`` whose encoder LayerNorms are adapted to the one speaker of
    ``inputs`` (module docstring); ``transcriber`` is left as it is. The copy decodes
    without the per-utterance self-training, and adapts every utterance (no confidence
    gate). Inputs that cannot be read are left out (transcribing them names them). With
    less than ``settings.min_seconds`` of speech (none included) there is too little of
    the voice to learn, and ``transcriber`` itself is returned; so it is where the
    options' confidence gate is on and the unadapted model is sure of the voice as a whole
    (``speaker_entropy`` at most ``confident_entropy``). The model needs a CTC head.
    ``progress``: told as each round starts ("learning the voice from 15:00 of speech,
    round 1 of 2")."""
    settings = settings or SpeakerAdaptation()
    if transcriber.model.ctc_head is None:
        raise ValueError("speaker adaptation trains towards the CTC head, which this model "
                         "does not have")
    if _header_seconds(inputs) < settings.min_seconds:  # too short, without reading them
        return transcriber
    waves = _speech(transcriber, inputs, sample_rate, settings.max_seconds)
    if not waves or sum(map(len, waves)) < settings.min_seconds * SAMPLE_RATE:
        return transcriber
    # unadapted: the first round searches it, and the gate measures it first
    encoded: Iterable[Encoded] = list(encodings(transcriber, waves))
    if transcriber.options.gates and speaker_entropy(transcriber.model, encoded) \
            <= transcriber.options.confident_entropy:
        return transcriber  # a voice the model is sure of: decoded as without
    adapted = copy.copy(transcriber)
    adapted.options = replace(transcriber.options, self_train_steps=0, confident_entropy=0.0,
                              speaker_adaptation=False)
    adapted.model = with_own_layer_norms(transcriber.model)
    labeller = copy.copy(adapted)
    labeller.options = replace(
        adapted.options, adapt_steps=0,
        beam_size=min(settings.label_beam_size, transcriber.options.beam_size))
    rng = random.Random(settings.seed)
    speech = clock(sum(map(len, waves)) / SAMPLE_RATE)
    for round_ in range(1, settings.rounds + 1):
        if progress is not None:
            progress(f"learning the voice from {speech} of speech, round {round_} of "
                     f"{settings.rounds}")
        targets = _labels(labeller, encoded, len(waves))
        _train(adapted, waves, targets, settings, rng)
        encoded = encodings(labeller, waves)  # the next round's: the adapted encoder's, lazily
    return adapted


_Numbered = list[tuple[int, AudioInput]]  # inputs, each with its place among all of them


def iter_transcripts_by_speaker(
    transcriber: Transcriber, inputs: Iterable[AudioInput], speakers: Sequence[Hashable] | None,
    settings: SpeakerAdaptation | None = None, sample_rate: int = SAMPLE_RATE,
    progress: Progress | None = None,
) -> Iterator[tuple[AudioInput, Transcript | AudioError]]:
    """``transcriber.iter_decoded(inputs, sample_rate)``, each input transcribed by a
    copy adapted to all the inputs of its speaker (``adapted_to``): ``speakers[i]`` is
    input i's; None: each input is a speaker of its own, and the inputs are drawn as
    needed. The inputs of speakers not learnt (too little speech, or a voice the model is
    sure of) are transcribed by ``transcriber`` itself, up to ``PLAIN_RUN`` of them in one
    call (batched, as without speaker adaptation). Yields in input order, each input as
    soon as it and the inputs before it are transcribed. ``progress``: told where the work
    stands, each line naming the input, or the speaker being learnt: by their name where
    ``speakers`` are strings, else by their first input ("a.wav and 3 more")."""
    groups: Iterable[tuple[Hashable, _Numbered]]  # (speaker, their inputs)
    if speakers is None:
        groups = ((None, [pair]) for pair in enumerate(inputs))
    else:
        listed = list(inputs)
        if len(speakers) != len(listed):
            raise ValueError(f"{len(speakers)} speakers for {len(listed)} inputs")
        by_speaker: dict[Hashable, _Numbered] = {}
        for index, speaker in enumerate(speakers):
            by_speaker.setdefault(speaker, []).append((index, listed[index]))
        groups = by_speaker.items()

    def runs() -> Iterator[tuple[_Numbered, Transcriber]]:
        """(inputs, the transcriber for them), each speaker adapted in turn."""
        plain: _Numbered = []
        for speaker, group in groups:
            adapted = adapted_to(transcriber, [item for _, item in group], sample_rate,
                                 settings, _naming(progress, speaker, group))
            if adapted is not transcriber:
                yield group, adapted
                continue
            plain += group
            if len(plain) >= PLAIN_RUN:
                yield plain, transcriber
                plain = []
        if plain:
            yield plain, transcriber

    done: dict[int, tuple[AudioInput, Transcript | AudioError]] = {}
    next_out = 0
    for run, by in runs():
        numbers = [number for number, _ in run]
        results = by.iter_decoded([item for _, item in run], sample_rate, numbers, progress)
        done.update(zip(numbers, results, strict=True))
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1


def _naming(progress: Progress | None, speaker: Hashable,
            group: _Numbered) -> Progress | None:
    """``progress`` for lines about ``speaker``, whose inputs are ``group``: named by their
    name where it is a string, else by their first input."""
    if progress is None:
        return None
    if isinstance(speaker, str):
        name = speaker
    else:
        number, first = group[0]
        name = input_name(first, number)
        if len(group) > 1:
            name += f" and {len(group) - 1} more"
    return lambda line: progress(f"{name}: {line}")


Encoded = tuple[list[int], torch.Tensor, torch.Tensor]  # segment indices, (B, T', D), (B,)


@torch.no_grad()
def encodings(transcriber: Transcriber, waves: Sequence[np.ndarray]) -> Iterator[Encoded]:
    """16 kHz segments -> ``transcriber.model``'s encoder output, with no per-utterance
    adaptation, batch by batch: the indices into ``waves`` of a batch's segments, their
    encoding (B, T', D) and its lengths (B,). The segments go in consecutive runs of at
    most ``transcriber.batch_seconds`` of audio (one segment at the least; about the
    batches ``iter_decoded`` hands ``decode_waves``), each run in the groups of
    similar lengths ``decode_waves`` makes: the memory of a batch is bounded by the
    transcriber's, not by the speaker."""
    lengths = [len(w) for w in waves]
    for run in _batches(list(range(len(waves))), lengths,
                        transcriber.batch_seconds * SAMPLE_RATE):
        for rows in batches_by_length([waves[i] for i in run]):
            indices = [run[row] for row in rows]
            enc, enc_lengths = transcriber.model.encode(
                *transcriber.features_of([waves[i] for i in indices]))
            yield indices, enc, enc_lengths


@torch.no_grad()
def speaker_entropy(model: ASRModel, encoded: Iterable[Encoded]) -> float:
    """A speaker's ``encodings`` -> the entropy (nats) of ``model``'s CTC posteriors,
    averaged over all the segments' frames: the per-utterance confidence gate's measure
    (``inference.adapt.mean_frame_entropy``), taken over the speaker."""
    total, frames = 0.0, 0
    for _, enc, enc_lengths in encoded:
        total += float((mean_frame_entropy(model, enc, enc_lengths) * enc_lengths).sum())
        frames += int(enc_lengths.sum())
    return total / frames


def _labels(labeller: Transcriber, encoded: Iterable[Encoded], count: int) -> list[list[int]]:
    """The tokens of ``labeller``'s transcript of each of ``count`` segments, searched from
    their ``encodings``."""
    labels: list[list[int]] = [[] for _ in range(count)]
    for indices, enc, enc_lengths in encoded:
        for index, hyp in zip(indices, labeller.decode_encoded(enc, enc_lengths), strict=True):
            labels[index] = hyp.tokens
    return labels


def _header_seconds(inputs: Sequence[AudioInput]) -> float:
    """The inputs' duration in seconds from their files' headers, a bound on their speech;
    inf where one is not a file or its header cannot be read (its samples must be)."""
    total = 0.0
    for item in inputs:
        length = header_length(item)
        if length is None:
            return math.inf
        total += length
    return total


def _speech(transcriber: Transcriber, inputs: Sequence[AudioInput], sample_rate: int,
            max_seconds: float) -> list[np.ndarray]:
    """The segments ``transcriber`` would decode of ``inputs``, up to ``max_seconds`` of
    them; inputs that cannot be read are skipped."""
    waves: list[np.ndarray] = []
    left = max_seconds * SAMPLE_RATE
    with read_again_later():
        for item in inputs:
            try:
                for wave in transcriber.speech(item, sample_rate):
                    if left <= 0:
                        return waves
                    waves.append(wave)
                    left -= len(wave)
            except AudioError:
                continue
    return waves


def _train(transcriber: Transcriber, waves: list[np.ndarray], targets: list[list[int]],
           settings: SpeakerAdaptation, rng: random.Random) -> None:
    """``settings.epochs`` passes of Adam on ``transcriber.model``'s encoder LayerNorms, the
    CTC loss of ``waves`` towards ``targets`` (a segment with no tokens is left out)."""
    model: ASRModel = transcriber.model
    params = adapted_parameters(model)
    adam = Adam(params, settings.lr)
    device = params[0].device
    usable = [i for i, tokens in enumerate(targets) if tokens]
    for _ in range(settings.epochs):
        rng.shuffle(usable)
        for batch in _batches(usable, [len(w) for w in waves],
                              settings.batch_seconds * SAMPLE_RATE):
            feats, feat_lengths = transcriber.features_of([waves[i] for i in batch])
            batch_targets = [targets[i] for i in batch]
            target_lengths = torch.tensor([len(t) for t in batch_targets], device=device)
            with torch.enable_grad():
                enc, enc_lengths = model.encode(feats, feat_lengths)
                # F.ctc_loss's "mean": each loss over its target's length, then the mean
                losses = ctc_losses(model, enc, enc_lengths, batch_targets)
                loss = (losses / target_lengths).mean()
                adam.step(torch.autograd.grad(loss, params))


def _batches(order: list[int], lengths: list[int], limit: float) -> Iterator[list[int]]:
    """``order`` cut into consecutive runs of at most ``limit`` samples (``lengths[i]`` is
    i's), one item at the least."""
    batch: list[int] = []
    total = 0
    for i in order:
        if batch and total + lengths[i] > limit:
            yield batch
            batch, total = [], 0
        batch.append(i)
        total += lengths[i]
    if batch:
        yield batch
