"""Score a model on a JSONL manifest: WER with its parts, per speaker, and real-time factor."""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lhotse.augmentation import Resample
from lhotse.cut import Cut
from lhotse.cut.data import DataCut
from lhotse.serialization import deserialize_item as deserialize_cut

from ..audio.io import AudioError, AudioSlice
from ..data.manifest import first_record, has_plain_form, is_lhotse, plain_records
from ..data.manifest_errors import ReferenceWarning
from ..files import check_writable, read_text, write_atomically
from ..scoring import WordErrors, word_errors
from ..text.normalize import normalize_text
from .speaker_adapt import iter_transcripts_by_speaker
from .transcriber import Progress, Transcriber

SHOWN_FAILURES = 10  # in the text report; --json gives every one
_DIGIT = re.compile(r"[0-9]")


@dataclass
class Utterance:
    id: str
    audio: Path | AudioSlice
    text: str
    speaker: str
    relative: bool = False  # the manifest gave the audio path relative to its folder


@dataclass
class EvalReport:
    total: WordErrors = field(default_factory=WordErrors)
    by_speaker: dict[str, WordErrors] = field(default_factory=dict)
    utterances: int = 0
    failed: list[str] = field(default_factory=list)  # one-line reasons
    # {"id", "text"} per utterance, and "error" where its audio could not be read
    hypotheses: list[dict] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    # an audio file missing where the manifest gave its path relative to its own folder
    relative_path_missing: bool = False

    @property
    def rtf(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def to_dict(self) -> dict:
        def row(e: WordErrors) -> dict:
            return {"wer": round(e.wer, 2), "substitutions": e.substitutions,
                    "deletions": e.deletions, "insertions": e.insertions, "words": e.words}

        return {**row(self.total), "utterances": self.utterances, "failed": len(self.failed),
                "rtf": round(self.rtf, 4), "audio_seconds": round(self.audio_seconds, 1),
                "by_speaker": {k: row(v) for k, v in sorted(self.by_speaker.items())}}

    def format(self) -> str:
        t = self.total
        lines = [
            f"WER {t.wer:.2f}% ({t.substitutions} sub, {t.deletions} del, {t.insertions} ins, "
            f"{t.words} words, {self.utterances} utterances)",
            f"RTF {self.rtf:.4f} ({self.wall_seconds:.1f} s for {self.audio_seconds:.1f} s "
            "of audio)",
        ]
        if len(self.by_speaker) > 1:
            lines.append("per speaker/voice:")
            width = max(len(k) for k in self.by_speaker)
            for name, e in sorted(self.by_speaker.items(), key=lambda kv: -kv[1].wer):
                lines.append(f"  {name:<{width}}  WER {e.wer:6.2f}%  ({e.words} words)")
        if self.failed:
            lines.append(f"{len(self.failed)} utterance{'s' * (len(self.failed) != 1)} failed "
                         "(scored as empty):")
            lines.extend(f"  {reason}" for reason in self.failed[:SHOWN_FAILURES])
            if len(self.failed) > SHOWN_FAILURES:
                lines.append(f"  ... and {len(self.failed) - SHOWN_FAILURES} more (--json "
                             "lists them all)")
            if self.relative_path_missing:
                lines.append("(a manifest's relative audio paths are read from its own folder)")
        return "\n".join(lines)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Lines ``{"id", "audio", "text"}`` (+ optional "speaker"/"voice"), each id once; audio
    relative to the manifest's folder or absolute. A Lhotse cuts manifest (``.jsonl`` or
    ``.jsonl.gz``, as ``train`` reads) works too where each cut lies in one audio file
    (the whole of it, or a part: an ``AudioSlice``); its paths are read as Lhotse reads
    them, relative to the current folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a manifest")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    lines = read_text(path).split("\n")
    read = _cut_utterances if is_lhotse(first_record(lines)) else _plain_utterances
    rows = []
    with_digits = []  # "2 dogs" was scored as "dogs", silently
    line_of: dict[str, int] = {}  # an id given twice was scored twice, its hypotheses ambiguous
    for number, utterance, written in read(path, lines):
        if utterance.id in line_of:
            raise ValueError(f"{path}:{number}: id {utterance.id!r} again (first on line "
                             f"{line_of[utterance.id]}): ids must be unique")
        line_of[utterance.id] = number
        if _DIGIT.search(written):
            with_digits.append(utterance.id)
        rows.append(utterance)
    if not rows:
        raise ValueError(f"{path}: no utterances in the manifest")
    if with_digits:
        count = len(with_digits)
        warnings.warn(f"{path}: {count} reference{'s' * (count != 1)} with digits, which "
                      f"scoring leaves out (e.g. {with_digits[0]}); the model writes numbers "
                      "as words: write them so", ReferenceWarning, stacklevel=2)
    return rows


def _plain_utterances(path: Path, lines: list[str]) -> Iterator[tuple[int, Utterance, str]]:
    """(line number, utterance, its text as written) for each line of a plain manifest."""
    for number, item in plain_records(lines):
        if item is None:
            raise ValueError(f'{path}:{number}: not a manifest line (expected JSON with "id", '
                             f'"audio" and "text" strings)')
        if not item["audio"]:  # Path("") is ".", the manifest's folder
            raise ValueError(f'{path}:{number}: an empty "audio" (id {item["id"]!r})')
        audio = Path(item["audio"])
        yield number, Utterance(
            id=item["id"], audio=audio if audio.is_absolute() else path.parent / audio,
            text=normalize_text(item["text"]),
            speaker=_speaker(item), relative=not audio.is_absolute(),
        ), item["text"]


def _cut_utterances(path: Path, lines: list[str]) -> Iterator[tuple[int, Utterance, str]]:
    """(line number, utterance, its text as written) for each cut of a Lhotse cuts manifest
    (``lines`` are its text: a cut a line)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cut = deserialize_cut(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            cut = error
        if not isinstance(cut, Cut):
            raise ValueError(f"{path}:{number}: not a Lhotse cut, as the first line is")
        audio = _cut_audio(cut)
        if audio is None:
            raise ValueError(f"{path}:{number}: cut {cut.id!r} is not in one audio file (its "
                             "channels are in several, or it mixes cuts)")
        changes = [type(t).__name__ for t in cut.recording.transforms or []
                   if not isinstance(t, Resample)]  # the transcriber resamples anyway
        if changes:
            raise ValueError(f"{path}:{number}: cut {cut.id!r} changes its recording's audio "
                             f"({', '.join(changes)}), which evaluate does not do: it scores "
                             "audio as recorded")
        written = " ".join(s.text or "" for s in cut.supervisions)
        speaker = next((s.speaker for s in cut.supervisions if s.speaker), "")
        yield number, Utterance(id=cut.id, audio=audio, text=normalize_text(written),
                                speaker=str(speaker)), written


def _cut_audio(cut: Cut) -> Path | AudioSlice | None:
    """A cut's audio: its file, where it is the whole of one (all its channels), else the
    part of the file it is; None where it is not in one file."""
    sources = cut.recording.sources if isinstance(cut, DataCut) and cut.has_recording else []
    if len(sources) != 1 or sources[0].type != "file":
        return None
    source = sources[0]
    one_of_several = isinstance(cut.channel, int) and len(source.channels) > 1
    if one_of_several and cut.channel not in source.channels:
        return None
    if has_plain_form(cut) and not one_of_several:
        return Path(source.source)
    channel = source.channels.index(cut.channel) if one_of_several else None
    return AudioSlice(Path(source.source), cut.start, cut.duration, channel)


def _speaker(item: dict) -> str:
    """A line's "speaker" (or "voice"), "" where it has none; 0 is a speaker too."""
    speaker = item.get("speaker", item.get("voice"))
    return "" if speaker is None else str(speaker)


def check_output(output: str | Path, manifest: str | Path) -> None:
    """Raise unless the hypotheses can be written to ``output`` (a missing or read-only
    folder, say, or ``manifest`` itself, whose references they replaced): found out before
    decoding, not after."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"{output}: a folder, not a file to write the hypotheses to")
    if path.exists() and Path(manifest).exists() and path.samefile(manifest):
        raise ValueError(f"{output}: the manifest being scored; write the hypotheses to "
                         "another file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{output}: no folder {path.parent} to write it in")
    check_writable(path)


def write_hypotheses(report: EvalReport, output: str | Path) -> None:
    """``report``'s hypotheses as ``{"id", "text"}`` lines (with ``"error"`` for audio that
    could not be read), written atomically."""
    write_atomically(output, "".join(json.dumps(h) + "\n" for h in report.hypotheses))


def evaluate(
    transcriber: Transcriber, manifest: str | Path, output: str | Path | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Transcribe ``manifest``'s utterances and score them; with ``output``, write the
    hypotheses there too (checked before decoding). Where ``transcriber.options`` ask for
    speaker adaptation (the bundled model's do), each speaker's (or voice's) utterances are
    transcribed by a copy of ``transcriber`` adapted to them all
    (``inference.speaker_adapt``); an utterance without a speaker, to it alone.
    ``progress``: told where the work stands, as each utterance is scored ("12 of 40
    utterances scored") and as the transcriber goes ("paul: learning the voice from 2:40
    of speech, round 1 of 2 (12 of 40 scored)").
    """
    utterances = read_manifest(manifest)
    if output is not None:
        check_output(output, manifest)
    report = EvalReport()
    start = time.perf_counter()
    audio = [u.audio for u in utterances]

    def tally() -> str:  # "12 of 40"
        return f"{report.utterances} of {len(utterances)}"
    going = None if progress is None else (lambda line: progress(f"{line} ({tally()} scored)"))
    if not transcriber.options.speaker_adaptation:
        results = transcriber.iter_transcripts(audio, progress=going)
    else:
        speakers = [u.speaker or ("", i) for i, u in enumerate(utterances)]
        results = iter_transcripts_by_speaker(transcriber, audio, speakers, progress=going)
    for utt, (_, result) in zip(utterances, results, strict=True):
        if isinstance(result, AudioError):
            report.failed.append(str(result))
            if utt.relative and str(result).endswith(": no such file"):
                report.relative_path_missing = True
            text = ""
        else:
            text = result.text
            report.audio_seconds += result.duration
        errors = word_errors(utt.text, text)
        report.total += errors
        if utt.speaker:  # manifests without speakers get no breakdown
            speaker = report.by_speaker.get(utt.speaker, WordErrors())
            report.by_speaker[utt.speaker] = speaker + errors
        report.utterances += 1
        hypothesis = {"id": utt.id, "text": text}
        if isinstance(result, AudioError):  # told apart from an empty transcript
            hypothesis["error"] = str(result)
        report.hypotheses.append(hypothesis)
        if progress is not None:
            progress(f"{tally()} utterances scored")
    report.wall_seconds = time.perf_counter() - start
    if output is not None:
        write_hypotheses(report, output)
    return report
