"""Reading damaged and non-audio files: what decodes is read, the rest is a one-line error."""

import json
import os
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_asr.audio.ffmpeg import ffmpeg_installed
from conformer_asr.audio.io import (
    AudioError,
    AudioSlice,
    AudioWarning,
    audio_duration,
    load_audio,
    stream_audio,
)

WEATHER = Path(__file__).parents[1] / "examples" / "weather.wav"


def _cut(tmp_path: Path, name: str, fmt: str) -> tuple[Path, np.ndarray]:
    """The first half of the bytes of weather.wav written as ``fmt``; its (N,) samples whole."""
    audio, rate = sf.read(WEATHER, dtype="float32")
    whole = tmp_path / f"whole-{name}"
    sf.write(whole, audio, rate, format=fmt)
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    return cut, sf.read(whole, dtype="float32")[0]


def _streamed(path: Path) -> np.ndarray:
    return np.concatenate(list(stream_audio(path, block_seconds=0.5)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformer_asr.cli", "transcribe", *args],
                          capture_output=True, text=True, timeout=300)


def _cut_short_warning(path: Path) -> str:
    """The start of the AudioWarning for weather.wav (2.9 s) cut at 1.3 s."""
    return f"^{path}: only 1.3 s of the 2.9 s its header gives could be read"


def _unfinished_wav(path: Path, extra_chunk: bytes = b"", fmt: str = "WAV") -> np.ndarray:
    """weather.wav in 24 bits as ``fmt`` (WAV, or WAVEX: WAVE_FORMAT_EXTENSIBLE), with
    ``extra_chunk`` before its data, written to ``path`` with the RIFF and data sizes 0, as
    a recorder killed before it wrote them leaves them; -> the samples as soundfile reads
    the finished file."""
    finished = path.with_name("finished.wav")
    sf.write(finished, sf.read(WEATHER, dtype="float32")[0], 16000, subtype="PCM_24",
             format=fmt)
    data = finished.read_bytes()
    at = data.index(b"data")
    path.write_bytes(data[:4] + bytes(4) + data[8:at] + extra_chunk + b"data" + bytes(4)
                     + data[at + 8:])
    return sf.read(finished, dtype="float32")[0]


@pytest.mark.parametrize(("extra_chunk", "fmt"), [
    (b"", "WAV"), (b"LIST" + (3).to_bytes(4, "little") + b"abc\0", "WAV"), (b"", "WAVEX"),
])
def test_an_unfinished_wav_is_read_with_a_warning(tmp_path, extra_chunk, fmt):
    """A WAV whose header gives no samples read as holding none, a recording lost."""
    path = tmp_path / "unfinished.wav"
    expected = _unfinished_wav(path, extra_chunk, fmt)
    warning = (f"^{path}: its header gives no samples, as a recording stopped before it was "
               "finished leaves it; the 2.9 s of data after it are read$")
    with pytest.warns(AudioWarning, match=warning):
        np.testing.assert_array_equal(load_audio(path), expected)
    with pytest.warns(AudioWarning, match=warning):
        np.testing.assert_array_equal(_streamed(path), expected)


@pytest.mark.parametrize("after", [
    b"", b"LIST" + (5).to_bytes(4, "little") + b"INFOx\0", b"\x01\x02",  # < one 3-byte frame
])
def test_a_wav_with_no_data_after_its_header_is_still_an_error(tmp_path, after):
    """Nothing after the empty data chunk, only metadata chunks, or less than a frame: not
    read as samples, and no warning that says otherwise before the error."""
    path = tmp_path / "header-only.wav"
    _unfinished_wav(path)
    path.write_bytes(path.read_bytes()[:path.read_bytes().index(b"data") + 8] + after)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioWarning)
        with pytest.raises(AudioError, match=f"^{path}: contains no audio samples$"):
            load_audio(path)


def test_a_cut_mp3_is_read_up_to_the_cut(tmp_path, capfd):
    """Its header still counts the whole file's frames; the blocks held uninitialised
    memory (NaN or noise) past the cut, and libmpg123 warned on stderr. The reader warns
    (it said nothing)."""
    cut, whole = _cut(tmp_path, "cut.mp3", "MP3")
    decodable = len(sf.read(cut)[0])  # soundfile's read stops at the cut
    assert 0.3 * len(whole) < decodable < 0.6 * len(whole)
    capfd.readouterr()  # what libmpg123 said to soundfile
    with pytest.warns(AudioWarning, match=_cut_short_warning(cut) + "; cut short or damaged"):
        streamed = _streamed(cut)
    assert len(streamed) == decodable and np.isfinite(streamed).all()
    with pytest.warns(AudioWarning, match=_cut_short_warning(cut)):
        np.testing.assert_allclose(load_audio(cut), streamed, atol=1e-6)
    assert capfd.readouterr().err == ""


def test_whole_files_give_no_warning(tmp_path):
    audio, rate = sf.read(WEATHER, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fmt in ("WAV", "FLAC", "MP3", "OGG"):
            sf.write(tmp_path / f"whole.{fmt.lower()}", audio, rate, format=fmt)
            load_audio(tmp_path / f"whole.{fmt.lower()}")
            _streamed(tmp_path / f"whole.{fmt.lower()}")


def test_a_cut_flac_is_read_up_to_the_damage(tmp_path, capfd):
    """libFLAC loses sync at the cut; the frames before it are kept, as in a cut WAV file."""
    cut, whole = _cut(tmp_path, "cut.flac", "FLAC")
    with pytest.warns(AudioWarning, match=_cut_short_warning(cut) + r" \(flac decoder lost "
                                          r"sync\.\); cut short or damaged\? What was read is "
                                          "used$"):
        read = [load_audio(cut), _streamed(cut)]
    for samples in read:
        assert 0.3 * len(whole) < len(samples) < 0.5 * len(whole)
        np.testing.assert_array_equal(samples, whole[: len(samples)])
    assert capfd.readouterr().err == ""


def test_a_flac_with_no_decodable_frame_is_corrupt(tmp_path):
    cut = tmp_path / "header.flac"
    sf.write(tmp_path / "whole.flac", sf.read(WEATHER)[0], 16000)
    cut.write_bytes((tmp_path / "whole.flac").read_bytes()[:100])
    for read in (load_audio, _streamed):
        with pytest.raises(AudioError) as error:
            read(cut)
        assert str(error.value) == f"{cut}: corrupt audio data (flac decoder lost sync.)"


def test_random_bytes_and_an_empty_file_are_named_as_such(tmp_path, capfd):
    """libsndfile's MP3 probe printed libmpg123's notes and called random bytes "not a
    regular file"; a file of 0 bytes was "Format not recognised."."""
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).bytes(20000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for path, reason in ((garbage, "not a readable audio file (Format not recognised.)"),
                         (empty, "empty file")):
        for read in (load_audio, _streamed):
            with pytest.raises(AudioError) as error:
                read(path)
            assert str(error.value) == f"{path}: {reason}"
    assert capfd.readouterr().err == ""


def test_the_cli_reads_cut_files_and_gives_one_line_per_bad_one(tmp_path):
    cut_mp3, _ = _cut(tmp_path, "cut.mp3", "MP3")
    cut_flac, _ = _cut(tmp_path, "cut.flac", "FLAC")
    proc = _cli(str(cut_mp3), str(cut_flac), "--format", "json")
    assert proc.returncode == 0
    assert [line.split(" could be read")[0] for line in proc.stderr.splitlines()] == [
        f"warning: {p}: only 1.3 s of the 2.9 s its header gives" for p in (cut_mp3, cut_flac)]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["audio"] for r in rows] == [str(cut_mp3), str(cut_flac)]
    assert all(r["text"] and 1.0 < r["duration"] < 1.5 for r in rows)

    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(np.random.default_rng(0).bytes(20000))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    proc = _cli(str(garbage), str(empty), str(WEATHER))
    assert proc.returncode == 1 and proc.stdout.startswith(f"{WEATHER}\t")
    assert proc.stderr.splitlines() == [
        f"error: {garbage}: not a readable audio file (Format not recognised.)",
        f"error: {empty}: empty file"]


def test_a_file_that_cannot_be_opened_is_an_audio_error(tmp_path, monkeypatch):
    """Not an OSError, which would stop a whole batch (root reads any file, so the refusal
    is simulated; by hand with `capsh --drop=cap_dac_override,...` the CLI says the same)."""
    path = tmp_path / "locked.wav"
    path.write_bytes(WEATHER.read_bytes())
    real_open = Path.open

    def refuse(self: Path, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    for read in (load_audio, _streamed):
        with pytest.raises(AudioError, match=f"^{path}: Permission denied$"):
            read(path)


def test_reading_wav_or_flac_leaves_other_threads_stderr_alone(tmp_path, capfd):
    """fd 2 went to the null device while any file was opened or decoded (libmpg123's
    notes), so a server's log lines from other threads were lost; now only MP3 data, and
    files of no known format, are read so."""
    audio, rate = sf.read(WEATHER, dtype="float32")
    sf.write(tmp_path / "a.flac", audio, rate)
    done = threading.Event()

    def read_files() -> None:
        while not done.is_set():
            for path in (WEATHER, tmp_path / "a.flac"):
                np.concatenate(list(stream_audio(path, block_seconds=0.01)))

    reader = threading.Thread(target=read_files)
    reader.start()
    try:
        for i in range(300):
            os.write(2, f"line {i}\n".encode())
    finally:
        done.set()
        reader.join()
    assert capfd.readouterr().err.splitlines() == [f"line {i}" for i in range(300)]


def test_quiet_stderr_restores_fd_2_on_error(capfd):
    from conformer_asr.stderr import quiet_stderr

    with pytest.raises(ValueError), quiet_stderr():
        os.write(2, b"hidden\n")
        raise ValueError
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_a_slice_reads_the_samples_of_its_part_of_the_file(tmp_path, fmt):
    """AudioSlice (a Lhotse cut of a long recording, for evaluate): the frames from its
    start for its duration, of one channel or all averaged, named in its errors."""
    rng = np.random.default_rng(0)
    stereo = (rng.uniform(-0.5, 0.5, (48000, 2)) * 32767).astype(np.int16)
    path = tmp_path / f"long.{fmt.lower()}"
    sf.write(path, stereo, 16000, format=fmt, subtype="PCM_16")
    whole = sf.read(path, dtype="float32")[0]
    part = AudioSlice(path, start=1.25, duration=0.5, channel=1)
    np.testing.assert_array_equal(load_audio(part), whole[20000:28000, 1])
    both = AudioSlice(path, start=0.0, duration=3.0)
    np.testing.assert_array_equal(load_audio(both), whole.mean(axis=1))
    assert audio_duration(part) == 0.5
    for block_seconds in (0.1, 10.0):  # read block by block, as the transcriber reads it
        streamed = np.concatenate(list(stream_audio(part, block_seconds=block_seconds)))
        np.testing.assert_array_equal(streamed, load_audio(part))
    assert len(load_audio(AudioSlice(path, 2.75, 1.0))) == 4000  # the file ends first
    for bad, reason in [(AudioSlice(path, 3.0, 1.0), "starts outside the file (3.00 s long)"),
                        (AudioSlice(path, 1.0, 1.0, channel=2), "no channel 2 (the file has 2)")]:
        for read in (load_audio, audio_duration):  # tune checks durations first
            with pytest.raises(AudioError) as error:
                read(bad)
            assert str(error.value) == f"{path} ({bad.start:.2f}-{bad.start + 1:.2f} s): {reason}"
    with pytest.raises(AudioError, match="no such file"):
        audio_duration(AudioSlice(tmp_path / "gone.wav", 0.0, 1.0))


def _chained_ogg(tmp_path: Path) -> tuple[Path, Path]:
    """(a.ogg: 2 s of a tone, ab.ogg: a.ogg and then 1.5 s of the tone as a second stream):
    ``cat a.ogg b.ogg`` makes one valid OGG file of two streams."""
    tone = (0.3 * np.sin(np.arange(32000) / 10)).astype(np.float32)
    first, second, chained = tmp_path / "a.ogg", tmp_path / "b.ogg", tmp_path / "ab.ogg"
    sf.write(first, tone, 16000, format="OGG", subtype="VORBIS")
    sf.write(second, tone[:24000], 16000, format="OGG", subtype="VORBIS")
    chained.write_bytes(first.read_bytes() + second.read_bytes())
    return first, chained


def test_without_ffmpeg_a_chained_ogg_file_says_that_only_its_first_stream_is_read(
        tmp_path, monkeypatch):
    """libsndfile reads a chained file's first stream and stops: without ffmpeg, the rest
    is not dropped without a word."""
    first, chained = _chained_ogg(tmp_path)
    monkeypatch.setattr("conformer_asr.audio.ffmpeg.shutil.which", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = load_audio(first)  # one stream: no warning
    with pytest.warns(AudioWarning) as caught:
        samples = load_audio(chained)
    assert [str(w.message) for w in caught] == [
        f"{chained}: 2 OGG streams one after another (chained), of which only the first "
        "(2.0 s) can be read without the ffmpeg program; install it (apt-get install "
        "ffmpeg) or split the file to transcribe the rest"]
    np.testing.assert_array_equal(samples, alone)


needs_ffmpeg = pytest.mark.skipif(not ffmpeg_installed(),
                                  reason="ffmpeg not installed (apt-get install ffmpeg)")


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True,
                   timeout=60)


@needs_ffmpeg
def test_a_chained_ogg_file_is_read_whole_through_ffmpeg(tmp_path):
    """With ffmpeg installed, both streams are read, without a warning: the first as
    libsndfile reads it, then the second (ffmpeg adds a few ms of the codec's last block at
    the end of each stream, so the second starts 2.0-2.1 s in). A slice is the same
    samples as the whole file's there, in the second stream too (where ffmpeg's own seek
    fails)."""
    first, chained = _chained_ogg(tmp_path)
    alone = load_audio(first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = load_audio(chained)
        duration = audio_duration(chained)
    assert 3.5 <= len(samples) / 16000 == duration <= 3.6
    np.testing.assert_allclose(samples[:32000], alone, atol=1e-5)
    second = samples[34000:55000]  # inside the second stream
    assert np.sqrt(np.mean(second**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)
    for start in (0.5, 2.5):
        first = round(start * 16000)
        np.testing.assert_array_equal(load_audio(AudioSlice(chained, start, 0.5)),
                                      samples[first : first + 8000])


@needs_ffmpeg
@pytest.mark.parametrize(("name", "codec"), [("a.m4a", "alac"), ("-b:1.mka", "pcm_s16le")])
def test_formats_libsndfile_lacks_are_read_through_ffmpeg(tmp_path, name, codec):
    """m4a (ALAC) and Matroska (PCM) hold the WAV file's samples losslessly: read through
    ffmpeg, whole and streamed, they are the WAV file's to the last bit (a name that
    starts with "-" and holds ":" is still a file name to ffmpeg). A slice starts where
    ffmpeg's seek lands, within the container's timestamp resolution (Matroska's is 1 ms)."""
    rng = np.random.default_rng(0)
    stereo = (rng.uniform(-0.5, 0.5, (48000, 2)) * 32767).astype(np.int16)
    wav, other = tmp_path / "a.wav", tmp_path / name
    sf.write(wav, stereo, 16000, subtype="PCM_16")
    _ffmpeg("-i", wav, "-c:a", codec, f"file:{other}")
    np.testing.assert_array_equal(load_audio(other), load_audio(wav))
    np.testing.assert_array_equal(_streamed(other), _streamed(wav))
    assert audio_duration(other) == pytest.approx(3.0, abs=1e-3)
    right = stereo[:, 1] / np.float32(32768)
    part = AudioSlice(other, 1.25, 0.5, channel=1)
    samples = load_audio(part)
    assert len(samples) == 8000
    lags = [lag for lag in range(-16, 17)
            if np.array_equal(samples, right[20000 + lag : 28000 + lag])]
    assert len(lags) == 1, lags
    np.testing.assert_array_equal(np.concatenate(list(stream_audio(part, 0.1))), samples)
    with pytest.raises(AudioError, match=r"starts outside the file \(3.00 s long\)"):
        load_audio(AudioSlice(other, 3.5, 1.0))


@needs_ffmpeg
def test_lossy_and_unfinished_ffmpeg_files(tmp_path):
    """A browser's recording (Opus in WebM, written as a stream: no length in it) is
    counted; a WebM file cut short is read up to the cut with a warning, as a FLAC file
    is; an m4a file cut short (its index is at the end) and a video without sound are
    one-line errors that say so."""
    speech = load_audio(WEATHER)
    streamed, whole, m4a = tmp_path / "rec.webm", tmp_path / "whole.webm", tmp_path / "a.m4a"
    with streamed.open("wb") as out:  # to a pipe: ffmpeg cannot go back to write the length
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(WEATHER), "-c:a",
                        "libopus", "-f", "webm", "-"], stdout=out, check=True, timeout=60)
    assert audio_duration(streamed) == pytest.approx(len(speech) / 16000, abs=0.03)
    decoded = load_audio(streamed)
    n = min(len(decoded), len(speech))
    assert np.corrcoef(decoded[:n], speech[:n])[0, 1] > 0.95  # lossy, but the same speech
    _ffmpeg("-i", WEATHER, "-c:a", "libopus", whole)
    cut = tmp_path / "cut.webm"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.warns(AudioWarning, match=rf"^{cut}: only 1\.\d s of the 2\.9 s its header "
                                          "gives could be read"):
        assert 0.3 < len(load_audio(cut)) / len(speech) < 0.7
    _ffmpeg("-i", WEATHER, "-c:a", "aac", m4a)
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(m4a.read_bytes()[: m4a.stat().st_size // 2])
    with pytest.raises(AudioError) as error:
        load_audio(cut)
    assert str(error.value) == (f"{cut}: not a readable audio file (an MP4 file without its "
                                "index, the moov box: a recording stopped before it was "
                                "finished, or a file cut short)")
    silent = tmp_path / "silent.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5", "-pix_fmt",
            "yuv420p", silent)
    with pytest.raises(AudioError) as error:
        audio_duration(silent)
    assert str(error.value) == f"{silent}: no audio in it (video only)"


def test_without_ffmpeg_the_error_says_what_reads_such_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr("conformer_asr.audio.ffmpeg.shutil.which", lambda name: None)
    for name, hint in [("talk.M4A", "; .m4a files are read through the ffmpeg program, "
                                     "which is not installed (apt-get install ffmpeg)"),
                       ("notes.txt", "")]:
        path = tmp_path / name
        path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(range(256)) * 8)
        with pytest.raises(AudioError) as error:
            load_audio(path)
        assert str(error.value) == (f"{path}: not a readable audio file (Format not "
                                    f"recognised.){hint}")
    # an MP4 file's boxes, cut in its audio data before the index: ffmpeg would not help
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(struct.pack(">I4s8s", 16, b"ftyp", b"M4A \0\0\0\0")
                    + struct.pack(">I4s", 100_000, b"mdat") + bytes(1000))
    with pytest.raises(AudioError) as error:
        load_audio(cut)
    assert str(error.value) == (f"{cut}: not a readable audio file (an MP4 file without its "
                                "index, the moov box: a recording stopped before it was "
                                "finished, or a file cut short)")
