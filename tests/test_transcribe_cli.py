"""transcribe / evaluate as a user runs them, including bad input."""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import pty
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conformer_asr import load_model
from conformer_asr.audio.ffmpeg import ffmpeg_installed
from conformer_asr.audio.io import AudioError, load_audio, resample, samples_of
from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference.lm_dir import load_lm_dir
from conformer_asr.inference.model_dir import read_config, resolve_model_dir, save_model_dir
from conformer_asr.inference.transcriber import Word, without_overlaps
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig
from conformer_asr.text.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("model")
    texts = [json.loads(line)["text"] for line in (DATA / "manifest.jsonl").open()]
    tokenizer = Tokenizer.train(texts, root / "tok", vocab_size=30)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2,
                                            conv_kernel_size=7, subsampling_factor=8),
                      vocab_size=tokenizer.vocab_size, ctc_weight=0.5, pred_embed_dim=16,
                      pred_hidden_dim=32, joint_dim=32)
    return save_model_dir(ASRModel(cfg), tokenizer, root / "model")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformer_asr.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_bad_files_are_named_and_the_rest_transcribed(model_dir, tmp_path):
    good = DATA / "clip1.wav"
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes((DATA / "clip2.wav").read_bytes()[:30])
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000, np.float32), 16000)
    stereo8k = tmp_path / "stereo8k.wav"
    mono, _ = sf.read(good, dtype="float32")
    sf.write(stereo8k, np.stack([mono[::2], mono[::2]], axis=1), 8000)
    missing = tmp_path / "missing.flac"
    folder = tmp_path / "recordings"
    folder.mkdir()
    files = [good, text, corrupt, empty, silence, stereo8k, missing, folder]
    proc = _cli("transcribe", *map(str, files), "--model", str(model_dir), "--format", "json")
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 5
    for bad, line in zip([text, corrupt, empty, missing, folder], errors, strict=True):
        assert line.startswith(f"error: {bad}: ")
    assert errors[-1].endswith("a folder, not an audio file")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["audio"] for r in rows] == [str(good), str(silence), str(stereo8k)]
    assert rows[1]["duration"] == pytest.approx(1.0, abs=0.01)
    assert rows[2]["duration"] == pytest.approx(len(mono) / 16000, abs=0.01)


def test_names_that_are_not_utf8_or_too_long(model_dir, tmp_path):
    """A name that is not UTF-8 (Latin-1 "café") stopped the whole run with an encoding error
    naming no file; a name too long for the file system did too, after decoding the files
    before it, whose transcripts were lost. Now the first is read and printed as the bytes
    it is, the second named, and the others transcribed, in any locale."""
    latin = tmp_path / os.fsdecode(b"caf\xe9.wav")
    latin.write_bytes((DATA / "clip1.wav").read_bytes())
    too_long = tmp_path / ("a" * 300 + ".wav")
    good = DATA / "clip2.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "conformer_asr.cli", "transcribe", str(latin), str(too_long),
         str(good), "--model", str(model_dir)],
        capture_output=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"error: {too_long}: File name too long\n"
    lines = proc.stdout.split(b"\n")
    assert lines[0].startswith(os.fsencode(latin) + b"\t") and lines[1].startswith(
        os.fsencode(good) + b"\t") and lines[2:] == [b""]
    model = load_model(model_dir)
    results = list(model.iter_transcripts([latin, str(too_long)]))
    assert results[0][1].text == model.transcribe(DATA / "clip1.wav")[0]
    assert isinstance(results[1][1], AudioError)


def test_bad_last_or_only_file_is_a_one_line_error(model_dir, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    for files in ([text], [DATA / "clip1.wav", text]):
        proc = _cli("transcribe", *map(str, files), "--model", str(model_dir))
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"error: {text}: not a readable audio file (Format not recognised.)"
        ]
        assert len(proc.stdout.splitlines()) == len(files) - 1


def test_batches_that_fill_up_exactly_at_the_last_input(model_dir):
    transcriber = load_model(model_dir)
    transcriber.batch_seconds = 0.01  # every window fills a batch: none left at the end
    clips = [DATA / "clip1.wav", DATA / "clip2.wav"]
    assert len(transcriber.transcribe(clips)) == 2


def test_missing_and_mismatched_model_folders(model_dir, tmp_path):
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such model folder" in proc.stderr
    run = tmp_path / "run"  # a training run's folder, and an LM folder, for a model folder
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text((model_dir / "config.json").read_text())
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text('{"lm": {}, "info": {}}')
    for folder, message in [(run, f"a training run's folder; its model is {run / 'model'}"),
                            (tmp_path / "lm", "an LM folder, not a model folder (give it as "
                                              "--lm)")]:  # were "not a model folder (no ...)"
        proc = _cli("model-info", str(folder))  # and "invalid model config ('model')"
        assert (proc.returncode, proc.stderr) == (2, f"error: {folder}: {message}\n")
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", "")  # was ".: not a model..."
    assert (proc.returncode, proc.stderr) == (2, "error: an empty string is not a model "
                                                 "folder's name\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(broken))
    assert proc.returncode == 2 and "no model.safetensors" in proc.stderr
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model"]["encoder"]["d_model"] = 64
    (broken / "config.json").write_text(json.dumps(cfg))
    (broken / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(broken))
    assert proc.returncode == 2
    assert "weights do not match config.json" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(broken))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "model.safetensors: unreadable weights" in proc.stderr
    (broken / "tokenizer.model").write_bytes(b"not a tokenizer")
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(broken))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "tokenizer.model: not a SentencePiece model" in proc.stderr


def test_long_recording_is_windowed(model_dir, tmp_path):
    """A 3-minute file with no pause goes through in overlapping 20 s windows; every
    window is bounded."""
    transcriber = load_model(model_dir)
    long = tmp_path / "long.wav"
    clip, _ = sf.read(DATA / "clip3.wav", dtype="float32")
    loud = np.flatnonzero(np.abs(clip) > 0.02)
    clip = clip[loud[0] : loud[-1]]  # no quiet start and end: tiled, it has no pause
    sf.write(long, np.tile(clip, int(180 * 16000 / len(clip)) + 1)[: 180 * 16000], 16000)
    windows = list(transcriber._segments(0, long, 16000))
    assert len(windows) == 11  # ceil((180 - 20) / 16) + 1
    assert max(len(w.samples) for w in windows) == 20 * 16000
    keeps = [(w.keep_from, w.keep_to) for w in windows]
    assert keeps[0][0] == 0 and keeps[-1][1] == float("inf")
    assert all(a[1] == b[0] for a, b in zip(keeps, keeps[1:], strict=False))
    [result] = [r for _, r in transcriber.iter_transcripts([long])]
    assert result.duration == pytest.approx(180.0)
    assert all(0 <= w.start <= w.end <= 180.5 for w in result.words)
    assert all(a.end <= b.start for a, b in zip(result.words, result.words[1:], strict=False))


def test_word_times_never_overlap_where_windows_join():
    """Kept by their centres, a long word of one window may overlap the next window's
    first word, or start after it (seen on 3 minutes of white noise)."""
    words = [Word("performer", 31.52, 35.68), Word("to", 34.32, 34.5), Word("and", 97.92, 98.1),
             Word("according", 97.36, 98.6), Word("next", 99.0, 99.2)]
    assert without_overlaps(words) == [
        Word("performer", 31.52, 34.32), Word("to", 34.32, 34.5), Word("and", 97.92, 98.1),
        Word("according", 98.1, 98.6), Word("next", 99.0, 99.2)]


def test_long_recording_is_cut_in_its_pauses(model_dir):
    """Bursts of noise, as loud as speech, with gaps of 0.2 s (no pause), 0.6 s and 5 s:
    a recording over 20 s is cut in the gaps of 0.3 s or more that end at least 2 s
    after the segment's start, keeping 0.25 s of the gap on each side of the cut; every
    burst sample is in exactly one segment. A recording of 20 s or less is one segment."""
    transcriber = load_model(model_dir)
    rng = np.random.default_rng(0)
    gaps = [0.2, 0.6, 0.2, 0.6, 5.0] * 6
    pieces, bursts = [], []
    at = 0
    for gap in gaps:
        burst = 0.1 * rng.standard_normal(rng.integers(8000, 24000))
        bursts.append((at, at + len(burst)))
        pieces += [burst, np.zeros(round(gap * 16000))]
        at += len(burst) + len(pieces[-1])
    audio = np.concatenate(pieces).astype(np.float32)
    starts, ends = [b[0] for b in bursts[1:]] + [len(audio)], [b[1] for b in bursts]
    segments = list(transcriber._segments(0, audio, 16000))
    spans = [(round(s.offset * 16000), round(s.offset * 16000) + len(s.samples))
             for s in segments]
    assert len(segments) > 6
    frame = 160  # pauses are found to the nearest 10 ms frame
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert end - start <= 20 * 16000
        gap = next(g for g in zip(ends, starts, strict=True) if g[0] <= end <= g[1])
        assert gap[1] - start >= 2 * 16000 - frame
        assert gap[1] - gap[0] in (0.6 * 16000, 5.0 * 16000)
        assert abs(end - gap[0] - 4000) <= frame and abs(gap[1] - next_start - 4000) <= frame
    for first, last in bursts:
        assert sum(start <= first and last <= end for start, end in spans) == 1
    keeps = [(s.keep_from, s.keep_to) for s in segments]
    assert keeps[0][0] == 0 and keeps[-1][1] == float("inf")
    assert all(a[1] == b[0] for a, b in zip(keeps, keeps[1:], strict=False))
    assert len(list(transcriber._segments(0, audio[: 20 * 16000], 16000))) == 1


def test_pauses_around_an_input_are_trimmed(model_dir):
    """2 s of silence, 1.5 s of noise as loud as speech, 3 s of silence: one segment of
    the noise with 0.25 s of silence each side, placed where it was; the duration and
    an input of silence alone stay whole."""
    transcriber = load_model(model_dir)
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(32000), 0.1 * rng.standard_normal(24000),
                            np.zeros(48000)]).astype(np.float32)
    [segment] = transcriber._segments(0, audio, 16000)
    assert segment.offset == pytest.approx(1.75, abs=0.011)
    assert len(segment.samples) / 16000 == pytest.approx(2.0, abs=0.021)
    assert segment.end == pytest.approx(6.5)
    start = round(segment.offset * 16000)
    assert np.array_equal(segment.samples, audio[start : start + len(segment.samples)])
    [(_, result)] = transcriber.iter_transcripts([audio])
    assert result.duration == pytest.approx(6.5)
    assert all(1.75 <= w.start <= w.end <= 3.76 for w in result.words)
    [silence] = transcriber._segments(0, np.zeros(32000, np.float32), 16000)
    assert len(silence.samples) == 32000


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_are_the_cheapest_split(seed):
    """Against every split of up to 8 sorted lengths into consecutive groups."""
    import itertools

    from conformer_asr.inference.transcriber import GROUP_OVERHEAD_ROWS, length_groups

    rng = np.random.default_rng(seed)
    lengths = sorted(rng.integers(1, 100, rng.integers(1, 9)).tolist())

    def cost(groups):
        return sum((len(g) + GROUP_OVERHEAD_ROWS) * lengths[g[-1]] for g in groups)

    n = len(lengths)
    splits = [[range(a, b) for a, b in zip((0, *cuts), (*cuts, n), strict=True)]
              for k in range(n) for cuts in itertools.combinations(range(1, n), k)]
    groups = length_groups(lengths)
    assert [i for g in groups for i in g] == list(range(n))
    assert cost(groups) == pytest.approx(min(cost(split) for split in splits))


def test_grouped_decoding_keeps_the_input_order(model_dir):
    transcriber = load_model(model_dir)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (48000, 8000, 160000,
                                                                       8000, 24000)]
    alone = [transcriber._decode_padded([w])[0].tokens for w in waves]
    assert [h.tokens for h in transcriber.decode_waves(waves)] == alone


def test_a_steady_sound_alone_has_no_words():
    """Hiss, hum, dither or fan-like noise alone is not decoded: the bundled model made
    words up on it ("a performer of a car" on white noise at -40 dBFS, "in a performer" on
    pink noise at -30). Its duration is still given, and speech after the hiss is still
    transcribed."""
    transcriber = load_model()
    rng = np.random.default_rng(0)
    hiss = (0.01 * rng.standard_normal(3 * 16000)).astype(np.float32)
    hum = (0.01 * np.sin(2 * np.pi * 50 * np.arange(3 * 16000) / 16000)).astype(np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(3 * 16000))  # pink: power as 1/f
    pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.fft.rfftfreq(3 * 16000), 1e-4)))
    for steady in (hiss, hum, (0.03 * pink / pink.std()).astype(np.float32)):
        [(_, result)] = transcriber.iter_transcripts([steady])
        assert (result.text, result.words) == ("", [])
        assert result.duration == pytest.approx(3.0)
    weather = load_audio(EXAMPLES / "weather.wav")
    [text] = transcriber.transcribe([np.concatenate([hiss, weather + hiss[: len(weather)]])])
    assert "sunny" in text


@pytest.mark.parametrize("part", [False, True])
def test_long_recording_memory_is_bounded(model_dir, tmp_path, part):
    """Audio held while transcribing a 20-minute file stays near one batch of windows
    (160 s), not the whole recording (77 MB of float32 samples); so does an 18-minute
    slice of it (a Lhotse cut), which was read whole."""
    import tracemalloc

    from conformer_asr.audio.io import AudioSlice

    transcriber = load_model(model_dir)
    long = tmp_path / "long.wav"
    clip, _ = sf.read(DATA / "clip3.wav", dtype="float32")  # speech: steady noise is skipped
    minute = np.tile(clip, 60 * 16000 // len(clip) + 1)[: 60 * 16000]
    with sf.SoundFile(long, "w", 16000, 1) as f:
        for _ in range(20):
            f.write(minute)
    item = AudioSlice(long, start=60.0, duration=1080.0) if part else long
    tracemalloc.start()
    [(_, result)] = list(transcriber.iter_transcripts([item]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.duration == pytest.approx(1080.0 if part else 1200.0)
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB of numpy/Python memory"


def test_evaluate_writes_hypotheses_and_reports(model_dir, tmp_path):
    out = tmp_path / "hyps.jsonl"
    proc = _cli("evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                str(model_dir), "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["utterances"] == 4 and report["words"] == 19
    assert report["rtf"] > 0 and "substitutions" in report
    assert report["by_speaker"] == {}  # the manifest names no speakers
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["clip1", "clip2", "clip3", "clip4"]


def test_evaluate_shows_its_progress_on_a_terminal_only(model_dir):
    """stderr a terminal: one line, rewritten as each batch is decoded and each utterance
    scored, and cleared at the end; stdout keeps the report alone. stderr a pipe (as above,
    and in CI logs): nothing."""
    manifest = str(DATA / "manifest.jsonl")
    proc, shown = _on_terminal("evaluate", "--manifest", manifest, "--model", str(model_dir),
                               "--json")
    assert proc.returncode == 0, shown
    assert json.loads(proc.stdout)["utterances"] == 4
    writes = re.findall(r"\r([^\r]*)\r", shown)
    assert "".join(f"\r{write}\r" for write in writes) == shown
    *lines, cleared = [write.rstrip() for write in writes]
    assert len(lines) == 5 and lines[0].endswith(  # the one batch decoded, then each scored
        "clip4.wav: 0:01 of 0:01 decoded (0 of 4 scored)")
    assert lines[1:] == [f"evaluate: {done} of 4 utterances scored" for done in range(1, 5)]
    assert cleared == "" and len(writes[-1]) == len(lines[-1])
    piped = _cli("evaluate", "--manifest", manifest, "--model", str(model_dir), "--json")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_transcribe_shows_where_a_long_recording_stands_on_a_terminal_only(model_dir, tmp_path):
    """stderr a terminal 60 columns wide: one line, rewritten as each round of learning the
    voice starts and as each batch is decoded, its start cut off where it is wider than the
    terminal, and cleared before the transcript; stderr a pipe: nothing."""
    clips = [load_audio(DATA / f"clip{i}.wav") for i in range(1, 5)]
    gap = np.zeros(8000, np.float32)
    long = tmp_path / "a-recording-with-a-long-name.wav"
    sf.write(long, np.concatenate([part for clip in clips * 5 for part in (clip, gap)]), 16000)
    command = ["transcribe", str(long), "--model", str(model_dir), "--adapt-to-speaker"]
    proc, shown = _on_terminal(*command, columns=60)
    assert proc.returncode == 0, shown
    writes = re.findall(r"\r([^\r]*)\r", shown)
    assert "".join(f"\r{write}\r" for write in writes) == shown
    *lines, cleared = [write.rstrip() for write in writes]
    assert cleared == "" and len(writes[-1]) == len(lines[-1])
    assert all(len(line) <= 59 for line in lines)
    assert lines[0].startswith("...") and f"transcribe: {long}".endswith(
        lines[0].split(": ")[0][3:])
    assert [line[-12:] for line in lines[:2]] == ["round 1 of 2", "round 2 of 2"]
    assert lines[-1].endswith(f"{long.name}: 0:41 of 0:41 decoded")
    piped = _cli(*command)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert proc.stdout.decode() == piped.stdout and piped.stdout.strip()
    proc, shown = _on_terminal(*command[:2], str(DATA / "clip1.wav"), *command[2:])  # done
    assert proc.returncode == 0, shown
    assert re.findall(r"\(\d of 2 files done\)", shown) == ["(0 of 2 files done)"] * 3 + [
        "(1 of 2 files done)"]
    assert "clip1.wav: 0:01 of 0:01 decoded (1 of 2 files done)\r" in shown


def test_a_warning_clears_the_status_line_before_it_is_printed(monkeypatch):
    """A warning (a file cut short) printed while the line is shown was printed over its
    start, leaving its end after the warning's text."""
    from conformer_asr.cli import _StatusLine

    printed: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *where, **more: (
        printed.append(f"{stream.getvalue()!r} then {message}")))
    stream = io.StringIO()
    stream.isatty = lambda: True  # type: ignore[method-assign]
    show_warning = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with _StatusLine(stream) as status:
            status.show("transcribe: talk.wav: 0:10 of 0:41 decoded")
            warnings.warn("talk.wav: cut short", stacklevel=1)
            status.show("transcribe: talk.wav: 0:20 of 0:41 decoded")
        assert warnings.showwarning is show_warning  # put back on leaving
    assert printed == [repr("\rtranscribe: talk.wav: 0:10 of 0:41 decoded\r\r" + " " * 42
                            + "\r") + " then talk.wav: cut short"]
    assert stream.getvalue().endswith("\r" + " " * 42 + "\r")  # and cleared on leaving


def _on_terminal(*args: str, columns: int = 80) -> tuple[subprocess.CompletedProcess, str]:
    """The CLI run with stderr on a pseudo-terminal ``columns`` wide -> (its run, with
    stdout, and what it wrote to the terminal)."""
    import fcntl
    import struct
    import termios

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(master, "rb", buffering=0) as reader:
        proc = subprocess.run([sys.executable, "-m", "conformer_asr.cli", *args],
                              stdout=subprocess.PIPE, stderr=terminal, timeout=300)
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's writer has gone
            while chunk := reader.read(4096):
                shown += chunk
    return proc, shown.decode()


def _evaluated(manifest: Path, model_dir: Path) -> tuple[int, dict, str, str]:
    """``evaluate --json --output`` -> (exit status, report without its RTF, hypotheses
    file, stderr)."""
    out = manifest.parent / f"{manifest.name}.hyps"
    proc = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir),
                "--output", str(out), "--json")
    report = json.loads(proc.stdout) if proc.stdout else {}
    report.pop("rtf", None)
    return proc.returncode, report, out.read_text() if out.exists() else "", proc.stderr


def test_evaluate_reads_lhotse_cuts_manifests(model_dir, tmp_path):
    """train reads Lhotse cuts manifests; evaluate refused them ("not a manifest line").
    Cuts of whole files, and cuts of parts of one long recording, now score as the plain
    manifest of the same audio; a cut that is not in one file, or a line that is no cut,
    is a one-line error naming its line; a part outside its file is an unreadable one."""
    from lhotse import CutSet, MonoCut, Recording

    from conformer_asr.data.manifest import load_cuts

    cuts = load_cuts(DATA / "manifest.jsonl").map_supervisions(
        lambda s: dataclasses.replace(s, speaker=f"reader {s.id[-1]}"))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(
        {"id": c.id, "audio": c.recording.sources[0].source, "speaker": f"reader {c.id[-1]}",
         "text": c.supervisions[0].text}) + "\n" for c in cuts))
    expected = _evaluated(plain, model_dir)
    assert expected[0] == 0 and expected[1]["words"] == 19 and len(expected[1]["by_speaker"]) == 4
    assert _evaluated(tmp_path / "cuts.jsonl.gz", model_dir) == expected

    # the four clips in one recording, 0.5 s apart, and a cut for each
    clips = [sf.read(c.recording.sources[0].source, dtype="int16")[0] for c in cuts]
    gap = np.zeros(8000, dtype=np.int16)
    sf.write(tmp_path / "long.wav", np.concatenate([x for c in clips for x in (gap, c)]), 16000)
    recording = Recording.from_file(tmp_path / "long.wav")
    parts, start = [], 0
    for cut, samples in zip(cuts, clips, strict=True):
        start += len(gap)
        span = {"start": start / 16000, "duration": len(samples) / 16000}
        supervision = dataclasses.replace(cut.supervisions[0], recording_id=recording.id, **span)
        parts.append(MonoCut(id=cut.id, channel=0, recording=recording,
                             supervisions=[supervision], **span))
        start += len(samples)
    CutSet.from_cuts(parts).to_file(tmp_path / "parts.jsonl")
    assert _evaluated(tmp_path / "parts.jsonl", model_dir) == expected

    outside = tmp_path / "outside.jsonl"
    CutSet.from_cuts([parts[0], dataclasses.replace(parts[1], id="late", start=30.0)]).to_file(
        outside)
    status, report, hyps, err = _evaluated(outside, model_dir)
    assert status == 1 and report["failed"] == 1
    assert json.loads(hyps.splitlines()[1])["error"] == (
        f"{tmp_path / 'long.wav'} (30.00-{30 + parts[1].duration:.2f} s): starts outside the "
        f"file ({start / 16000:.2f} s long)")

    mixed = tmp_path / "mixed.jsonl"
    two = parts[1].append(parts[2])
    CutSet.from_cuts([parts[0], two]).to_file(mixed)
    faster = tmp_path / "faster.jsonl"  # a resampled cut is read as recorded, and resampled
    CutSet.from_cuts([parts[0].resample(8000), parts[1].perturb_speed(1.1)]).to_file(faster)
    not_a_cut = tmp_path / "not_a_cut.jsonl"
    not_a_cut.write_text(plain.read_text().splitlines()[0].join(
        [(tmp_path / "parts.jsonl").read_text().splitlines()[0] + "\n", "\n"]))
    for path, message in [
        (mixed, f"{mixed}:2: cut '{two.id}' is not in one audio file (its channels are "
                "in several, or it mixes cuts)"),
        (not_a_cut, f"{not_a_cut}:2: not a Lhotse cut, as the first line is"),
        (faster, f"{faster}:2: cut '{parts[1].id}_sp1.1' changes its recording's audio "
                 "(Speed), which evaluate does not do: it scores audio as recorded"),
    ]:
        proc = _cli("evaluate", "--manifest", str(path), "--model", str(model_dir))
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")


def test_evaluate_names_unreadable_audio_and_exits_nonzero(model_dir, tmp_path):
    """The other utterances are still scored; the unreadable one counts as empty."""
    first, second = map(json.loads, (DATA / "manifest.jsonl").read_text().splitlines()[:2])
    broken = second | {"audio": str(tmp_path / "gone.wav")}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in (first, broken)))
    (tmp_path / first["audio"]).write_bytes((DATA / first["audio"]).read_bytes())
    out = tmp_path / "hyps.jsonl"
    proc = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir),
                "--output", str(out), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["utterances"] == 2 and report["failed"] == 1
    assert proc.stderr.strip().endswith("gone.wav: no such file")
    assert report["deletions"] >= len(broken["text"].split())
    hyps = [json.loads(line) for line in out.read_text().splitlines()]
    assert [h["id"] for h in hyps] == [first["id"], broken["id"]]
    assert "error" not in hyps[0]  # the failed one is told apart from an empty transcript
    assert hyps[1] == {"id": broken["id"], "text": "", "error": f"{tmp_path / 'gone.wav'}: "
                                                                "no such file"}
    proc = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir))
    assert proc.returncode == 1 and "gone.wav: no such file" in proc.stdout
    # its path was absolute: the hint about relative paths would mislead
    assert "relative audio paths" not in proc.stdout
    manifest.write_text("".join(json.dumps(row) + "\n" for row in (first, second)))
    proc = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir))
    assert proc.returncode == 1 and proc.stdout.rstrip().endswith(
        "(a manifest's relative audio paths are read from its own folder)")


def test_references_with_digits_are_named_in_one_warning(model_dir, tmp_path):
    """Scoring keeps letters only: "ran 2 homes" was scored as "ran homes", silently."""
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    rows = [row | {"audio": str(DATA / row["audio"])} for row in rows[:2]]
    rows[1]["text"] = "a dog ran 2 homes"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir))
    assert result.returncode == 0
    assert result.stderr == (f"warning: {manifest}: 1 reference with digits, which scoring "
                             f"leaves out (e.g. {rows[1]['id']}); the model writes numbers as "
                             "words: write them so\n")
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows[:1]))
    assert _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir)).stderr == ""


def test_the_text_report_says_how_many_failures_it_leaves_out():
    """It listed the first 10 under "12 utterances failed" and said nothing of the rest;
    every file missing is most often a manifest copied away from its audio."""
    from conformer_asr.inference.evaluate import EvalReport

    failed = [f"audio/{i}.flac: no such file" for i in range(12)]
    report = EvalReport(utterances=12, failed=failed, relative_path_missing=True)
    lines = report.format().splitlines()
    assert lines[lines.index("12 utterances failed (scored as empty):") + 1:] == [
        *(f"  {reason}" for reason in failed[:10]), "  ... and 2 more (--json lists them all)",
        "(a manifest's relative audio paths are read from its own folder)"]


def test_evaluate_refuses_an_empty_manifest(model_dir, tmp_path):
    """No utterances is an error, not a WER of 0%."""
    manifest = tmp_path / "empty.jsonl"
    manifest.write_text("\n")
    proc = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {manifest}: no utterances in the manifest"


def test_evaluate_refuses_an_id_given_twice(tmp_path):
    """Manifests joined twice were scored with every utterance counted twice, and the
    hypotheses file had two lines for one id."""
    manifest = tmp_path / "twice.jsonl"
    line = json.dumps({"id": "a", "audio": str(DATA / "clip1.wav"), "text": "x"})
    other = json.dumps({"id": "b", "audio": str(DATA / "clip2.wav"), "text": "y"})
    manifest.write_text(f"{line}\n{other}\n\n{line}\n")
    proc = _cli("evaluate", "--manifest", str(manifest))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"error: {manifest}:4: id 'a' again (first on line 1): ids must be " \
                          "unique\n"


def test_evaluate_names_a_manifest_it_cannot_read(model_dir, tmp_path):
    """An audio file given as the manifest, and a line that is not an utterance: one line
    each, naming the file (and the line), before any decoding."""
    lines = tmp_path / "no_text.jsonl"
    lines.write_text('{"id": "a", "audio": "a.wav", "text": "a"}\n'
                     '{"id": "b", "audio": "b.wav", "text": 3}\n')
    no_audio = tmp_path / "no_audio.jsonl"  # "" was the manifest's folder: "a folder"
    no_audio.write_text('{"id": "a", "audio": "", "text": "a"}\n')
    for path, message in [
        (DATA / "clip1.wav", rf"{DATA / 'clip1.wav'}: not UTF-8 text \(byte \d+\)"),
        (lines, rf'{lines}:2: not a manifest line \(expected JSON with "id", "audio" and '
                r'"text" strings\)'),
        (no_audio, rf"{no_audio}:1: an empty \"audio\" \(id 'a'\)"),
        (tmp_path, rf"{tmp_path}: a folder, not a manifest"),  # was "manifest not found"
    ]:
        proc = _cli("evaluate", "--manifest", str(path), "--model", str(model_dir))
        assert proc.returncode == 2 and proc.stdout == ""
        assert re.fullmatch(f"error: {message}\n", proc.stderr), proc.stderr


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), [
    (".flac", "FLAC", "PCM_16"), (".ogg", "OGG", "VORBIS"), (".mp3", "MP3", "MPEG_LAYER_III")])
def test_compressed_formats_are_read(suffix, fmt, subtype, tmp_path):
    """What the README promises: wav/flac/ogg/mp3, here at 22.05 kHz stereo."""
    audio, _ = sf.read(DATA / "clip1.wav", dtype="float32")
    path = tmp_path / f"clip{suffix}"
    at_22k = resample(audio, 16000, 22050)
    sf.write(path, np.stack([at_22k, at_22k], axis=1), 22050, format=fmt, subtype=subtype)
    decoded = load_audio(path)
    assert abs(len(decoded) - len(audio)) < 0.1 * 16000  # mp3 pads its frames
    n = min(len(decoded), len(audio))
    lag = int(np.argmax(np.correlate(decoded[:n], audio[:n], mode="full"))) - (n - 1)
    shifted = np.roll(decoded[:n], -lag)
    assert np.corrcoef(shifted, audio[:n])[0, 1] > 0.9


def test_nan_samples_are_an_error_naming_the_input(model_dir, tmp_path):
    """Float files can hold NaN; read as audio they came out as an empty transcript."""
    audio, _ = sf.read(DATA / "clip1.wav", dtype="float32")
    audio[100:200] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    proc = _cli("transcribe", str(path), str(DATA / "clip1.wav"), "--model", str(model_dir))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {path}: corrupt audio data (NaN or infinite samples)"
    assert proc.stdout.startswith(f"{DATA / 'clip1.wav'}\t")
    with pytest.raises(AudioError, match="input 0: corrupt audio data"):
        load_model(model_dir).transcribe([audio])


def test_python_api_accepts_arrays(model_dir):
    transcriber = load_model(model_dir)
    audio, _ = sf.read(DATA / "clip1.wav", dtype="float32")
    from_array = transcriber.transcribe([audio, np.stack([audio, audio], axis=1)])
    from_file = transcriber.transcribe([str(DATA / "clip1.wav")])
    assert from_array == from_file * 2
    assert transcriber.transcribe(DATA / name for name in ["clip1.wav"]) == from_file
    with pytest.raises(AudioError, match="^input 0: not audio but a bytes "):
        transcriber.transcribe([str(DATA / "clip1.wav").encode()])
    # one input outside a list: it was taken as a sequence of inputs (bytes: of integers)
    for single, kind in ((str(DATA / "clip1.wav").encode(), "bytes"),
                         (np.float32(0.3), "float32")):
        with pytest.raises(AudioError, match=f"^input 0: not audio but a {kind} "):
            transcriber.transcribe(single)
    # any path-like object is a path (a PurePath was iterated, a DirEntry "not audio")
    clip = DATA / "clip1.wav"
    entry = next(e for e in os.scandir(DATA) if e.name == "clip1.wav")
    assert transcriber.transcribe(pathlib.PurePosixPath(clip)) == from_file
    assert transcriber.transcribe([entry]) == from_file
    with pytest.raises(AudioError, match=r"^input 0: an array of <U\d+, not of samples "
                                         r"\(give file paths as a list\)$"):
        transcriber.transcribe(np.array([str(clip)]))
    # an open file, one input named for what it is: it was a sequence of its "lines"
    with (DATA / "clip1.wav").open("rb") as file:
        results = list(transcriber.iter_transcripts(file))
    assert len(results) == 1 and str(results[0][1]).startswith(
        "input 0: not audio but a BufferedReader (give a file path")
    assert transcriber.transcribe(torch.from_numpy(audio).bfloat16())[0]  # (NumPy has none)
    with pytest.raises(ValueError, match=r"^sample_rate: 16 Hz is below any audio rate \(it "
                                         r"is in Hz: 16000, not 16\)$"):  # 1000x the samples
        transcriber.transcribe(audio, sample_rate=16)
    for rate in (0, -8000, "16000", float("nan")):  # soxr's error, or a TypeError
        with pytest.raises(ValueError, match=f"^sample_rate: the arrays' rate in Hz, a "
                                             f"positive number; got {rate!r}"):
            transcriber.transcribe(audio, sample_rate=rate)  # type: ignore[arg-type]


def test_a_generator_is_drawn_from_as_results_are_needed(model_dir):
    """An endless generator (a queue of recordings, say) gave no result: it was read to its
    end first, holding every array it made."""
    transcriber = load_model(model_dir)
    audio, _ = sf.read(DATA / "clip1.wav", dtype="float32")
    drawn = []

    def recordings():
        while len(drawn) < 1000:  # "endless": the code before would hang, not fail
            drawn.append(len(drawn))
            yield audio
        raise RuntimeError("drawn to its end")

    results = transcriber.iter_transcripts(recordings())
    first, second = next(results), next(results)
    assert first[1].text == second[1].text == transcriber.transcribe(audio)[0]
    assert first[0] is audio and len(drawn) <= transcriber.batch_seconds / 1.5 + 2


def test_dash_reads_the_audio_piped_in(model_dir, tmp_path):
    """`... | conformer-asr transcribe -`: what is piped in is transcribed as the file it
    came from, named "-" (stdin.EXT with --out-dir), in warnings too; junk, "-" twice and
    a terminal are one-line errors."""
    clip = DATA / "clip1.wav"

    def piped(data: bytes, *args: str, stdin: int | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "conformer_asr.cli", "transcribe", *args,
                               "--model", str(model_dir)], capture_output=True, timeout=300,
                              input=None if stdin is not None else data, stdin=stdin)

    result = piped(clip.read_bytes(), "-", str(clip), "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["audio"] == "-" and rows[1]["audio"] == str(clip)
    assert rows[0]["text"] == rows[1]["text"] and rows[0]["duration"] == rows[1]["duration"]
    result = piped(clip.read_bytes(), "-", str(clip), "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert (out / "stdin.txt").read_text() == (out / "clip1.txt").read_text()
    flac = tmp_path / "clip1.flac"
    sf.write(flac, *sf.read(clip))
    cut = flac.read_bytes()[: flac.stat().st_size * 2 // 3]  # a partial download, say
    result = piped(cut, "-", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().startswith("warning: -: only ")
    assert "conformer-asr-" not in result.stderr.decode()  # the spooled file's folder
    result = piped(b"not audio", "-", str(clip))
    assert (result.returncode, result.stderr.decode()) == (
        1, "error: -: not a readable audio file (Format not recognised.)\n")
    assert result.stdout.decode().startswith(f"{clip}\t")
    result = piped(b"", "-", "-")
    assert (result.returncode, result.stderr.decode()) == (
        2, "error: - (standard input) can be given once\n")
    terminal, other_end = os.openpty()
    try:
        result = piped(b"", "-", stdin=other_end)
    finally:
        os.close(terminal)
        os.close(other_end)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: -: standard input is a terminal; pipe audio")


def test_paths_that_are_not_audio_files_are_named_for_what_they_are(model_dir, tmp_path):
    """A pipe, "-" and a broken link were all "no such file"; "" was "." and "a folder"."""
    transcriber = load_model(model_dir)
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "link.wav").symlink_to(tmp_path / "gone.wav")
    reasons = {str(tmp_path / "pipe.wav"): ": not a regular file (a pipe, device or socket)",
               "-": ": no such file (audio is not read from standard input: give a file)",
               str(tmp_path / "link.wav"): f": a broken symbolic link (to {tmp_path}/gone.wav)",
               "": "an empty string is not a file name"}
    results = dict(transcriber.iter_transcripts(list(reasons)))
    for name, reason in reasons.items():
        assert str(results[name]).startswith(name + reason if name else reason)


def test_python_api_reads_arrays_as_files_are_read():
    """Integer PCM, channels first or last, torch tensors and a single input not in a list
    all give what the file gives (the bundled model, whose pause trimming reads levels)."""
    transcriber = load_model()
    path = EXAMPLES / "weather.wav"
    expected = transcriber.transcribe([str(path)])
    assert expected[0]  # a real transcript, not silence
    pcm, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    stereo = np.stack([pcm, pcm], axis=1)
    as_float = pcm.astype(np.float32) / 32768
    inputs = [pcm, pcm.astype(np.int32) << 16, stereo, stereo.T, torch.from_numpy(as_float),
              torch.from_numpy(stereo.T.copy())]
    assert transcriber.transcribe(inputs) == expected * len(inputs)
    # 8-bit PCM is too coarse to give the same words; its scale is checked directly
    eight_bit = (pcm >> 8).astype(np.int16)
    np.testing.assert_array_equal(samples_of((eight_bit + 128).astype(np.uint8), "x"),
                                  eight_bit.astype(np.float32) / 128)
    assert transcriber.transcribe(str(path)) == expected
    assert transcriber.transcribe(as_float) == expected
    for bad, why in [(np.zeros((2, 2, 100), np.float32), "expected (samples,) or (samples, "
                      "channels) audio, got shape (2, 2, 100)"),
                     (np.zeros(100, np.uint16), "expected float, signed integer or uint8 "
                      "samples, got uint16"),
                     (np.zeros((0, 2), np.float32), "no samples (an empty array of shape "
                      "(0, 2))")]:
        with pytest.raises(AudioError, match=re.escape(f"input 0: {why}")):
            transcriber.transcribe([bad])


def test_int8_transcribes_and_evaluates(model_dir):
    clip = str(DATA / "clip1.wav")
    proc = _cli("transcribe", clip, "--model", str(model_dir), "--int8", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "deprecated" not in proc.stderr
    assert json.loads(proc.stdout)["audio"] == clip
    proc = _cli("evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                str(model_dir), "--int8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["int8"] is True and report["utterances"] == 4
    with pytest.raises(ValueError, match="int8: .*CPU only"):
        load_model(model_dir, device="cuda", int8=True)


def test_int8_quantises_the_model_and_the_lms_decode_in_int8_either_way():
    """--int8 quantises the model; on the CPU the LMs decode in int8 rows with or without it
    (``models.int8_rows``). An LM passed in is copied, not changed; one that already decodes
    so is taken as it is. The LM's next-token log-probabilities stay close to float32's."""
    from conformer_asr.inference.model_dir import BUNDLED_DIR, LM_SUBDIR

    float32_lm = load_lm_dir(BUNDLED_DIR / LM_SUBDIR)[0]
    default, int8 = load_model(), load_model(int8=True)
    copied, again = load_model(lm=float32_lm, int8=True), load_model(lm=default.lm)
    assert any(isinstance(m, torch.nn.Linear) for m in default.model.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.model.modules())
    for transcriber in (default, int8, copied, again):
        assert not any(isinstance(m, torch.nn.Linear | torch.nn.LSTM)
                       for m in transcriber.lm.modules())
    assert isinstance(float32_lm.lstm, torch.nn.LSTM) and again.lm is default.lm
    tokens = default.tokenizer.encode("the weather is fine today")
    with torch.no_grad():
        expected = float32_lm.token_log_probs([tokens])
        got = default.lm.token_log_probs([tokens])
    assert (got - expected).abs().max() < 0.25
    assert (got - expected).abs().mean() < 0.05


def test_bundled_model_is_small_and_transcribes_the_examples():
    """The model `transcribe` uses without --model: within its size budget, and `make demo`'s
    command prints one line per example (no error lines)."""
    from conformer_asr.inference.model_dir import BUNDLED_DIR

    size = sum(f.stat().st_size for f in BUNDLED_DIR.rglob("*"))
    assert size <= 25 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"
    examples = sorted(str(p) for p in (Path(__file__).parent.parent / "examples").glob("*.*")
                      if p.suffix in {".wav", ".flac"})
    result = _cli("transcribe", "--format", "json", *examples)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["audio"] for line in lines] == examples
    assert all(line["text"] for line in lines)


def test_the_shipped_real_speech_is_read_whole():
    """examples/librivox (the README's real-speech figure): every file of its manifest read
    as the 16-bit 16 kHz mono FLAC it is said to be, and scored against all 71 words."""
    manifest = EXAMPLES / "librivox" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        info = sf.info(str(manifest.parent / row["audio"]))
        assert (info.format, info.subtype, info.samplerate, info.channels) == (
            "FLAC", "PCM_16", 16000, 1), row["audio"]
    result = _cli("evaluate", "--manifest", str(manifest), "--json", "--lm", "none")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["utterances"], report["words"], report["failed"]) == (5, 71, 0)


def test_the_bundled_model_adapts_to_each_utterance_unless_told_not_to():
    """The bundled decoding adapts (5 steps) and self-trains (3 steps); --adapt-steps 0
    --self-train-steps 0 does neither, and the words may differ; an int8 model adapts too."""
    for options in (load_model().options, load_model(int8=True).options):
        assert (options.adapt_steps, options.self_train_steps) == (5, 3)
    weather = str(EXAMPLES / "weather.wav")
    adapted = _cli("transcribe", weather)
    plain = _cli("transcribe", weather, "--adapt-steps", "0", "--self-train-steps", "0")
    assert adapted.returncode == plain.returncode == 0, adapted.stderr + plain.stderr
    assert adapted.stdout.strip() and plain.stdout.strip()
    int8 = _cli("transcribe", weather, "--int8")
    assert int8.returncode == 0 and int8.stdout.strip(), int8.stderr
    bad = _cli("transcribe", weather, "--adapt-steps", "-1")
    assert bad.returncode == 2 and "--adapt-steps: must be 0 or more, got -1" in bad.stderr
    bad = _cli("transcribe", weather, "--self-train-steps", "x")
    assert bad.returncode == 2 and "--self-train-steps: " in bad.stderr
    bad = _cli("transcribe", weather, "--confident-entropy", "-1")
    assert bad.returncode == 2 and "--confident-entropy: must be >= 0, got -1" in bad.stderr


def test_the_bundled_model_rescores_with_its_ngram_lm_unless_told_not_to():
    """The bundle's word n-gram LM takes half of the LM term of each search's best
    hypotheses (it has no backward LM); --ngram-share 0 (or no LM) turns it off, and a share
    outside [0, 1] is refused."""
    bundled = load_model()
    assert bundled.ngram is not None and bundled.backward_lm is None
    assert bundled.lm is not None and not bundled.lm.cfg.backward
    assert bundled.options.ngram_share == 0.5 and bundled.options.backward_share == 0
    assert load_model(ngram_share=0).ngram is None
    assert load_model(lm=None).ngram is None
    weather = str(EXAMPLES / "weather.wav")
    off = _cli("transcribe", weather, "--ngram-share", "0", "--adapt-steps", "0",
               "--self-train-steps", "0")
    assert off.returncode == 0 and off.stdout.strip(), off.stderr
    bad = _cli("transcribe", weather, "--ngram-share", "1.5")
    assert bad.returncode == 2
    assert "--ngram-share: must be between 0 and 1, got 1.5" in bad.stderr


def test_transcribing_a_file_imports_neither_lhotse_nor_dynamo():
    """Start-up time of a one-file `transcribe` with the bundled, adapting model: importing
    Lhotse took 0.2 s and torch._dynamo (which any torch.optim step imports) 0.85 s, of
    3.4 s in all. Neither is needed to transcribe."""
    script = ("import sys\nfrom conformer_asr.cli import main\n"
              f"code = main(['transcribe', {str(EXAMPLES / 'weather.wav')!r}])\n"
              "print(code, [name for name in ('lhotse', 'torch._dynamo') if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 []"


@pytest.mark.skipif(not ffmpeg_installed(), reason="ffmpeg not installed (apt-get install ffmpeg)")
def test_an_m4a_recording_transcribes_as_its_wav_does(tmp_path):
    """A phone's m4a (here ALAC, lossless) goes through ffmpeg and reads as the WAV file it
    was made from: the same words at the same times."""
    m4a = tmp_path / "weather.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(EXAMPLES / "weather.wav"),
                    "-c:a", "alac", str(m4a)], check=True, timeout=60)
    result = _cli("transcribe", "--format", "json", "--words", "--lm", "none",
                  str(EXAMPLES / "weather.wav"), str(m4a))
    assert result.returncode == 0, result.stderr
    wav_row, m4a_row = (json.loads(line) for line in result.stdout.splitlines())
    assert m4a_row["audio"] == str(m4a) and wav_row["words"]
    assert {k: v for k, v in m4a_row.items() if k != "audio"} == {
        k: v for k, v in wav_row.items() if k != "audio"}


def test_model_info_reads_a_folder_and_names_a_bad_one(model_dir, tmp_path):
    result = _cli("model-info", str(model_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["encoder"]["d_model"] == 32
    assert report["params"]["total"] == sum(p.numel() for p in ASRModel(
        ModelConfig.from_dict(report["config"])).parameters())
    (tmp_path / "config.json").write_text("{not json")
    assert "lm" not in report and "decoding" not in report  # it has neither
    result = _cli("model-info", "default")  # the bundled model, as --model takes it
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    bundled = read_config(resolve_model_dir("default"))
    assert report["info"] == bundled.info and bundled.decoding is not None
    assert report["decoding"] == dataclasses.asdict(bundled.decoding)  # what it decodes with
    lm, _, lm_info = load_lm_dir(resolve_model_dir("default") / "lm")
    assert report["lm"] == {"name": lm.cfg.name, "info": lm_info,
                            "params": sum(p.numel() for p in lm.parameters())}
    result = _cli("model-info", str(tmp_path))
    assert result.returncode != 0
    assert "invalid model config" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_reader_that_leaves_early_gets_no_traceback(model_dir):
    """`conformer-asr model-info ... | head -1`: the pipe closes before the report is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as stdout:
        result = subprocess.run([sys.executable, "-m", "conformer_asr.cli", "model-info",
                                 str(model_dir)], stdout=stdout, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 141
    assert result.stderr == ""


def test_evaluate_writes_its_hypotheses_when_the_reader_has_left(model_dir, tmp_path):
    """`evaluate --output h.jsonl | head -1`: the report went first, and the closed pipe
    ended the run before the hypotheses file was written."""
    output = tmp_path / "hyps.jsonl"
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "conformer_asr.cli", "evaluate", "--manifest",
             str(DATA / "manifest.jsonl"), "--model", str(model_dir), "--output", str(output)],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (141, "")
    ids = [json.loads(line)["id"] for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == ids


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:99"]
                         + ([] if torch.cuda.is_available() else ["cuda"]))
def test_a_device_this_machine_lacks_is_a_usage_error(model_dir, device):
    result = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                  "--device", device)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].startswith(
        f"conformer-asr transcribe: error: argument --device: '{device}': ")
    assert "Traceback" not in result.stderr


def test_decoding_weights_without_an_lm_to_apply_them_to_are_errors(model_dir):
    """The model folder has no LM: a weight for one would be silently ignored."""
    with pytest.raises(ValueError, match="^lm_weight: there is no LM to weigh"):
        load_model(model_dir, lm_weight=0.5)
    result = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                  "--oov-penalty", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("error: oov_penalty: needs a lexicon")
    assert load_model(model_dir, oov_penalty=0.0).lexicon is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize(("setting", "value", "kind"), [
    ("beam_size", 8.0, "a whole number"), ("beam_size", True, "a whole number"),
    ("beam_size", "8", "a whole number"), ("lm_weight", "0.5", "a number")])
def test_decoding_settings_of_the_wrong_type_are_named_at_once(model_dir, setting, value, kind):
    """beam_size=8.0 loaded, then failed inside torch at the first search."""
    with pytest.raises(ValueError, match=f"^{setting}: must be {kind}, got {value!r}$"):
        load_model(model_dir, **{setting: value})
    assert load_model(model_dir, beam_size=np.int64(2)).options.beam_size == 2


def test_the_beam_threshold_reaches_the_search_and_must_be_positive(model_dir):
    assert load_model(model_dir).options.beam_threshold == DecodingOptions().beam_threshold
    assert load_model(model_dir, beam_threshold=3.5).options.beam_threshold == 3.5
    with pytest.raises(ValueError, match="^beam_threshold: must be > 0, got 0.0$"):
        load_model(model_dir, beam_threshold=0.0)
    for value in ("0", "-2", "inf", "nan", "x"):
        proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                    "--beam-threshold", value)
        assert proc.returncode == 2 and "--beam-threshold" in proc.stderr and not proc.stdout
    proc = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                "--beam-size", "4", "--beam-threshold", "1000", "--format", "json")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lm": 123}, "lm: an LM folder, a loaded WordPieceLM, None or 'auto'; got 123"),
    ({"lm": "none"}, "lm: 'none' is no folder; for no LM, give lm=None"),
    ({"options": {"beam_size": 4}}, "options: a DecodingOptions or None; got {'beam_size': 4}"),
    ({"int8": "yes"}, "int8: True or False; got 'yes'")])
def test_load_model_arguments_of_the_wrong_kind_are_named(model_dir, kwargs, message):
    """Each was an AttributeError or TypeError from deep inside, or (int8) taken as True."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_model(model_dir, **kwargs)


def test_python_api_names_no_input_and_empty_arrays(model_dir):
    transcriber = load_model(model_dir)
    with pytest.raises(ValueError, match=r"^inputs: a path or array, or a list of them; got "
                                         "None$"):  # was "'NoneType' object is not iterable"
        transcriber.transcribe(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^inputs: a path or array, or a list of them; got "
                                         "5$"):  # was "'int' object is not iterable"
        transcriber.transcribe(5)  # type: ignore[arg-type]
    with pytest.raises(AudioError, match=r"^input 0: no samples \(an empty array of shape "
                                         r"\(0,\)\)$"):  # was "expected (samples,) ...(0,)"
        transcriber.transcribe(np.zeros(0, np.float32))


def test_load_model_names_a_device_this_machine_lacks(model_dir):
    with pytest.raises(ValueError, match="^device 'cuda': torch sees no CUDA GPU here$"):
        load_model(model_dir, device="cuda")


def test_outputs_that_cannot_be_written_are_one_line_errors(model_dir, tmp_path):
    manifest = DATA / "manifest.jsonl"
    missing = tmp_path / "no-such-folder" / "hyps.jsonl"
    result = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir),
                  "--output", str(missing))
    assert result.returncode == 2
    assert result.stderr == f"error: {missing}: no folder {missing.parent} to write it in\n"
    result = _cli("evaluate", "--manifest", str(manifest), "--model", str(model_dir),
                  "--output", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path}: a folder, not a file to write the hypotheses to\n"
    copy = tmp_path / "manifest.jsonl"  # its references were replaced by the hypotheses
    copy.write_text("".join(json.dumps({**json.loads(line), "audio": str(DATA / json.loads(
        line)["audio"])}) + "\n" for line in manifest.read_text().splitlines()))
    before = copy.read_text()
    (tmp_path / "link.jsonl").symlink_to(copy)
    for output in (copy, tmp_path / "link.jsonl"):
        result = _cli("evaluate", "--manifest", str(copy), "--model", str(model_dir),
                      "--output", str(output))
        assert (result.returncode, result.stderr) == (2, f"error: {output}: the manifest being "
                                                         "scored; write the hypotheses to "
                                                         "another file\n")
    assert copy.read_text() == before
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                  "--out-dir", str(a_file / "subs"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: --out-dir {a_file / 'subs'}: ")
    result = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                  "--out-dir", str(a_file))
    assert (result.returncode, result.stderr) == (2, f"error: --out-dir {a_file}: a file, "
                                                     "not a folder\n")
    result = _cli("transcribe", str(DATA / "clip1.wav"), "--model", str(model_dir),
                  "--out-dir", "")  # wrote into the current folder
    assert (result.returncode, result.stderr) == (2, "error: --out-dir: an empty string is "
                                                     "not a folder name\n")
    # one output that cannot be written: named, and the other inputs' are still written
    subs = tmp_path / "subs"
    (subs / "clip1.txt").mkdir(parents=True)
    result = _cli("transcribe", str(DATA / "clip1.wav"), str(DATA / "clip2.wav"), "--model",
                  str(model_dir), "--out-dir", str(subs))
    assert result.returncode == 1
    assert result.stderr == f"error: {subs / 'clip1.txt'}: Is a directory\n"
    assert (subs / "clip2.txt").is_file()
    # named before the TTS engines are looked for (the GPU machine has none), as usage: 2
    result = _cli("synth", "--out", str(a_file / "corpus"), "--utterances", "1")
    assert (result.returncode, result.stderr) == (2, f"error: --out {a_file / 'corpus'}: Not "
                                                     "a directory\n")


def test_evaluate_prints_its_report_when_the_hypotheses_cannot_be_written(model_dir, tmp_path):
    """A disk that fills up during decoding (a file-size limit here) costs the hypotheses
    file, named in one line, not the report, which used to be lost with it."""
    output = tmp_path / "hyps.jsonl"
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it: EFBIG\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20, 20))\n"
              "from conformer_asr.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "evaluate", "--manifest", str(DATA / "manifest.jsonl"),
         "--model", str(model_dir), "--output", str(output)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stdout.startswith("WER ") and "RTF " in result.stdout
    assert result.stderr == f"error: {output}: File too large\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.ismount("/sys"), reason="no sysfs at /sys")
def test_outputs_in_a_folder_that_takes_no_files_are_found_out_before_decoding(model_dir):
    """sysfs takes no new files, even from root, as a read-only folder takes none from a
    user; transcribe's error used to come after decoding every input, naming each output,
    and evaluate's exit status was 1, as for a file that failed, not 2."""
    result = _cli("transcribe", str(DATA / "clip1.wav"), str(DATA / "clip2.wav"), "--model",
                  str(model_dir), "--out-dir", "/sys")
    assert (result.returncode, result.stderr) == (2, "error: --out-dir /sys: Permission denied\n")
    result = _cli("evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                  str(model_dir), "--output", "/sys/hyps.jsonl")
    assert (result.returncode, result.stderr) == (2, "error: /sys/hyps.jsonl: Permission denied\n")


def test_head_flag_picks_the_output_and_names_one_the_model_lacks():
    weather = str(EXAMPLES / "weather.wav")
    default, ctc = _cli("transcribe", weather), _cli("transcribe", weather, "--head", "ctc")
    assert default.returncode == ctc.returncode == 0 and ctc.stdout == default.stdout
    for head, message in (("transducer", "head transducer: the model has no transducer (it "
                                         "is CTC only)"),
                          ("attention", "head: give one of auto, ctc, transducer, got "
                                        "'attention'")):
        proc = _cli("transcribe", weather, "--head", head)
        assert (proc.returncode, proc.stderr) == (2, f"error: {message}\n")


def test_every_option_help_tells_its_default():
    """Options with a default named it nowhere (``train-lm --steps`` had no help at all)."""
    from conformer_asr.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    helps = {name: " ".join(p.format_help().split()) for name, p in commands.items()}
    assert "--steps STEPS training steps in all (default: 2000)" in helps["train-lm"]
    assert "--seed SEED seed of the held-out split" in helps["train-lm"]
    assert "(default: 0,0.1,0.2,0.3,0.4,0.5)" in helps["tune"]  # a list, as it is typed
    assert "--oov-penalty OOV_PENALTY from conformer-asr tune (default: 0)" in helps["pack"]
    assert "(default: None)" not in " ".join(helps.values())  # nothing to show, not shown
    assert "--int8 run the model's Linear" in helps["transcribe"] and "(default: False)" not in \
        helps["transcribe"]
    for name, parser in commands.items():
        for action in parser._actions:
            if action.option_strings and not any(action.default is nothing for nothing in (
                    None, False, argparse.SUPPRESS)) and action.default != []:
                assert action.help and "default" in parser._get_formatter()._get_help_string(
                    action), f"{name} {action.option_strings[0]}"


def test_help_needs_no_torch():
    """`conformer-asr --help` took 1.8 s: importing the package imported torch."""
    code = ("import sys\nfrom conformer_asr.cli import main\n"
            "for argv in (['--help'], ['transcribe', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import conformer_asr\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.splitlines()[-1] == "False"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_during_an_import_that_catches_it_still_stops(tmp_path, monkeypatch):
    """torch's import sometimes catches the KeyboardInterrupt of a Ctrl-C and goes on (3 of
    40 tries), and the command then ran to the end. Here a module does so every time; the
    Ctrl-C is held until its import is done, then raised."""
    import signal

    from conformer_asr.cli import _import_holding_ctrl_c

    (tmp_path / "catches_ctrl_c.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.5)  # the interrupt lands here\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _import_holding_ctrl_c("catches_ctrl_c")
    assert sys.modules["catches_ctrl_c"].LOADED
    assert signal.getsignal(signal.SIGINT) is handler
    monkeypatch.delitem(sys.modules, "catches_ctrl_c")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_while_torch_loads_ends_quietly():
    """Ctrl-C in the first second printed a traceback from inside torch's or lhotse's
    import, and the exit status was -2 instead of 130."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "conformer_asr.cli", "transcribe",
                             str(EXAMPLES / "weather.wav")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # once torch's library is mapped, its import is under way (a fixed half second was
    # still the interpreter's start on a loaded machine: killed by the signal, -2)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "")
