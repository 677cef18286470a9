"""Pause finding (how the transcriber uses it: tests/test_transcribe_cli.py)."""

import numpy as np
import pytest

from conformer_asr.audio.pauses import find_pauses

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
