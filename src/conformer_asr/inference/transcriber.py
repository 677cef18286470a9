"""Speech to text with a trained model: files or arrays in, text and word timings out.

An input of up to one window (20 s) is decoded whole. A longer recording is read block
by block, so memory stays bounded whatever its length, and cut into segments of at
most one window, as the model was trained on single utterances:

- in pauses (``audio.pauses``): a segment ends in the first pause of at least
  ``pause_seconds`` that ends ``min_segment_seconds`` or more after its start; it keeps
  ``PAUSE_MARGIN`` seconds of the pause and the next segment starts that long before
  the pause ends, so long silences are skipped;
- where a window holds no such pause, in overlapping windows: the segment is the whole
  window and the next starts ``window - overlap`` seconds later; each keeps the words
  whose centre falls in its middle part, so each word comes from the window that saw
  the most context around it.

Every segment, the whole of a short input included, is trimmed of any pause at its
start or end beyond ``PAUSE_MARGIN`` (one that is all pause stays whole): the model
was trained on utterances with up to a second of silence around them. A segment that is
one steady sound (``audio.pauses.is_steady``: silence, dither, hum or noise alone) is not
decoded and has no words: the model, which never heard such input alone, made some up.
Where the decoding options say so (``adapt_steps``; the bundled model's do), the encoder
is adapted to each segment before it is decoded (``inference.adapt``), and with
``self_train_steps`` each segment is decoded again after its encoder has been trained
towards its first transcript; with ``confident_entropy``, only the segments the unadapted
model is unsure of are (the others are decoded once, unadapted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..audio.features import LogMelFeatures
from ..audio.io import (
    SAMPLE_RATE,
    AudioError,
    AudioSlice,
    AudioWarning,
    audio_duration,
    resample,
    samples_of,
    stream_audio,
)
from ..audio.pauses import FRAME_SECONDS, find_pauses, is_steady
from ..decoding.greedy import Hypothesis
from ..decoding.lexicon import Lexicon
from ..decoding.ngram import SpelledNgram, WordNgramLM
from ..decoding.search import DecodingOptions, decode
from ..device import check_device
from ..models.asr import ASRModel
from ..models.lm import WordPieceLM
from ..models.quantize import check_int8_device, quantize_int8
from ..text.tokenizer import Tokenizer
from .adapt import confidence_gate, encode, self_trained, take_rows
from .lm_dir import lm_for_decoding, load_lexicon_for, load_lm_for
from .model_dir import (
    BACKWARD_LM_SUBDIR,
    bundled_lm_dir,
    bundled_ngram,
    load_model_dir,
    load_ngram,
    resolve_model_dir,
)

# paths (any os.PathLike), parts of files, or arrays: see audio.io.samples_of
AudioInput = str | os.PathLike | AudioSlice | np.ndarray | torch.Tensor
# told where a long transcription stands, in a short line ("talk.wav: 2:40 of 57:03 decoded")
Progress = Callable[[str], None]

PAUSE_MARGIN = 0.25  # seconds of a pause kept on each side of a cut in it
_MARGIN_SAMPLES = round(PAUSE_MARGIN * SAMPLE_RATE)
_FRAME_SAMPLES = round(FRAME_SECONDS * SAMPLE_RATE)  # pauses are found frame by frame


@dataclass
class Word:
    """A recognised word and when it was said, in seconds from the input's start."""

    word: str
    start: float
    end: float


@dataclass
class Transcript:
    """One input's transcript: its words joined by spaces, the input's length in seconds,
    and the words with their times."""

    text: str
    duration: float
    words: list[Word] = field(default_factory=list)


_NO_SAMPLES = np.zeros(0, dtype=np.float32)


@dataclass
class _Segment:
    """One segment of one input: its samples, from ``offset`` seconds into the input, and
    which of its words to keep. ``end``: where its part of the input ends (its samples
    may stop earlier, at a trimmed pause)."""

    index: int
    offset: float
    samples: np.ndarray
    keep_from: float
    keep_to: float
    end: float


MIN_SAMPLE_RATE = 1000  # Hz; the lowest rate an array may be given at


class Transcriber:
    """Wraps a model, its tokenizer, a decoding strategy and an optional LM and lexicon
    for shallow fusion, and a backward LM for rescoring (same tokenizer as the model).

    transcribe(["a.wav", array, ...]) -> ["text", ...]. Arrays are read as files are
    (``audio.io.samples_of``: float or integer PCM, mono or either channel layout) at
    ``sample_rate``, 16 kHz unless given; an ``audio.io.AudioSlice`` is a part of a file.
    ``window_seconds``, ``overlap_seconds``,
    ``min_segment_seconds`` and ``pause_seconds`` say how long inputs are cut (module
    docstring); ``batch_seconds`` is the audio decoded at once. The LMs decode as
    ``lm_dir.lm_for_decoding`` makes them for the model's device: on the CPU, copies that
    multiply in int8 rows (the LMs given are left as they are).
    """

    def __init__(
        self,
        model: ASRModel,
        tokenizer: Tokenizer,
        options: DecodingOptions | None = None,
        window_seconds: float = 20.0,
        overlap_seconds: float = 4.0,
        min_segment_seconds: float = 2.0,
        pause_seconds: float = 0.3,
        batch_seconds: float = 160.0,
        lm: WordPieceLM | None = None,
        lexicon: Lexicon | None = None,
        backward_lm: WordPieceLM | None = None,
        ngram: WordNgramLM | None = None,
    ) -> None:
        if not 0 <= overlap_seconds < window_seconds:
            raise ValueError("overlap_seconds: must be in [0, window_seconds)")
        if not 0 <= min_segment_seconds < window_seconds:
            raise ValueError("min_segment_seconds: must be in [0, window_seconds)")
        if pause_seconds < 2 * FRAME_SECONDS:
            raise ValueError(f"pause_seconds: must be at least {2 * FRAME_SECONDS} s")
        if options is not None and options.oov_penalty and lexicon is None:
            raise ValueError("oov_penalty: needs a lexicon, which comes with an LM folder "
                             "(train-lm writes its lexicon.txt)")
        if options is not None:
            options.check_model(model)
        for name, language_model in (("LM", lm), ("backward LM", backward_lm)):
            if language_model is not None and language_model.cfg.vocab_size != model.cfg.vocab_size:
                raise ValueError(f"the {name} has {language_model.cfg.vocab_size} tokens, the "
                                 f"model {model.cfg.vocab_size}: they must share one tokenizer")
        if lm is not None and lm.cfg.backward:
            raise ValueError("lm: a backward LM, which rescores (backward_lm); the LM fused "
                             "into the search reads left to right")
        if backward_lm is not None and not backward_lm.cfg.backward:
            raise ValueError("backward_lm: a forward LM (train-lm --backward makes one)")
        self.model = model.eval()
        device = next(model.parameters()).device
        self.lm = None if lm is None else lm_for_decoding(lm, device).eval()
        self.lexicon = lexicon
        self.backward_lm = (None if backward_lm is None
                            else lm_for_decoding(backward_lm, device).eval())
        self.ngram = None if ngram is None else SpelledNgram(
            ngram, tokenizer.vocabulary())
        self.tokenizer = tokenizer
        self.options = options or DecodingOptions()
        self.features = LogMelFeatures(model.cfg.features)
        self.window = window_seconds
        self.overlap = overlap_seconds
        self.min_segment = min_segment_seconds
        self.pause = pause_seconds
        self.batch_seconds = batch_seconds
        self.frame_seconds = model.cfg.encoder_frame_seconds

    def transcribe(
        self, inputs: Iterable[AudioInput] | AudioInput, sample_rate: int = SAMPLE_RATE,
        progress: Progress | None = None,
    ) -> list[str]:
        """-> one text per input (a single input counts as a list of one), transcribed as
        ``iter_transcripts`` transcribes them; raises AudioError on the first unusable
        input."""
        results = []
        for _, result in self.iter_transcripts(inputs, sample_rate, progress):
            if isinstance(result, AudioError):
                raise result
            results.append(result.text)
        return results

    def iter_transcripts(
        self, inputs: Iterable[AudioInput] | AudioInput, sample_rate: int = SAMPLE_RATE,
        progress: Progress | None = None,
    ) -> Iterator[tuple[AudioInput, Transcript | AudioError]]:
        """Yield (input, Transcript or AudioError) in input order, the inputs drawn as
        needed; errors do not stop the rest. Where ``options.speaker_adaptation`` asks for
        it (the bundled model's do), each input is taken as one speaker's and learnt first
        (``speaker_adapt.iter_transcripts_by_speaker``), as the ``transcribe`` command takes
        each file; ``iter_decoded`` decodes utterance by utterance. ``progress``: told where
        the work stands as it goes ("talk.wav: 2:40 of 57:03 decoded")."""
        from .speaker_adapt import iter_transcripts_by_speaker  # which imports this module

        items = _items(inputs)
        if not self.options.speaker_adaptation:
            return self.iter_decoded(items, sample_rate, progress=progress)
        _check_sample_rate(sample_rate)
        return iter_transcripts_by_speaker(self, items, None, sample_rate=sample_rate,
                                           progress=progress)

    def iter_decoded(
        self, inputs: Iterable[AudioInput], sample_rate: int = SAMPLE_RATE,
        numbers: Sequence[int] | None = None, progress: Progress | None = None,
    ) -> Iterator[tuple[AudioInput, Transcript | AudioError]]:
        """Yield (input, Transcript or AudioError) in input order, each input decoded as it
        is (no speaker learnt), drawn as needed; errors do not stop the rest.
        ``numbers``: what each input is numbered in messages (``input_name``), its place in
        ``inputs`` unless given (a caller that hands on some of its inputs gives their
        places among its own). ``progress``: told after each batch is decoded how far into
        its last input it reached ("talk.wav: 2:40 of 57:03 decoded"; the length where a
        file's header gives it)."""
        _check_sample_rate(sample_rate)
        # drawn one at a time, as decoding needs them: a generator fed by a queue yields
        # results as it goes (it was read to its end first, holding every array it made)
        given: dict[int, AudioInput] = {}  # inputs not handed back yet
        names: dict[int, str] = {}  # theirs in messages
        lengths: dict[int, float | None] = {}  # with progress: seconds, from their headers
        pending: dict[int, list[tuple[_Segment, Hypothesis]]] = {}
        finished: dict[int, float | AudioError] = {}  # duration, or why the input failed
        batch: list[_Segment] = []
        next_out = 0

        def flush() -> None:
            if not batch:
                return
            hyps = self.decode_waves([s.samples for s in batch])
            if progress is not None:
                last = batch[-1]
                progress(_decoded_line(names[last.index], last.end, lengths[last.index]))
            for segment, hyp in zip(batch, hyps, strict=True):
                # Keep where the window was, not its samples: they would hold a long
                # recording in memory until its last window is decoded.
                decoded = dataclasses.replace(segment, samples=_NO_SAMPLES)
                pending.setdefault(segment.index, []).append((decoded, hyp))
            batch.clear()

        def ready() -> Iterator[tuple[AudioInput, Transcript | AudioError]]:
            """Inputs, in order, whose every window has been decoded."""
            nonlocal next_out
            while next_out in finished and all(s.index != next_out for s in batch):
                outcome, item = finished.pop(next_out), given.pop(next_out)
                del names[next_out]
                lengths.pop(next_out, None)
                parts = pending.pop(next_out, [])
                if isinstance(outcome, AudioError):
                    yield item, outcome
                else:
                    yield item, self._assemble(parts, outcome)
                next_out += 1

        limit = self.batch_seconds * SAMPLE_RATE
        for index, item in enumerate(inputs):
            given[index] = item
            names[index] = input_name(item, index if numbers is None else numbers[index])
            if progress is not None:
                lengths[index] = header_length(item)
            duration = 0.0
            try:
                for segment in self._segments(index, item, sample_rate, names[index]):
                    duration = segment.end
                    if is_steady(segment.samples):  # no speech (module docstring)
                        continue
                    batch.append(segment)
                    if sum(len(s.samples) for s in batch) >= limit:
                        flush()
                        yield from ready()
                finished[index] = duration
            except AudioError as error:
                finished[index] = error
                batch[:] = [s for s in batch if s.index != index]
            yield from ready()
        flush()
        yield from ready()

    def _segments(self, index: int, item: AudioInput, sample_rate: int,
                  name: str | None = None) -> Iterator[_Segment]:
        """``item``'s segments (module docstring), each marked as input ``index``'s; ``name``:
        what an error calls it, ``input_name(item, index)`` unless given."""
        blocks: Iterable[np.ndarray]
        if isinstance(item, AudioSlice):
            blocks = stream_audio(item, block_seconds=self.window)
        elif not isinstance(item, str | os.PathLike):
            blocks = [resample(samples_of(item, name or input_name(item, index)), sample_rate)]
        else:
            blocks = stream_audio(os.fspath(item), block_seconds=self.window)
        buffer = np.zeros(0, dtype=np.float32)
        offset = 0  # samples before buffer[0]
        keep_from = 0.0
        for block in itertools.chain(blocks, [None]):  # None: the input has ended
            if block is not None:
                buffer = np.concatenate([buffer, block])
            while (cut := self._cut(buffer, final=block is None, started=offset > 0)) is not None:
                end, resume, divide = cut
                keep_to = (offset + divide) / SAMPLE_RATE
                yield self._trimmed(_Segment(index, offset / SAMPLE_RATE, buffer[:end], keep_from,
                                             keep_to, (offset + end) / SAMPLE_RATE))
                buffer, offset, keep_from = buffer[resume:], offset + resume, keep_to
        yield self._trimmed(_Segment(index, offset / SAMPLE_RATE, buffer, keep_from,
                                     float("inf"), (offset + len(buffer)) / SAMPLE_RATE))

    def _trimmed(self, segment: _Segment) -> _Segment:
        """The segment without the part of a pause at its start or end beyond
        ``PAUSE_MARGIN``; one that is all pause stays whole."""
        start, end = 0, len(segment.samples)
        pauses = find_pauses(segment.samples, self.pause)
        if pauses and pauses[0][0] == 0:
            start = max(0, pauses[0][1] - _MARGIN_SAMPLES)
        if pauses and pauses[-1][1] > end - _FRAME_SAMPLES:
            end = pauses[-1][0] + _MARGIN_SAMPLES
        if start >= end:
            return segment
        return dataclasses.replace(segment, offset=segment.offset + start / SAMPLE_RATE,
                                   samples=segment.samples[start:end])

    def _cut(self, buffer: np.ndarray, final: bool, started: bool) -> tuple[int, int, int] | None:
        """Where to cut what is left of an input (module docstring), in samples from
        ``buffer[0]``: (end of this segment, start of the next, where the centres of
        their words divide), or None: wait for more audio or, at the end of the input,
        make the rest one segment. ``started``: segments of this input have been cut."""
        window = round(self.window * SAMPLE_RATE)
        if len(buffer) <= window and not (final and started):
            return None
        shortest = self.min_segment * SAMPLE_RATE
        # At the end of the input, a pause that runs to its end is no place to cut.
        latest_end = window
        if final and len(buffer) <= window:
            latest_end = len(buffer) - _FRAME_SAMPLES
        for start, end in find_pauses(buffer[:window], self.pause):
            if shortest <= end <= latest_end:
                margin = min(_MARGIN_SAMPLES, (end - start) // 2)
                return start + margin, end - margin, start + margin
        if len(buffer) <= window:
            return None
        stride = round((self.window - self.overlap) * SAMPLE_RATE)
        return window, stride, window - round(self.overlap / 2 * SAMPLE_RATE)

    def speech(self, item: AudioInput, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """The samples of each segment of ``item`` that ``iter_decoded`` decodes (the
        ones that are not one steady sound), in order; AudioError if it cannot be read."""
        for segment in self._segments(0, item, sample_rate):
            if not is_steady(segment.samples):
                yield segment.samples

    def decode_waves(self, waves: list[np.ndarray]) -> list[Hypothesis]:
        """16 kHz segments of at most one window -> their hypotheses, decoded in groups of
        similar lengths (``length_groups``)."""
        decoded: dict[int, Hypothesis] = {}
        for rows in batches_by_length(waves):
            decoded.update(zip(rows, self._decode_padded([waves[i] for i in rows]), strict=True))
        return [decoded[i] for i in range(len(waves))]

    @torch.no_grad()
    def features_of(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz waves -> their features (B, T, F), padded to the longest, and lengths (B,),
        on the model's device; a wave shorter than the model's shortest input counts as
        that long (zeros after it)."""
        shortest = self.model.cfg.min_samples
        lengths = torch.tensor([max(len(w), shortest) for w in waves])
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(w)
        device = next(self.model.parameters()).device
        return self.features.to(device)(batch.to(device), lengths.to(device))

    @torch.no_grad()
    def _decode_padded(self, waves: list[np.ndarray]) -> list[Hypothesis]:
        """Decode as one batch padded to the longest wave. With ``confident_entropy``, the
        rows the unadapted model is sure of are decoded once, unadapted, and the others as
        ``_decode_adapted`` decodes them."""
        feats, feat_lengths = self.features_of(waves)
        gate = confidence_gate(self.model, feats, feat_lengths, self.options)
        if gate is None:
            return self._decode_adapted(feats, feat_lengths)
        sure, enc, enc_lengths = gate
        hyps: dict[int, Hypothesis] = {}
        rows = sure.nonzero()[:, 0]
        if len(rows):
            hyps.update(zip(rows.tolist(), self.decode_encoded(
                *take_rows(enc, enc_lengths, rows)), strict=True))
        rows = (~sure).nonzero()[:, 0]
        if len(rows):
            hyps.update(zip(rows.tolist(), self._decode_adapted(
                *take_rows(feats, feat_lengths, rows)), strict=True))
        return [hyps[row] for row in range(len(waves))]

    def _decode_adapted(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                        ) -> list[Hypothesis]:
        """feats (B, T, F), lengths (B,) -> hypotheses, each row adapted as the options say;
        with self-training, decoded again after it, towards the first transcripts."""
        hyps = self.decode_encoded(*encode(self.model, feats, feat_lengths, self.options))
        return self_trained(self.model, feats, feat_lengths, self.options, hyps, self.lm,
                            self.lexicon, self.backward_lm, self.ngram)

    def decode_encoded(self, enc: torch.Tensor, enc_lengths: torch.Tensor) -> list[Hypothesis]:
        """Encoder output (B, T', D), lengths (B,) -> their hypotheses, searched as the
        options say with this transcriber's LMs and lexicon (no adaptation: the encoding
        is done)."""
        return decode(self.model, enc, enc_lengths, self.options, self.lm, self.lexicon,
                      self.backward_lm, self.ngram)

    def _assemble(self, parts: list[tuple[_Segment, Hypothesis]], duration: float) -> Transcript:
        words: list[Word] = []
        for segment, hyp in parts:
            for word in self._words(hyp, segment.offset):
                centre = (word.start + word.end) / 2
                if segment.keep_from <= centre < segment.keep_to:
                    words.append(word)
        return Transcript(" ".join(w.word for w in words), duration, without_overlaps(words))

    def _words(self, hyp: Hypothesis, offset: float) -> list[Word]:
        """Group word pieces into words; times from the frames the pieces were emitted at."""
        groups: list[tuple[list[int], int, int]] = []
        for token, frame in zip(hyp.tokens, hyp.frames, strict=True):
            if not groups or self.tokenizer.is_word_start(token):
                groups.append(([token], frame, frame))
            else:
                pieces, first, _ = groups[-1]
                groups[-1] = (pieces + [token], first, frame)
        words = []
        for pieces, first, last in groups:
            text = self.tokenizer.decode(pieces)
            if text:
                words.append(Word(text, round(offset + first * self.frame_seconds, 2),
                                  round(offset + (last + 1) * self.frame_seconds, 2)))
        return words


def _check_sample_rate(sample_rate: int) -> None:
    """ValueError unless ``sample_rate`` is an audio rate in Hz (the arrays')."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) \
            or not 0 < sample_rate < math.inf:
        raise ValueError(f"sample_rate: the arrays' rate in Hz, a positive number; got "
                         f"{sample_rate!r}")
    if sample_rate < MIN_SAMPLE_RATE:  # 16 (kHz) made 1000 times the samples, and words
        raise ValueError(f"sample_rate: {sample_rate!r} Hz is below any audio rate (it is "
                         f"in Hz: {SAMPLE_RATE}, not {SAMPLE_RATE // 1000})")


# one recording (or one thing that is not a recording: it is named as such), not a sequence
# of characters, bytes, lines of an open file or samples
_SINGLE = (str | bytes | os.PathLike | AudioSlice | np.ndarray | np.generic | torch.Tensor
           | io.IOBase)


def _items(inputs: Iterable[AudioInput] | AudioInput) -> Iterable[AudioInput]:
    """``inputs`` as an iterable of inputs: a single one as a list of one; any other
    iterable is a sequence of inputs (a generator too, drawn as it is iterated)."""
    if isinstance(inputs, _SINGLE):
        return [inputs]
    if not isinstance(inputs, Iterable):  # None, a number
        raise ValueError(f"inputs: a path or array, or a list of them; got {inputs!r}")
    return inputs


def input_name(item: AudioInput, number: int) -> str:
    """What messages call an input: its path (or part of a file), or ``input N`` for an
    array, N its place among the inputs given from 0."""
    if isinstance(item, str | os.PathLike):
        return os.fspath(item)
    if isinstance(item, AudioSlice):
        return str(item)
    return f"input {number}"


def header_length(item: AudioInput) -> float | None:
    """A file's (or a part of one's) length in seconds from its header; None for an array,
    or where the header cannot be read (reading the samples says why)."""
    if not isinstance(item, str | os.PathLike | AudioSlice):
        return None
    try:
        with read_again_later():
            return audio_duration(item)
    except AudioError:
        return None


@contextlib.contextmanager
def read_again_later() -> Iterator[None]:
    """A block that reads inputs that are decoded later (their headers, the speech a
    speaker is learnt from), without the AudioWarnings the decoding gives of them: a file
    cut short was named twice or three times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioWarning)
        yield


def _decoded_line(name: str, seconds: float, length: float | None) -> str:
    """The progress line of an input decoded up to ``seconds`` (of ``length``, if known)."""
    of = "" if length is None else f" of {clock(length)}"
    return f"{name}: {clock(seconds)}{of} decoded"


def clock(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour (whole seconds, rounded down)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, whole = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{whole:02d}" if hours else f"{minutes}:{whole:02d}"


def without_overlaps(words: list[Word]) -> list[Word]:
    """``words`` in order with times that never overlap or go back. Where overlapping
    windows join, a word kept from one window (its centre is before the join) may end after
    the next window's first word starts, or start after it: the later start cuts the
    earlier word short, or the earlier word's end moves the later start."""
    out: list[Word] = []
    for word in words:
        if out and word.start < out[-1].end:
            last = out[-1]
            if word.start > last.start:
                out[-1] = Word(last.word, last.start, word.start)
            else:
                start = last.end
                word = Word(word.word, start, max(word.end, start))
        out.append(word)
    return out


GROUP_OVERHEAD_ROWS = 4.0


def batches_by_length(waves: Sequence[np.ndarray]) -> list[list[int]]:
    """The indices of ``waves`` in the batches of similar lengths that decode fastest
    (``length_groups``), shortest first."""
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    return [[order[i] for i in group] for group in length_groups([len(waves[i]) for i in order])]


def length_groups(lengths: Sequence[int]) -> list[range]:
    """Ascending lengths -> the split into consecutive groups that decode fastest, if a
    batch of B inputs padded to length T costs ``(B + GROUP_OVERHEAD_ROWS) * T``.

    One batch of mixed lengths spends much of its time on padding, and batches of one
    on the per-step overhead. The bundled model's default decoding, 2 CPU threads: in
    batches of 1, 2, 4, 8 and 16, 20 s windows took 564, 446, 394, 342 and 334 ms each
    (about one row of overhead per step); the first 300 unseen-voice test utterances in
    their manifest order, 160 s per batch, took 22.1 s in one padded batch each and
    18.1, 17.8 and 18.3 s split with 1, 4 and 16 rows of overhead (the encoder and
    features add their own per-batch cost). Dynamic programming over the split points.
    """
    count = len(lengths)
    best = np.zeros(count + 1)  # best[j]: the least cost of the first j lengths
    split = np.zeros(count + 1, dtype=np.int64)  # where the last group of that split starts
    for j in range(1, count + 1):
        starts = np.arange(j)
        costs = best[:j] + (j - starts + GROUP_OVERHEAD_ROWS) * lengths[j - 1]
        split[j] = np.argmin(costs)
        best[j] = costs[split[j]]
    groups = []
    j = count
    while j > 0:
        groups.append(range(int(split[j]), j))
        j = int(split[j])
    return groups[::-1]


def load_model(
    path_or_name: str | Path | None = None,
    options: DecodingOptions | None = None,
    device: str = "cpu",
    *,
    beam_size: int | None = None,
    beam_threshold: float | None = None,
    lm: str | Path | WordPieceLM | None = "auto",
    lm_weight: float | None = None,
    length_bonus: float | None = None,
    oov_penalty: float | None = None,
    head: str | None = None,
    adapt_steps: int | None = None,
    self_train_steps: int | None = None,
    confident_entropy: float | None = None,
    backward_share: float | None = None,
    ngram_share: float | None = None,
    speaker_adaptation: bool | None = None,
    int8: bool = False,
) -> Transcriber:
    """Load a model folder (or the bundled default with None / "default").

    ``lm`` is an LM folder (``conformer-asr train-lm``), a loaded LM, None for no
    LM, or "auto": the model folder's own ``lm/`` if it has one (the bundled model
    does). With an LM folder, the search takes the model folder's recommended options
    (``pack``'s) if it has them, unless ``options`` is given: naming the folder's own LM
    used to decode with beam 1. A loaded LM brings no lexicon for their OOV penalty, and
    gets ``DecodingOptions()``'s.
    An LM folder's lexicon comes with it (for ``oov_penalty``). ``beam_size``,
    ``beam_threshold``, ``lm_weight``, ``length_bonus``, ``oov_penalty``, ``head``,
    ``adapt_steps``, ``self_train_steps``, ``confident_entropy``, ``backward_share`` and
    ``ngram_share`` override single fields, e.g.
    ``load_model("exp/model", beam_size=8, lm="exp/lm", lm_weight=0.3)``,
    ``head="ctc"`` to decode a hybrid model with its CTC head, or ``adapt_steps=0`` to
    decode without the test-time adaptation the bundled model does (``inference.adapt``),
    or ``self_train_steps=0`` to decode each utterance once, without the bundled model's
    self-training (about half the time, for 0.3 points of WER on unseen voices; both off,
    a third of the time, for 1.4 points), or ``confident_entropy=0`` to adapt every
    utterance, also those the model is sure of unadapted (``DecodingOptions``). With its
    own LM (``lm="auto"``), a model folder's backward LM (``backward_lm/``, ``pack
    --backward-lm``) rescores each search's best hypotheses (``decoding.rescore``);
    ``backward_share=0`` turns that off. A word n-gram LM of the folder's ``ngram.txt.xz``
    (``pack --ngram-text``; ``decoding.ngram``) rescores them too, unless
    ``ngram_share=0``. ``speaker_adaptation=False`` makes ``transcribe`` decode each
    input utterance by utterance, without first learning its speaker as the bundled model
    does (``DecodingOptions``, ``inference.speaker_adapt``).
    On the CPU the LMs always multiply in int8 with a scale per row
    (``lm_dir.lm_for_decoding``; a loaded LM passed in is copied, not changed): twice as
    fast as float32 at the same WER, and a transcript reads the same whichever files
    share its batch. ``int8`` runs the model's Linear and LSTM layers in int8 too, and its
    subsampling convolutions in bfloat16 on CPUs with bfloat16 kernels (``quantize_int8``):
    faster on the CPU, at a small cost in accuracy; CPU only. An int8 model adapts as the
    float32 one does (gradients pass through its int8 layers).
    """
    # named here, not as an AttributeError or TypeError deep inside (lm=123, options={...})
    if not isinstance(lm, str | os.PathLike | WordPieceLM | None):
        raise ValueError(f"lm: an LM folder, a loaded WordPieceLM, None or 'auto'; got {lm!r}")
    if isinstance(lm, str) and lm == "none":  # the command line's word for it
        raise ValueError("lm: 'none' is no folder; for no LM, give lm=None")
    if not isinstance(options, DecodingOptions | None):
        raise ValueError(f"options: a DecodingOptions or None; got {options!r}")
    if not isinstance(int8, bool):
        raise ValueError(f"int8: True or False; got {int8!r}")
    if int8:
        check_int8_device(device)
    check_device(device)  # torch's own error for a GPU this machine lacks is a bare assert
    directory = resolve_model_dir(path_or_name)
    model, tokenizer, config = load_model_dir(directory)
    if int8:
        model = quantize_int8(model)
    backward_lm = ngram_file = None
    if isinstance(lm, str) and lm == "auto":
        lm = bundled_lm_dir(directory)
        if lm is not None:
            backward_lm = bundled_lm_dir(directory, BACKWARD_LM_SUBDIR)
            ngram_file = bundled_ngram(directory)
    if isinstance(lm, str | os.PathLike) and options is None:
        options = config.decoding
    overrides = {"beam_size": beam_size, "beam_threshold": beam_threshold,
                 "lm_weight": lm_weight, "length_bonus": length_bonus,
                 "oov_penalty": oov_penalty, "head": head,
                 "adapt_steps": adapt_steps, "self_train_steps": self_train_steps,
                 "confident_entropy": confident_entropy,
                 "backward_share": backward_share, "ngram_share": ngram_share,
                 "speaker_adaptation": speaker_adaptation}
    options = dataclasses.replace(options or DecodingOptions(),
                                  **{k: v for k, v in overrides.items() if v is not None})
    lexicon = None
    if isinstance(lm, str | os.PathLike):
        lexicon = load_lexicon_for(lm, tokenizer)
        lm = load_lm_for(lm, tokenizer)
    if lm is None and lm_weight is not None:
        raise ValueError("lm_weight: there is no LM to weigh (lm=None, --lm none, or a model "
                         "folder without one)")
    if backward_lm is None and backward_share:
        raise ValueError("backward_share: there is no backward LM (only a model folder's own, "
                         "with its own LM, rescores: pack --backward-lm)")
    if ngram_file is None and ngram_share:
        raise ValueError("ngram_share: there is no n-gram LM (only a model folder's own, with "
                         "its own LM, rescores: pack --ngram-text)")
    if backward_lm is not None:
        backward_lm = load_lm_for(backward_lm, tokenizer)
    return Transcriber(model.to(device), tokenizer, options, lm=lm, lexicon=lexicon,
                       backward_lm=backward_lm,
                       ngram=(load_ngram(ngram_file, options.ngram_order)
                              if ngram_file and options.ngram_share else None))
