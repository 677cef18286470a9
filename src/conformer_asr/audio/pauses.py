"""Pauses in a recording from the level of its 10 ms frames: where a long recording can
be cut between words.

A frame is quiet when its level is near the background and well below the speech,
``max(floor + 10 dB, loud - 35 dB)``, where ``floor`` and ``loud`` are the 5th and 95th
percentiles of the frame levels, and at least 10 dB below ``loud`` (a steady sound is
not a pause); or when it is below -60 dBFS whatever the rest. A pause is a run of quiet
frames at least ``min_seconds`` long.
"""

from __future__ import annotations

import numpy as np

from .io import SAMPLE_RATE

FRAME_SECONDS = 0.01
SILENCE_DB = -90.0  # digital silence reads as this level, not as -inf
ABOVE_FLOOR_DB = 10.0
BELOW_LOUD_DB = 35.0
MIN_BELOW_LOUD_DB = 10.0
QUIET_DBFS = -60.0
STEADY_DB = 2.5
RISE_WINDOW_SECONDS = 0.025
RISE_BAND_HZ = (125.0, 4000.0)
RISE_BINS = 8
RISE_DB = 20.0
RISE_CELLS = 3


def frame_levels(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, floor_db: float = SILENCE_DB
) -> np.ndarray:
    """(N,) float in [-1, 1] -> (N // frame,) level of each whole 10 ms frame in dBFS, its
    mean left out (a DC offset, a cheap sound card's, -40 dBFS and more, made every frame
    loud, so that no pause was found), and ``floor_db`` at the least."""
    frame = round(FRAME_SECONDS * sample_rate)
    count = len(samples) // frame
    frames = samples[: count * frame].reshape(count, frame).astype(np.float64)
    power = frames.var(axis=1)
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (floor_db / 10.0)))


def quantiles(values: np.ndarray, qs: list[float]) -> np.ndarray:
    """(..., N), N >= 1 -> (len(qs), ...): the ``qs`` (in [0, 1]) quantiles along the last
    axis, interpolated linearly between the sorted values as ``np.quantile`` does by
    default. ``np.quantile`` itself imports ``numpy.ma`` on its first call (numpy 2.4):
    85 ms of a one-file ``conformer-asr transcribe``."""
    ordered = np.sort(values, axis=-1)
    positions = np.asarray(qs, dtype=np.float64) * (ordered.shape[-1] - 1)
    below = np.floor(positions).astype(np.intp)
    above = np.minimum(below + 1, ordered.shape[-1] - 1)
    low, high = np.moveaxis(ordered[..., below], -1, 0), np.moveaxis(ordered[..., above], -1, 0)
    fraction = (positions - below).reshape(-1, *(1,) * (ordered.ndim - 1))
    return low + (high - low) * fraction


def find_pauses(
    samples: np.ndarray, min_seconds: float = 0.3, sample_rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """(N,) -> the pauses as [(start, end)] sample indices, in order (module docstring)."""
    levels = frame_levels(samples, sample_rate)
    if len(levels) == 0:
        return []
    floor, loud = quantiles(levels, [0.05, 0.95])
    threshold = min(max(floor + ABOVE_FLOOR_DB, loud - BELOW_LOUD_DB), loud - MIN_BELOW_LOUD_DB)
    quiet = (levels < threshold) | (levels < QUIET_DBFS)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    frame = round(FRAME_SECONDS * sample_rate)
    shortest = round(min_seconds / FRAME_SECONDS)
    return [(int(start) * frame, int(end) * frame)
            for start, end in zip(edges[::2], edges[1::2], strict=True)
            if end - start >= shortest]


def is_steady(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether (N,) ``samples`` hold one steady sound and no speech, by either of two tests.

    Their level: the levels of their 10 ms frames spread over less than ``STEADY_DB``
    (95th minus 5th percentile). Speech rises and falls from syllable to syllable: 14.5 dB
    or more in the synthetic test sets, still 5.1 dB in white noise as loud as it (0 dB SNR)
    and 3.0 dB at -5 dB SNR. Digital silence, dither and hum spread 0 dB, white noise 1.5;
    pink noise (3.8) and brown noise (rumble, 10.7) escape this test. Levels go down to
    -300 dBFS here: speech at -80 dBFS (1e-4 of full scale) is speech.

    Their spectrum: noise, whatever its colour, hardly ever rises far above its own floor
    in any part of the spectrum (``rises_above_its_floor``); speech does, in its
    syllables. Hum, whose harmonics stand far above the floor between them, escapes this
    test."""
    levels = frame_levels(samples, sample_rate, floor_db=-300.0)
    if len(levels) == 0:
        return True
    floor, loud = quantiles(levels, [0.05, 0.95])
    return bool(loud - floor < STEADY_DB) or not rises_above_its_floor(samples, sample_rate)


def rises_above_its_floor(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether (N,) ``samples`` rise ``RISE_DB`` above their floor anywhere in 125-4000 Hz.

    A spectrogram of 25 ms frames is cut into bands of ``RISE_BINS`` bins; a band's floor
    is the 10th percentile of its cells' power. In Gaussian noise of any colour, a cell's
    power, over its mean, is exponentially distributed whatever the spectrum: 100 times the
    floor (20 dB) or more is 1 chance in 36,000, and ``RISE_CELLS`` such cells in one
    frame do not happen. Speech has them in its loud syllables: at least 49 frames in each
    of the 6,463 synthetic dev and test utterances; in the first 300 of ``test_unseen``,
    at least 6 with white and 10 with pink noise as loud as the speech (0 dB SNR), while
    at -5 dB SNR 1 and 3 of them have none. White and pink noise never rose (10 seeds of
    20 s, 100 of 0.3 s); brown noise, whose steep spectrum slopes within a band, rose in 4
    of the 10 20 s seeds and 2 of the 100 short ones."""
    window = round(RISE_WINDOW_SECONDS * sample_rate)
    hop = round(FRAME_SECONDS * sample_rate)
    count = 1 + (len(samples) - window) // hop if len(samples) >= window else 0
    if count == 0:
        return False
    starts = hop * np.arange(count)
    frames = samples[starts[:, None] + np.arange(window)].astype(np.float64)
    power = np.abs(np.fft.rfft(frames * np.hanning(window), axis=1)) ** 2  # (count, bins)
    hz = np.fft.rfftfreq(window, 1.0 / sample_rate)
    power = power[:, (hz >= RISE_BAND_HZ[0]) & (hz <= RISE_BAND_HZ[1])]
    bands = power.shape[1] // RISE_BINS
    power = power[:, : bands * RISE_BINS].reshape(count, bands, RISE_BINS)
    (floors,) = quantiles(power.transpose(1, 0, 2).reshape(bands, -1), [0.1])
    risen = power > 10.0 ** (RISE_DB / 10.0) * floors[None, :, None]
    return bool((risen.reshape(count, -1).sum(axis=1) >= RISE_CELLS).any())
