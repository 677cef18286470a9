"""Subtitles from a transcript's word timings: SubRip (``.srt``) and WebVTT (``.vtt``).

Words are grouped into cues in order. A cue ends before a word that would give it more
than ``MAX_LINES`` lines of ``MAX_LINE_CHARS`` characters (the line length broadcasters'
subtitle guidelines use), make it last longer than ``MAX_CUE_SECONDS``, or follow a pause
of ``PAUSE_SECONDS`` or more. A cue is shown from its first word's start to its last
word's end, held for at least ``MIN_CUE_SECONDS`` where the next cue and the end of the
audio leave room: a short word alone would otherwise flash by.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from .transcriber import Transcript, Word

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 7.0
PAUSE_SECONDS = 0.3  # longer than the gaps between the words of a phrase (CTC frames: 0-0.24 s)
MIN_CUE_SECONDS = 1.0


@dataclass(frozen=True)
class Cue:
    """One subtitle: shown from ``start`` to ``end`` seconds, ``lines`` of text."""

    start: float
    end: float
    lines: tuple[str, ...]


def cues(transcript: Transcript) -> list[Cue]:
    """The transcript's words grouped into cues (module docstring), in order."""
    groups: list[list[Word]] = []
    for word in transcript.words:
        if groups and _fits(groups[-1], word):
            groups[-1].append(word)
        else:
            groups.append([word])
    if not groups:
        return []
    starts = [group[0].start for group in groups[1:]] + [transcript.duration]
    return [Cue(group[0].start,
                max(group[-1].end, min(group[0].start + MIN_CUE_SECONDS, next_start)),
                tuple(_lines(group)))
            for group, next_start in zip(groups, starts, strict=True)]


def _fits(group: list[Word], word: Word) -> bool:
    # in whole milliseconds: 0.7 - 0.4 is 0.29999... in floating point, not a pause of 0.3 s
    return (_ms(word.start - group[-1].end) < _ms(PAUSE_SECONDS)
            and _ms(word.end - group[0].start) <= _ms(MAX_CUE_SECONDS)
            and len(_lines([*group, word])) <= MAX_LINES)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _lines(words: Sequence[Word]) -> list[str]:
    # A word longer than a line stays whole, on a line of its own.
    return textwrap.wrap(" ".join(w.word for w in words), MAX_LINE_CHARS,
                         break_long_words=False, break_on_hyphens=False)


def _timestamp(seconds: float, decimal_mark: str) -> str:
    """``HH:MM:SS`` + ``decimal_mark`` + milliseconds."""
    ms = round(seconds * 1000)
    return (f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
            f"{decimal_mark}{ms % 1000:03d}")


def to_srt(transcript: Transcript) -> str:
    """The transcript as a SubRip file: numbered cues, times as ``00:01:02,500``."""
    return _cue_blocks(transcript, decimal_mark=",", numbered=True)


def to_vtt(transcript: Transcript) -> str:
    """The transcript as a WebVTT file: a ``WEBVTT`` header, times as ``00:01:02.500``."""
    return "WEBVTT\n\n" + _cue_blocks(transcript, decimal_mark=".", numbered=False)


def _cue_blocks(transcript: Transcript, decimal_mark: str, numbered: bool) -> str:
    """Each cue as [number], ``start --> end``, its lines, then a blank line."""
    blocks = []
    for number, cue in enumerate(cues(transcript), start=1):
        times = f"{_timestamp(cue.start, decimal_mark)} --> {_timestamp(cue.end, decimal_mark)}"
        blocks.append("\n".join([str(number), times] if numbered else [times])
                      + "".join(f"\n{line}" for line in cue.lines) + "\n\n")
    return "".join(blocks)
