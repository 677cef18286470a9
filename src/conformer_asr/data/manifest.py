"""Manifests: Lhotse CutSets in memory, plain JSONL (or Lhotse cuts) on disk.

The plain format is one JSON object per line::

    {"id": "utt1", "audio": "wavs/utt1.wav", "text": "hello world", "speaker": "ann"}

``audio`` is relative to the manifest's folder or absolute. Other keys (``voice``,
``duration``, ``source``, ``licence``, ...) are kept in ``cut.custom`` and written back
by ``save_jsonl``; the speaker comes from ``speaker`` or else ``voice``.

Loading never crashes on bad data: each unusable line is skipped and counted in a
``DataIssues`` with a few examples, so one broken file cannot stop a long run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import soundfile as sf
from lhotse import AudioSource, CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.cut import Cut, MultiCut

from ..audio.io import SAMPLE_RATE
from ..files import read_text, replacing
from ..text.normalize import normalize_text
from .manifest_errors import ManifestError

PLAIN_KEYS = ("id", "audio", "text")


@dataclass
class DataIssues:
    """Counts of skipped utterances per problem kind, with up to 5 examples each (each
    example once: training meets the same bad file again every epoch)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: ClassVar[int] = 5

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._show(kind, [example])

    def merge(self, other: DataIssues) -> None:
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
            self._show(kind, other.examples.get(kind, []))

    def _show(self, kind: str, examples: list[str]) -> None:
        shown = self.examples.setdefault(kind, [])
        for example in examples:
            if len(shown) < self.max_examples and example not in shown:
                shown.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line per kind: ``missing audio: 3 (e.g. a.wav, b.wav)``."""
        return "\n".join(f"{kind}: {count} (e.g. {', '.join(self.examples[kind])})"
                         for kind, count in self.counts.items())


# --- reading ----------------------------------------------------------------------------


def _absolute(path: str | Path) -> Path:
    """Absolute and normalised (no ``..``) but, unlike ``resolve``, keeping symlinks."""
    return Path(os.path.abspath(path))


def first_record(lines: list[str]) -> dict[str, Any]:
    """The JSON object on a manifest's first non-blank line; {} where there is none."""
    first_line = next((line for line in lines if line.strip()), "")
    try:
        first = json.loads(first_line) if first_line else {}
    except json.JSONDecodeError:
        first = {}
    return first if isinstance(first, dict) else {}


def is_lhotse(first: dict[str, Any]) -> bool:
    """Lhotse cut manifests carry ``type`` (MonoCut, ...) and a ``recording`` or ``tracks``."""
    return "type" in first and ("recording" in first or "tracks" in first)


def load_cuts(path: str | Path, issues: DataIssues | None = None) -> CutSet:
    """Read a plain JSONL manifest or a Lhotse cuts manifest (``.jsonl`` or ``.jsonl.gz``).

    Returns an eager CutSet at 16 kHz (other rates get a resampling transform) with the
    text normalised by ``normalize_text``. Skipped and counted in ``issues``: malformed
    lines, duplicate ids (the first is kept), missing or unreadable audio, zero-length
    audio and empty text. Raises ManifestError only if ``path`` is missing or is
    neither format.
    """
    path = Path(path)
    issues = issues if issues is not None else DataIssues()
    if path.is_dir():
        raise ManifestError(f"{path}: a folder, not a manifest")
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest")
    lines = read_text(path).split("\n")
    first = first_record(lines)
    if is_lhotse(first):
        cuts = clean_cuts(CutSet.from_file(path), issues)
    elif not first or "audio" in first:  # an unparsable first line is counted, not fatal
        cuts = _read_plain(path, lines, issues)
    else:
        raise ManifestError(f"{path}: neither a plain manifest (no \"audio\" key on the "
                            "first line) nor a Lhotse cuts manifest")
    return CutSet.from_cuts(c if c.sampling_rate == SAMPLE_RATE else c.resample(SAMPLE_RATE)
                            for c in cuts)


def plain_records(lines: list[str]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, record) for each line of a plain manifest that is not blank: the
    line's JSON object if it has "id", "audio" and "text" strings, else None."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and all(isinstance(record.get(k), str) for k in PLAIN_KEYS):
            yield number, record
        else:
            yield number, None


def _read_plain(path: Path, lines: list[str], issues: DataIssues) -> list[Cut]:
    """One whole-file cut per usable line of ``path``; reads only audio headers (~80 us a
    file)."""
    root = _absolute(path.parent)
    seen: set[str] = set()
    cuts = []
    for number, record in plain_records(lines):
        if record is None:
            issues.add("malformed line", f"{path.name}:{number}")
            continue
        if record["id"] in seen:  # the first line with an id claims it, usable or not
            issues.add("duplicate id", record["id"])
            continue
        seen.add(record["id"])
        text = normalize_text(record["text"])
        if not text:
            issues.add("empty text", record["id"])
            continue
        audio = os.path.normpath(os.path.join(root, record["audio"]))
        header = _header(audio)
        if isinstance(header, str):
            issues.add(header, record["audio"])
            continue
        cuts.append(_whole_file_cut(record, text, audio, header))
    return cuts


class _Header(NamedTuple):
    rate: int
    frames: int
    channels: int


def _header(audio: str) -> _Header | str:
    """The file's header, or the issue kind that makes it unusable."""
    if not os.path.isfile(audio):
        return "missing audio"
    try:
        with sf.SoundFile(os.fsencode(audio)) as f:  # bytes: a name may not be UTF-8
            header = _Header(f.samplerate, f.frames, f.channels)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return "unreadable audio"
    return header if header.frames > 0 else "empty audio"


def _whole_file_cut(record: dict[str, Any], text: str, audio: str, header: _Header) -> Cut:
    """A cut over the whole file; keys other than id/audio/text go to ``cut.custom``."""
    cut_id = record["id"]
    extras = {key: value for key, value in record.items() if key not in PLAIN_KEYS}
    speaker = extras.get("speaker", extras.get("voice"))
    channels = list(range(header.channels))
    duration = header.frames / header.rate
    recording = Recording(
        id=cut_id, sources=[AudioSource(type="file", channels=channels, source=audio)],
        sampling_rate=header.rate, num_samples=header.frames, duration=duration,
    )
    channel = 0 if len(channels) == 1 else channels
    supervision = SupervisionSegment(
        id=cut_id, recording_id=cut_id, start=0.0, duration=duration, channel=channel,
        text=text, speaker=None if speaker is None else str(speaker),
    )
    cut_type = MonoCut if len(channels) == 1 else MultiCut
    return cut_type(id=cut_id, start=0.0, duration=duration, channel=channel,
                    recording=recording, supervisions=[supervision], custom=extras or None)


def clean_cuts(cuts: Iterable[Cut], issues: DataIssues) -> CutSet:
    """Normalise the text of Lhotse cuts and drop (counting in ``issues``) duplicate ids,
    empty text, missing audio files and empty cuts. Audio headers are trusted: their
    metadata is already in the cuts."""
    return CutSet.from_cuts(_clean(cuts, issues))


def _clean(cuts: Iterable[Cut], issues: DataIssues) -> Iterator[Cut]:
    seen: set[str] = set()
    for cut in cuts:
        if cut.id in seen:
            issues.add("duplicate id", cut.id)
            continue
        text = normalize_text(" ".join(s.text or "" for s in cut.supervisions))
        if not text:
            issues.add("empty text", cut.id)
            continue
        missing = [s.source for r in _recordings(cut) for s in r.sources
                   if s.type == "file" and not os.path.isfile(s.source)]
        if missing:
            issues.add("missing audio", missing[0])
            continue
        if cut.num_samples == 0:
            issues.add("empty audio", cut.id)
            continue
        seen.add(cut.id)
        yield cut.map_supervisions(lambda s: s.transform_text(normalize_text))


def _recordings(cut: Cut) -> list[Recording]:
    if cut.has_recording:
        return [cut.recording]
    return [track.cut.recording for track in getattr(cut, "tracks", [])
            if track.cut.has_recording]


# --- writing ----------------------------------------------------------------------------


def has_plain_form(cut: Cut) -> bool:
    """True if ``cut`` is one whole audio file (what a plain JSONL line describes)."""
    recording = cut.recording if cut.has_recording else None
    return (recording is not None and len(recording.sources) == 1
            and recording.sources[0].type == "file" and cut.start == 0
            and abs(cut.duration - recording.duration) <= 1e-3)


def _plain_record(cut: Cut, root: Path) -> dict[str, Any]:
    """A whole-file cut -> its plain JSONL record (ManifestError if it is not one)."""
    if not has_plain_form(cut):
        raise ManifestError(f"cut {cut.id}: not a whole single audio file, so it has no "
                            "plain JSONL form (save it with CutSet.to_file instead)")
    audio = _absolute(cut.recording.sources[0].source)
    record: dict[str, Any] = {
        "id": cut.id,
        "audio": str(audio.relative_to(root)) if audio.is_relative_to(root) else str(audio),
        "text": " ".join(s.text or "" for s in cut.supervisions).strip(),
    }
    for key, value in (cut.custom or {}).items():
        record.setdefault(key, value)
    speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
    if speaker and "speaker" not in record and "voice" not in record:
        record["speaker"] = speaker
    return record


def save_jsonl(cuts: Iterable[Cut], path: str | Path) -> None:
    """Write ``cuts`` in the plain format; audio paths under the manifest's folder are
    written relative to it, others absolute. Atomic: a temp file replaces ``path``."""
    path = Path(path)
    root = _absolute(path.parent)
    root.mkdir(parents=True, exist_ok=True)
    with replacing(root / path.name) as temp, temp.open("w", encoding="utf-8") as f:
        for cut in cuts:
            f.write(json.dumps(_plain_record(cut, root), ensure_ascii=False) + "\n")
