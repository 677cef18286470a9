"""Pause finding (how the transcriber uses it: tests/test_transcribe_cli.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conformer_asr.audio.pauses import find_pauses, is_steady, quantiles, rises_above_its_floor

RATE = 16000


def bursts_and_gaps(parts: list[tuple[str, float]], noise_rms: float = 0.0,
                    seed: int = 0) -> np.ndarray:
    """("burst" | "gap", seconds) -> noise bursts at -20 dBFS with silent gaps between,
    all over white noise of ``noise_rms``."""
    rng = np.random.default_rng(seed)
    pieces = [(0.1 if kind == "burst" else 0.0) * rng.standard_normal(round(seconds * RATE))
              for kind, seconds in parts]
    audio = np.concatenate(pieces)
    return (audio + noise_rms * rng.standard_normal(len(audio))).astype(np.float32)


@pytest.mark.parametrize(("noise_rms", "offset"), [
    (0.0, 0.0), (1e-3, 0.0),  # digital silence, -60 dBFS noise
    (1e-3, 0.01), (0.0, 0.1)])  # with a DC offset (it hid every pause)
def test_pauses_are_the_long_enough_quiet_stretches(noise_rms, offset):
    parts = [("burst", 1.0), ("gap", 0.2), ("burst", 1.0), ("gap", 0.5), ("burst", 0.7),
             ("gap", 1.3), ("burst", 2.0)]
    audio = bursts_and_gaps(parts, noise_rms) + np.float32(offset)
    found = find_pauses(audio, min_seconds=0.3)
    expected = [(2.2, 2.7), (3.4, 4.7)]  # the 0.2 s gap is too short
    assert len(found) == len(expected)
    for (start, end), (want_start, want_end) in zip(found, expected, strict=True):
        assert start / RATE == pytest.approx(want_start, abs=0.011)
        assert end / RATE == pytest.approx(want_end, abs=0.011)


def test_quiet_background_alone_is_one_pause_and_a_steady_sound_none():
    for noise_rms in (0.0, 3e-4):  # digital silence, -70 dBFS noise
        silence = bursts_and_gaps([("gap", 3.0)], noise_rms=noise_rms)
        assert find_pauses(silence) == [(0, 3 * RATE)]
    assert find_pauses(bursts_and_gaps([("burst", 3.0)])) == []
    assert find_pauses(np.zeros(100, np.float32)) == []  # shorter than a frame


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples,) noise whose power falls as 1/f (fans, air conditioning), RMS 1."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    hz = np.fft.rfftfreq(samples, 1.0 / RATE)
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(hz, hz[1])), samples)
    return noise / noise.std()


def test_steady_sounds_are_told_from_speech():
    """Silence, dither, hum and noise alone are steady (the transcriber does not decode
    them); speech is not, even at 1e-4 of full scale or in white or pink noise as loud as
    it. Pink noise, whose level spreads more than white noise's, used to read as words."""
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    steady = {
        "digital silence": np.zeros(3 * RATE),
        "16-bit dither": rng.integers(-1, 2, 3 * RATE) / 32768,
        "50 Hz hum": 0.01 * np.sin(2 * np.pi * 50 * t) + 0.003 * np.sin(2 * np.pi * 150 * t),
        "white noise, -40 dBFS": 0.01 * rng.standard_normal(3 * RATE),
        "white noise, -80 dBFS": 1e-4 * rng.standard_normal(3 * RATE),
        "pink noise, -30 dBFS": 0.03 * pink_noise(3 * RATE, rng),
        "pink noise, 0.3 s": 0.03 * pink_noise(round(0.3 * RATE), rng),
        "pink noise, 20 s": 0.03 * pink_noise(20 * RATE, rng),
    }
    for name, audio in steady.items():
        assert is_steady(audio.astype(np.float32)), name
    speech, rate = sf.read(Path(__file__).parent / "data" / "clip1.wav", dtype="float32")
    assert rate == RATE
    loudness = np.sqrt(np.mean(speech**2))
    for name, audio in {"speech": speech, "speech at 1e-4": 1e-4 * speech / np.abs(speech).max(),
                        "speech in white noise, 0 dB SNR":
                            speech + loudness * rng.standard_normal(len(speech)),
                        "speech in pink noise, 0 dB SNR":
                            speech + loudness * pink_noise(len(speech), rng)}.items():
        assert not is_steady(audio.astype(np.float32)), name


def test_noise_never_rises_above_its_floor_whatever_the_seed():
    """The spectral test's premise, over seeds and lengths: Gaussian white and pink noise
    have no frame with cells 20 dB above their band's floor."""
    rng = np.random.default_rng(1)
    for seconds in (0.3, 2.0, 10.0):
        for _ in range(10):
            samples = round(seconds * RATE)
            assert not rises_above_its_floor(rng.standard_normal(samples).astype(np.float32))
            assert not rises_above_its_floor(pink_noise(samples, rng).astype(np.float32))
    assert not rises_above_its_floor(np.zeros(300, np.float32))  # shorter than a frame
    assert is_steady(np.zeros(100, np.float32))  # shorter than a frame: nothing to decode


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001])
def test_quantiles_are_numpys(n):
    values = np.random.default_rng(n).normal(size=(3, n)) * 20
    qs = [0.0, 0.05, 0.1, 0.5, 0.95, 1.0]
    assert np.allclose(quantiles(values[0], qs), np.quantile(values[0], qs))
    assert np.allclose(quantiles(values, qs), np.quantile(values, qs, axis=1))


def test_finding_pauses_does_not_import_numpy_ma():
    """np.quantile imports numpy.ma on its first call: 85 ms of a one-file transcribe."""
    code = ("import sys, numpy as np\n"
            "from conformer_asr.audio.pauses import find_pauses, is_steady\n"
            "audio = np.random.default_rng(0).normal(size=32000).astype(np.float32)\n"
            "find_pauses(audio), is_steady(audio)\n"
            "print('numpy.ma' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
