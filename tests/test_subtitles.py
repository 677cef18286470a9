"""SubRip and WebVTT output, read back by the `srt` and `webvtt-py` libraries."""

import itertools
import random
import subprocess
import sys
from pathlib import Path

import pytest
import srt
import webvtt

from conformer_asr.inference.subtitles import (
    MAX_CUE_SECONDS,
    MAX_LINE_CHARS,
    MAX_LINES,
    MIN_CUE_SECONDS,
    PAUSE_SECONDS,
    cues,
    to_srt,
    to_vtt,
)
from conformer_asr.inference.transcriber import Transcript, Word

EXAMPLES = Path(__file__).parents[1] / "examples"


def _transcript(words: list[Word], duration: float | None = None) -> Transcript:
    end = duration if duration is not None else (words[-1].end + 1 if words else 0.0)
    return Transcript(" ".join(w.word for w in words), end, words)


def _speech(seed: int, count: int) -> Transcript:
    """Random words of 1-14 letters, 0.05-0.6 s long, after gaps of 0-1.5 s."""
    rng = random.Random(seed)
    words, t = [], rng.uniform(0, 2)
    for _ in range(count):
        length = rng.uniform(0.05, 0.6)
        words.append(Word("".join(rng.choices("abcdefgh", k=rng.randint(1, 14))),
                          round(t, 2), round(t + length, 2)))
        t += length + rng.choice([0.0, 0.08, 0.16, rng.uniform(0, 1.5)])
    return _transcript(words)


@pytest.mark.parametrize("seed", range(5))
def test_srt_and_vtt_read_back_as_the_cues(seed):
    transcript = _speech(seed, 300)
    expected = cues(transcript)
    parsed_srt = list(srt.parse(to_srt(transcript)))
    parsed_vtt = list(webvtt.from_string(to_vtt(transcript)))
    assert len(parsed_srt) == len(parsed_vtt) == len(expected) > 20
    for number, (cue, sub, caption) in enumerate(
            zip(expected, parsed_srt, parsed_vtt, strict=True), start=1):
        assert sub.index == number
        assert sub.start.total_seconds() == pytest.approx(cue.start, abs=5e-4)
        assert sub.end.total_seconds() == pytest.approx(cue.end, abs=5e-4)
        assert caption.start_time.in_milliseconds() == round(cue.start * 1000)
        assert caption.end_time.in_milliseconds() == round(cue.end * 1000)
        assert sub.content.split("\n") == caption.lines == list(cue.lines)


@pytest.mark.parametrize("seed", range(5))
def test_cues_keep_every_word_in_order_within_the_limits(seed):
    transcript = _speech(seed, 300)
    found = cues(transcript)
    assert " ".join(" ".join(c.lines) for c in found) == transcript.text
    position = 0
    for cue, next_cue in zip(found, [*found[1:], None], strict=True):
        count = len(" ".join(cue.lines).split())
        group = transcript.words[position:position + count]
        position += count
        assert cue.start == group[0].start
        assert group[-1].end <= cue.end <= max(
            group[-1].end, group[0].start + MIN_CUE_SECONDS)
        assert all(_ms(b.start - a.end) < _ms(PAUSE_SECONDS)
                   for a, b in itertools.pairwise(group))
        if len(group) > 1:
            assert len(cue.lines) <= MAX_LINES
            assert all(len(line) <= MAX_LINE_CHARS for line in cue.lines)
            assert _ms(group[-1].end - group[0].start) <= _ms(MAX_CUE_SECONDS)
        if next_cue is None:
            continue
        assert cue.end <= max(next_cue.start, group[-1].end)
        first = transcript.words[position]  # did not fit in this cue
        assert (_ms(first.start - group[-1].end) >= _ms(PAUSE_SECONDS)
                or _ms(first.end - group[0].start) > _ms(MAX_CUE_SECONDS)
                or len(_wrapped(" ".join([*(w.word for w in group), first.word])))
                > MAX_LINES)


def _ms(seconds: float) -> int:
    """Times to the millisecond: word times are decimals that floats hold inexactly."""
    return round(seconds * 1000)


def test_a_pause_of_exactly_the_limit_starts_a_cue():
    """0.7 - 0.4 is 0.29999... in floating point: that pause of 0.3 s kept one cue."""
    words = [Word("one", 0.1, 0.4), Word("two", 0.7, 0.9), Word("three", 1.1, 1.3)]
    assert [c.lines for c in cues(_transcript(words))] == [("one",), ("two three",)]


def _wrapped(text: str) -> list[str]:
    """Greedy wrapping written out, against textwrap in the module."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= MAX_LINE_CHARS:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def test_a_short_cue_is_held_but_not_over_the_next_or_the_end():
    words = [Word("a", 0.0, 0.1), Word("b", 5.0, 5.1), Word("c", 5.8, 5.9)]
    found = cues(_transcript(words, duration=6.2))
    assert [(c.start, c.end) for c in found] == [(0.0, MIN_CUE_SECONDS), (5.0, 5.8), (5.8, 6.2)]


def test_timestamps_past_an_hour_and_empty_transcripts():
    transcript = _transcript([Word("late", 3725.5, 3727.25)])
    assert to_srt(transcript) == "1\n01:02:05,500 --> 01:02:07,250\nlate\n\n"
    assert to_vtt(transcript) == "WEBVTT\n\n01:02:05.500 --> 01:02:07.250\nlate\n\n"
    silent = _transcript([], duration=3.0)
    assert to_srt(silent) == ""
    assert list(webvtt.from_string(to_vtt(silent))) == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformer_asr.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_transcribe_writes_subtitles_for_each_file(tmp_path):
    audio = [str(EXAMPLES / "weather.wav"), str(EXAMPLES / "station.flac"),
             str(tmp_path / "missing.wav")]
    plain = _cli("transcribe", *audio[:2], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    texts = dict(line.split("\t") for line in plain.stdout.splitlines())

    proc = _cli("transcribe", *audio, "--format", "srt", "--out-dir", "subs", cwd=tmp_path)
    assert proc.returncode == 1  # the missing file
    assert proc.stderr.strip().splitlines() == [f"error: {audio[2]}: no such file"]
    assert sorted(p.name for p in (tmp_path / "subs").iterdir()) == ["station.srt",
                                                                     "weather.srt"]
    for path in audio[:2]:
        subs = list(srt.parse((tmp_path / "subs" / f"{Path(path).stem}.srt").read_text()))
        assert " ".join(s.content.replace("\n", " ") for s in subs) == texts[path]

    alone = _cli("transcribe", audio[0], "--format", "vtt", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert " ".join(c.text.replace("\n", " ") for c in webvtt.from_string(alone.stdout)) == \
        texts[audio[0]]


def test_transcribe_refuses_outputs_that_would_mix_or_collide(tmp_path):
    weather = str(EXAMPLES / "weather.wav")
    mixed = _cli("transcribe", weather, weather, "--format", "vtt", cwd=tmp_path)
    assert (mixed.returncode, mixed.stdout) == (2, "")
    assert mixed.stderr == "error: --format vtt: give --out-dir for more than one file\n"
    words = _cli("transcribe", weather, "--words", cwd=tmp_path)
    assert (words.returncode, words.stdout) == (2, "")
    assert words.stderr == ("error: --words goes with --format json (srt and vtt are timed "
                            "anyway)\n")
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / "weather.flac"
    copy.write_bytes(b"")
    clash = _cli("transcribe", weather, str(copy), "--out-dir", "out", cwd=tmp_path)
    assert clash.returncode == 2
    assert clash.stderr.strip() == (f"error: --out-dir: {weather} and {copy} would both be "
                                    "written to out/weather.txt")
    assert not (tmp_path / "out").exists()
    # one file named two ways is no clash (it was refused, though the same name twice was not)
    (tmp_path / "weather.wav").write_bytes((EXAMPLES / "weather.wav").read_bytes())
    twice = _cli("transcribe", "weather.wav", "./weather.wav", "--out-dir", "out", cwd=tmp_path)
    assert (twice.returncode, twice.stderr) == (0, "")
    assert "sunny" in (tmp_path / "out" / "weather.txt").read_text()
