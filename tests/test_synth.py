"""The synthetic corpus builder: text filtering, voices, the plan, and tiny real builds."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_asr.data.synth import SynthError, add_synth_arguments, build_corpus, run_synth
from conformer_asr.data.synth.build import plan_corpus
from conformer_asr.data.synth.engines import EngineError, Synthesiser
from conformer_asr.data.synth.store import RECORD_KEYS, SPLITS, read_records
from conformer_asr.data.synth.text import (
    SOURCES,
    Sentence,
    SentenceFilter,
    clean_for_speech,
    load_sentences,
    read_fortunes,
    read_wordnet,
)
from conformer_asr.data.synth.voices import (
    DEV_UNSEEN_VOICES,
    ESPEAK_VARIANTS,
    UNSEEN_ACCENTS,
    Voice,
    all_voices,
    missing_engines,
)
from conformer_asr.data.synth.worker import PEAK, condition, trim_silence

MISSING_ENGINES = missing_engines()
MISSING_SOURCES = [f"{s.name} (apt-get install {s.package})" for s in SOURCES.values()
                   if not s.available]
needs_engines = pytest.mark.skipif(
    bool(MISSING_ENGINES), reason=f"TTS engines missing: {MISSING_ENGINES}")
needs_sources = pytest.mark.skipif(
    bool(MISSING_SOURCES), reason=f"text sources missing: {MISSING_SOURCES}")

# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "spoken"), [
    ('He said "hello" -- then left', "He said hello, then left."),
    ("a well-known  fact;", "a well known fact."),
    ("Is it late?", "Is it late?"),
    ("It costs 5 dollars.", None),
    ("a fact (usually)", None),
    ("caf\u00e9 au lait", None),
    ("   ", None),
])
def test_clean_for_speech(raw: str, spoken: str | None) -> None:
    assert clean_for_speech(raw) == spoken


@pytest.fixture
def accept() -> SentenceFilter:
    words = "the cat sat on a mat i it's nasa mr smith went home x marks spot q what is"
    return SentenceFilter(words.split())


def test_filter_normalises_and_keeps_provenance(accept: SentenceFilter) -> None:
    sentence = accept("The cat sat on the mat, it's home!", "wordnet/example", "WordNet-3.0")
    assert sentence == Sentence("The cat sat on the mat, it's home!",
                                "the cat sat on the mat it's home", "wordnet/example",
                                "WordNet-3.0")


@pytest.mark.parametrize("raw", [
    "The cat",  # too short
    " ".join(["the cat sat"] * 9),  # 27 words: too long
    "The dog sat on the mat",  # "dog" is not in the vocabulary
    "The NASA cat sat",  # acronym: would be spelled
    "Mr. Smith went home",  # abbreviation: would be expanded
    "X marks the spot",  # a stray letter
    "Q: what is it",  # speaker label
    "The cat sat on 3 mats",  # digit
])
def test_filter_rejects(accept: SentenceFilter, raw: str) -> None:
    assert accept(raw, "test", "none") is None


def test_read_wordnet(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided to you\n"
        '00001740 03 n 01 entity 0 000 | that which exists (living or not); a thing; '
        '"the entity spoke"; "it was there"  \n')
    for name in ("data.verb", "data.adj", "data.adv"):
        (tmp_path / name).write_text("")
    assert list(read_wordnet(tmp_path)) == [
        ("the entity spoke", "example"), ("it was there", "example"),
        ("that which exists", "gloss"), ("a thing", "gloss")]


def test_read_fortunes(tmp_path: Path) -> None:
    (tmp_path / "food").write_text("Eat well.  Live\nlong!\n\t\t-- Someone Famous\n%\n"
                                   "Second one.\n%\n")
    (tmp_path / "food.dat").write_bytes(b"\x00\x01")
    (tmp_path / "ascii-art").write_text("Not this one.\n")
    assert list(read_fortunes(tmp_path)) == [
        ("Eat well.", "food"), ("Live long!", "food"), ("Second one.", "food")]


@needs_sources
def test_sources_give_enough_sentences() -> None:
    sentences = load_sentences()
    assert len(sentences) > 100_000  # >= 50 hours at ~3 s each
    assert len({s.text for s in sentences}) == len(sentences)
    for s in sentences[::997]:
        assert 3 <= len(s.text.split()) <= 25
        assert set(s.text) <= set("abcdefghijklmnopqrstuvwxyz' ")
        assert s.source.split("/")[0] in SOURCES and s.licence


# --- voices and the plan ------------------------------------------------------------------


def test_voice_inventory() -> None:
    voices = all_voices()
    ids = [v.id for v in voices]
    assert len(voices) >= 30 and len(set(ids)) == len(ids)
    assert {"flite-slt", "festival-kal", "espeak-en-gb-scotland+m2-p50-s145"} <= set(ids)
    assert "flite-awb_time" not in ids
    unseen = [v for v in voices if v.unseen]
    assert 0.15 <= len(unseen) / len(voices) <= 0.25
    assert {v.engine for v in unseen} == {"flite", "festival", "espeak"}
    assert len({v.name.split("+")[0] for v in unseen if v.engine == "espeak"}) >= 3


def test_dev_unseen_voices_lie_outside_the_inventory() -> None:
    ids = [voice.id for voice in DEV_UNSEEN_VOICES]
    assert len(set(ids)) == len(ids) and not set(ids) & {v.id for v in all_voices()}
    trained_accents = {v.name.split("+")[0] for v in all_voices() if v.engine == "espeak"
                       and not v.unseen}
    for voice in DEV_UNSEEN_VOICES:
        if voice.engine == "espeak":
            accent, variant = voice.name.split("+")
            assert accent in trained_accents and accent not in UNSEEN_ACCENTS
            assert variant not in ESPEAK_VARIANTS
        else:  # a training voice's own synthesiser at another pitch and rate
            assert voice.engine == "flite" and voice.f0_shift != 1 and voice.stretch != 1
    assert Voice("flite", "awb", f0_shift=1.15, stretch=0.9).id == "flite-awb-f1.15-d0.9"
    with pytest.raises(ValueError, match="only flite voices"):
        Voice("festival", "kal", f0_shift=1.1)


def _fake_sentences(count: int) -> list[Sentence]:
    return [Sentence(f"Sentence {i}.", f"sentence {i}", "test/x", "none") for i in range(count)]


def test_plan_is_deterministic_prefix_stable_and_disjoint() -> None:
    sentences, voices = _fake_sentences(500), all_voices()
    plan = plan_corpus(sentences, voices, 400, seed=7)
    assert plan == plan_corpus(sentences, voices, 400, seed=7)
    assert plan[:100] == plan_corpus(sentences, voices, 100, seed=7)
    assert plan != plan_corpus(sentences, voices, 400, seed=8)
    assert {u.split for u in plan[:3]} == {"dev", "test_seen", "test_unseen"}
    texts = {split: {u.sentence.text for u in plan if u.split == split} for split in SPLITS}
    assert sum(map(len, texts.values())) == 400  # no sentence said twice
    for u in plan:
        assert u.voice.unseen == (u.split == "test_unseen")
    train_voices = {u.voice.id for u in plan if u.split == "train"}
    assert len(train_voices) == sum(not v.unseen for v in voices)
    with pytest.raises(SynthError, match="only 500"):
        plan_corpus(sentences, voices, 501, seed=0)


# --- audio --------------------------------------------------------------------------------


def test_trim_and_condition() -> None:
    tone = 0.1 * np.sin(np.linspace(0, 2000, 11025)).astype(np.float32)  # 0.5 s
    silence = np.zeros(22050, np.float32)
    audio = condition(np.concatenate([silence, tone, silence]), 22050)
    assert 0.75 <= len(audio) / 16000 <= 0.85  # 0.5 s + 0.15 s either side
    assert abs(np.abs(audio).max() - PEAK) < 1e-3
    assert len(trim_silence(np.zeros(0, np.float32))) == 0
    with pytest.raises(EngineError):
        condition(silence, 22050)


@needs_engines
@pytest.mark.parametrize("voice_id", ["espeak-en-gb-x-rp+m5-p50-s165", "flite-kal",
                                      "flite-slt", "festival-ked", "festival-slt"])
def test_engines_speak(voice_id: str) -> None:
    voice = next(v for v in all_voices() if v.id == voice_id)
    synthesiser = Synthesiser()
    try:
        for _ in range(2):  # the second call reuses the loaded voice / running process
            samples, rate = synthesiser.synthesize(voice, "Speech synthesis works.")
            audio = condition(samples, rate)
            assert 0.8 < len(audio) / 16000 < 4
    finally:
        synthesiser.close()


def _pitch(audio: np.ndarray) -> float:
    """Median autocorrelation pitch (Hz) of the voiced 40 ms frames of 16 kHz audio."""
    frame, pitches = 640, []
    for start in range(0, len(audio) - frame, frame):
        chunk = audio[start:start + frame]
        correlation = np.correlate(chunk, chunk, "full")[frame - 1:]
        lag = 40 + int(np.argmax(correlation[40:267]))  # 400-60 Hz
        if correlation[lag] > 0.6 * correlation[0] > 0:  # periodic: voiced
            pitches.append(16000 / lag)
    return float(np.median(pitches))


@needs_engines
def test_flite_pitch_and_rate() -> None:
    """kal16 (a deterministic diphone voice) at 1.05 x its durations, then as itself again,
    as a fresh synthesiser says it; slt (clustergen) at 0.85 x its pitch."""
    text = "Speech synthesis works at another pitch and rate."
    synthesiser, fresh = Synthesiser(), Synthesiser()
    kal16 = condition(*synthesiser.synthesize(Voice("flite", "kal16"), text))
    slower = condition(*synthesiser.synthesize(Voice("flite", "kal16", stretch=1.05), text))
    assert len(slower) / len(kal16) == pytest.approx(1.05, abs=0.01)
    assert np.array_equal(condition(*synthesiser.synthesize(Voice("flite", "kal16"), text)),
                          kal16)
    assert np.array_equal(condition(*fresh.synthesize(Voice("flite", "kal16"), text)), kal16)
    slt = condition(*synthesiser.synthesize(Voice("flite", "slt"), text))
    lower = condition(*synthesiser.synthesize(Voice("flite", "slt", f0_shift=0.85), text))
    assert _pitch(lower) / _pitch(slt) == pytest.approx(0.85, abs=0.03)


@needs_engines
def test_dev_unseen_voices_speak() -> None:
    synthesiser = Synthesiser()
    for voice in DEV_UNSEEN_VOICES:
        audio = condition(*synthesiser.synthesize(voice, "Speech synthesis works."))
        assert 0.8 < len(audio) / 16000 < 4, voice.id


# --- tiny real builds ---------------------------------------------------------------------

UTTERANCES = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if MISSING_ENGINES or MISSING_SOURCES:
        pytest.skip(f"missing TTS engines or text sources: {MISSING_ENGINES} {MISSING_SOURCES}")
    out = tmp_path_factory.mktemp("synth")
    return out, build_corpus(out, UTTERANCES, jobs=2, seed=3, progress=False)


def _manifests(out: Path) -> dict[str, list[dict]]:
    return {split: read_records(out / f"{split}.jsonl") for split in SPLITS}


def test_build_layout_and_audio(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    manifests = _manifests(out)
    assert summary["utterances"] == UTTERANCES and summary["run"]["failed"] == 0
    assert all(manifests[split] for split in SPLITS)
    assert (out / "LICENSES.md").read_text().count("WordNet") >= 2
    assert json.loads((out / "summary.json").read_text()) == summary
    pool = set((out / "sentences.txt").read_text().splitlines())
    assert len(pool) > UTTERANCES
    for split, records in manifests.items():
        assert {record["text"] for record in records} <= pool
        assert summary["splits"][split]["utterances"] == len(records)
        for record in records:
            assert tuple(record) == RECORD_KEYS
            assert record["audio"] == f"audio/{split}/{record['id']}.flac"
            info = sf.info(out / record["audio"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert abs(info.duration - record["duration"]) < 1e-3
            assert record["engine"] == record["voice"].split("-")[0]


def test_build_splits_are_disjoint(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    manifests = _manifests(out)
    texts = [r["text"] for records in manifests.values() for r in records]
    assert len(set(texts)) == len(texts)
    unseen = set(summary["voices"]["unseen"])
    assert {r["voice"] for r in manifests["test_unseen"]} <= unseen
    for split in ("train", "dev", "test_seen"):
        assert not {r["voice"] for r in manifests[split]} & unseen


def test_rerun_skips_finished_work(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    mtimes = {path: path.stat().st_mtime_ns for path in out.glob("audio/*/*.flac")}
    summary = build_corpus(out, UTTERANCES, jobs=2, seed=3, progress=False)
    assert summary["run"]["skipped"] == UTTERANCES and summary["run"]["synthesised"] == 0
    assert {path: path.stat().st_mtime_ns for path in out.glob("audio/*/*.flac")} == mtimes
    with pytest.raises(SynthError, match="choose a new --out"):
        build_corpus(out, UTTERANCES, jobs=2, seed=4, progress=False)


def test_interrupted_build_recovers(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(corpus[0], out)
    train = out / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    for line in lines[-2:]:  # two utterances lost, one of them mid-way through its line
        (out / json.loads(line)["audio"]).unlink()
    train.write_text("".join(lines[:-2]) + lines[-2][:25])
    partial = out / "audio" / "train" / ".synth3-0000099.flac.1234abcd.tmp.flac"
    partial.write_bytes(b"fLaC")
    summary = build_corpus(out, UTTERANCES, jobs=2, seed=3, progress=False)
    assert summary["run"]["synthesised"] == 2 and summary["utterances"] == UTTERANCES
    assert not partial.exists()
    assert [json.loads(line) for line in train.read_text().splitlines()] == read_records(train)
    assert len(read_records(train)) == len(lines)


def test_hours_cap_stops_early(tmp_path: Path) -> None:
    if MISSING_ENGINES or MISSING_SOURCES:
        pytest.skip(f"missing TTS engines or text sources: {MISSING_ENGINES} {MISSING_SOURCES}")
    summary = build_corpus(tmp_path, 60, hours=10 / 3600, jobs=2, seed=5, progress=False,
                           batch_size=1)
    assert summary["hours"] * 3600 >= 10 and summary["utterances"] < 60


def test_a_disk_that_takes_no_more_audio_stops_the_build(tmp_path: Path) -> None:
    """Every FLAC write failed, each was counted as a failed utterance, and a build
    capped by --hours ran on through the whole sentence pool (a file-size limit stands in
    for a full disk)."""
    if MISSING_ENGINES or MISSING_SOURCES:
        pytest.skip(f"missing TTS engines or text sources: {MISSING_ENGINES} {MISSING_SOURCES}")
    limited = ("import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))\n"
               "from conformer_asr.cli import main\n"
               "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", limited, "synth", "--out", str(tmp_path),
                           "--hours", "1", "--jobs", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert re.search(rf"^error: {tmp_path}/audio/\w+/[\w-]+\.flac: File too large$",
                     proc.stderr, re.M), proc.stderr[-2000:]


def test_ctrl_c_stops_the_build_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: each worker printed a KeyboardInterrupt
    traceback, and the build no line saying how to go on."""
    if MISSING_ENGINES or MISSING_SOURCES:
        pytest.skip(f"missing TTS engines or text sources: {MISSING_ENGINES} {MISSING_SOURCES}")
    build = subprocess.Popen([sys.executable, "-m", "conformer_asr.cli", "synth", "--out",
                              str(tmp_path), "--utterances", "200", "--jobs", "2",
                              "--no-progress"], stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # a group of its own, as in a terminal
    try:
        deadline = time.monotonic() + 120
        while not any((tmp_path / "audio").rglob("*.flac")) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(build.pid, signal.SIGINT)
        _, stderr = build.communicate(timeout=120)
    finally:
        build.kill()
    assert build.returncode == 130, stderr[-2000:]
    assert stderr == (f"stopped: the same command resumes, keeping the utterances written "
                      f"in {tmp_path}\n")


def test_command_line(corpus: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = parser.parse_args(["--out", str(corpus[0]), "--utterances", str(UTTERANCES),
                              "--seed", "3", "--no-progress"])
    assert run_synth(args) == 0
    assert json.loads(capsys.readouterr().out)["run"]["skipped"] == UTTERANCES
    assert run_synth(parser.parse_args(["--out", str(corpus[0])])) == 2
    capsys.readouterr()
    for bad, message in [(["--hours", "-1.0"], "hours must be a positive number, got -1.0"),
                         (["--hours", "inf"], "hours must be a positive number, got inf"),
                         (["--utterances", "0"], "utterances must be at least 1, got 0")]:
        assert run_synth(parser.parse_args(["--out", str(corpus[0] / "new"), *bad])) == 2
        assert capsys.readouterr().err == f"error: {message}\n"  # (inf: a traceback)
    assert not (corpus[0] / "new").exists()
    # a folder of the user's own (its train.jsonl and LICENSES.md were written over)
    mine = corpus[0] / "mine"
    mine.mkdir()
    (mine / "train.jsonl").write_text("my own data\n")
    assert run_synth(parser.parse_args(["--out", str(mine), "--utterances", "3"])) == 2
    assert capsys.readouterr().err == (f"error: {mine} is not empty and holds no corpus build "
                                       "(no build.json); choose a new --out\n")
    assert [p.name for p in mine.iterdir()] == ["train.jsonl"]
