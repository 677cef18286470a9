"""On-the-fly waveform augmentation: speed, pauses, reverberation, additive noise,
bandwidth, gain.

Meant to help a model trained on clean (e.g. TTS) speech cope with real recordings.
Every random choice comes from the ``np.random.Generator`` passed to each call, so
the caller decides what the result depends on (the training dataset derives it from
seed, epoch and utterance id). The bank of room impulse responses is drawn once from
the Augmenter's own seed, so every DataLoader worker builds the same bank.

Order of the steps, as in a real recording chain:

1. speed: resample by a factor drawn from ``speed`` (pitch and tempo change together,
   like Kaldi/Lhotse speed perturbation); 1.1 makes the utterance 1.1x shorter.
2. pad: with probability ``pad_prob``, silence before and after the speech, each of a
   length drawn from ``pad_seconds``. TTS utterances start and stop with the speech,
   and a model trained on them alone reads silence badly: 0.5 s of it on both sides of
   each test utterance took such a model's greedy WER from 40% to 62%
   (``recipes/synthetic/pauses.py``; the bundled model trained on with this step).
3. reverb: convolve with a simulated room impulse response (see ``simulate_rir``).
4. noise: add synthetic noise at an SNR drawn from ``snr_db`` (see ``NOISE_KINDS``),
   over the padding too (the SNR is over the whole padded utterance).
5. band: with probability ``band_prob``, the bandwidth of a phone line or a low-rate
   recording: resampled to a rate drawn from ``band_rate`` (Hz) and back, which keeps
   what lies below half that rate. A model trained on 16 kHz speech alone reads it
   badly: 8 kHz copies of the first 300 ``test_seen`` utterances took the bundled model
   trained without this step from 9.7% to 49.7% WER (greedy 24.6% to 69.1%).
6. gain: scale by a level drawn from ``gain_db``.

The result is then scaled down if needed so that no sample lies outside [-1, 1]
(scaling, not clipping, so no distortion is added). Nothing here reads audio files:
the noises and rooms are synthesised, so there is no third-party audio to license.

One more perturbation acts on the features, not the waveform: vocal tract length
perturbation (VTLP, Jaitly & Hinton 2013), a per-utterance warp of the frequency axis
that moves formants as a longer or shorter vocal tract would, at the same pitch and
tempo. ``Augmenter.warp_factor`` draws it; the feature extractor applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soxr

from ..audio.io import SAMPLE_RATE
from ..models.config import ConfigError, float_tuple


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """Flat spectrum: electronic/microphone self-noise, fans."""
    return rng.standard_normal(n)


def _frequencies(n: int) -> np.ndarray:
    """Bin frequencies (Hz) of the power-of-two FFT grid used to make n samples of noise
    (fast for any n, e.g. a prime length after speed perturbation)."""
    return np.fft.rfftfreq(1 << max(n - 1, 1).bit_length(), d=1.0 / SAMPLE_RATE)


def _shaped_noise(rng: np.random.Generator, n: int, amplitude: np.ndarray) -> np.ndarray:
    """(n,) Gaussian noise with amplitude spectrum ``amplitude`` (on ``_frequencies(n)``).
    The spectrum of white noise is drawn directly (independent complex Gaussian bins)."""
    white = rng.standard_normal(amplitude.size) + 1j * rng.standard_normal(amplitude.size)
    return np.fft.irfft(white * amplitude, 2 * (amplitude.size - 1))[:n]


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Power spectral density proportional to 1/f^exponent (flattened below 40 Hz, no DC)."""
    freqs = _frequencies(n)
    amplitude = np.maximum(freqs, 40.0) ** (-exponent / 2.0)
    amplitude[0] = 0.0
    return _shaped_noise(rng, n, amplitude)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f: broadband ambient noise (rain, distant traffic, HVAC) as heard in rooms."""
    return _coloured(rng, n, 1.0)


def _brown(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f^2: low-frequency rumble (wind, engines, handling noise)."""
    return _coloured(rng, n, 2.0)


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz (+-1%) with 10 harmonics of random, decaying amplitude
    and phase, over a faint white floor 30 dB down (ground loops, cheap sound cards)."""
    f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
    harmonics = np.arange(1, 11)
    amplitudes = rng.uniform(0.2, 1.0, harmonics.size) * harmonics ** -rng.uniform(0.5, 1.5)
    phases = rng.uniform(0.0, 2.0 * np.pi, harmonics.size)
    cycle = np.linspace(0.0, 1.0, 4097)  # one period of f0, then read at the right phase
    period = np.sin(2.0 * np.pi * np.outer(cycle, harmonics) + phases) @ amplitudes
    hum = np.interp((f0 / SAMPLE_RATE * np.arange(n)) % 1.0, cycle, period)
    return hum + 0.03 * np.sqrt(np.mean(hum**2)) * rng.standard_normal(n)


def _syllable_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) amplitude envelope of one talker: log-normal bursts at syllable rate (< 8 Hz)
    switched off during pauses (talk spurts 0.3-2 s, pauses 0.1-0.6 s)."""
    frame_rate = 100  # envelope computed on 10 ms frames, then interpolated
    frames = n // (SAMPLE_RATE // frame_rate) + 2
    spectrum = np.fft.rfft(rng.standard_normal(frames))
    spectrum[np.fft.rfftfreq(frames, d=1.0 / frame_rate) > 8.0] = 0.0
    slow = np.fft.irfft(spectrum, frames)
    envelope = np.exp(1.5 * slow / (slow.std() + 1e-12))
    gate = np.zeros(frames)
    position = int(rng.uniform(-1.0, 0.5) * frame_rate)  # may start mid-spurt
    while position < frames:
        talk = int(rng.uniform(0.3, 2.0) * frame_rate)
        gate[max(position, 0) : max(position + talk, 0)] = 1.0
        position += talk + int(rng.uniform(0.1, 0.6) * frame_rate)
    frame_times = np.arange(frames) * (SAMPLE_RATE // frame_rate)
    return np.interp(np.arange(n), frame_times, envelope * gate)


def _talker(rng: np.random.Generator, n: int, freqs: np.ndarray) -> np.ndarray:
    """Speech-shaped noise: three formant-like resonances (F1 300-900, F2 900-2500,
    F3 2000-3500 Hz) over a -6 dB/octave tilt above 500 Hz, syllable-modulated."""
    coarse = np.linspace(0.0, SAMPLE_RATE / 2, 513)  # the envelope is smooth: 15.6 Hz steps
    octaves = np.log2(np.maximum(coarse, 1.0))
    envelope = 0.3 / np.maximum(coarse / 500.0, 1.0)
    for low, high in ((300.0, 900.0), (900.0, 2500.0), (2000.0, 3500.0)):
        centre = np.log2(rng.uniform(low, high))
        width = rng.uniform(0.1, 0.3)  # octaves
        envelope += np.exp(-0.5 * ((octaves - centre) / width) ** 2) * (500.0 / 2**centre)
    envelope[coarse < 80.0] = 0.0
    amplitude = np.interp(freqs, coarse, envelope)
    return _shaped_noise(rng, n, amplitude) * _syllable_envelope(rng, n)


def _babble(rng: np.random.Generator, n: int) -> np.ndarray:
    """3-7 overlapping speech-shaped talkers: cafe/crowd babble without real speech
    (so no intelligible words that would contradict the transcript)."""
    freqs = _frequencies(n)
    return sum(_talker(rng, n, freqs) for _ in range(rng.integers(3, 8)))


NOISE_KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "white": _white,
    "pink": _pink,
    "brown": _brown,
    "hum": _hum,
    "babble": _babble,
}
"""Synthetic noise generators: (rng, n) -> (n,) float64 noise of arbitrary level."""


def add_noise(samples: np.ndarray, rng: np.random.Generator, kind: str,
              snr_db: float) -> np.ndarray:
    """(N,) samples plus ``kind`` noise scaled so that power(samples) / power(noise) is
    ``snr_db`` dB (powers are means over the whole utterance). Silence is returned as is."""
    signal_power = np.mean(samples**2)
    noise = NOISE_KINDS[kind](rng, samples.size)
    noise_power = np.mean(noise**2)
    if signal_power == 0 or noise_power == 0:
        return samples
    return samples + noise * np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))


# --- room impulse responses -------------------------------------------------------------

_EARLY_ORDER = 12  # image-source reflection order; later reverberation is modelled
RIR_LEAD = 40  # samples before the direct sound in a simulated RIR (its filter's pre-ringing)


def _inside(rng: np.random.Generator, dims: np.ndarray, margin: float = 0.5) -> np.ndarray:
    return margin + rng.uniform(size=3) * (dims - 2.0 * margin)


def simulate_rir(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """(L,) float32 impulse response of a random shoebox room with reverberation time
    ``rt60`` seconds (3-10 x 3-8 x 2.4-4 m, source and microphone >= 0.5 m from the walls
    and >= 0.5 m apart), trimmed so that the direct sound peaks at sample ``RIR_LEAD``.

    Early reflections come from pyroomacoustics' image-source method up to order 12.
    A full image-source simulation of a 0.8 s room takes ~1-2 s, so from the time the
    order-12 images stop covering all directions (about 6 x the smallest room dimension
    of travel after the direct sound) the response is continued by Gaussian noise that
    decays 60 dB over ``rt60``, with its level matched to the image-source response
    there (a standard hybrid of geometric early and stochastic late reverberation).
    """
    import pyroomacoustics as pra  # here, not at the top: importing it takes ~1 s

    while True:  # rooms whose walls cannot absorb enough for this RT60 are redrawn
        dims = np.array([rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0)])
        try:
            absorption, order = pra.inverse_sabine(rt60, dims)
        except ValueError:
            continue
        source, mic = _inside(rng, dims), _inside(rng, dims)
        if np.linalg.norm(source - mic) >= 0.5:
            break
    room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption),
                       max_order=min(order, _EARLY_ORDER))
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    # pyroomacoustics delays everything by half its fractional-delay filter
    samples_per_metre = SAMPLE_RATE / pra.constants.get("c")
    travel = np.linalg.norm(source - mic) * samples_per_metre
    direct = pra.constants.get("frac_delay_length") // 2 + round(travel)
    rir = np.asarray(room.rir[0][0][direct - RIR_LEAD :], dtype=np.float64)
    if order > _EARLY_ORDER:
        mix = RIR_LEAD + int(0.5 * _EARLY_ORDER * dims.min() * samples_per_metre)
        window = SAMPLE_RATE // 200  # +-5 ms
        level = np.sqrt(np.mean(rir[mix - window : mix + window] ** 2))
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        tail = level * rng.standard_normal(t.size) * 10.0 ** (-3.0 * t / rt60)
        rir = np.concatenate([rir[:mix], tail])
    return rir.astype(np.float32)


def _convolve(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Reverberate (N,) samples, keeping length, timing (direct path at lag 0) and RMS."""
    size = samples.size + rir.size - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(samples, n_fft) * np.fft.rfft(rir, n_fft), n_fft)
    wet = wet[RIR_LEAD : RIR_LEAD + samples.size]
    wet_rms = np.sqrt(np.mean(wet**2))
    return wet * (np.sqrt(np.mean(samples**2)) / wet_rms) if wet_rms > 0 else wet


def band_limited(samples: np.ndarray, rate: float) -> np.ndarray:
    """(N,) 16 kHz samples as they come back from a trip through ``rate`` Hz: nothing left
    above about ``rate / 2`` (soxr's anti-aliasing filter); same length and timing."""
    if rate >= SAMPLE_RATE:
        return samples
    back = soxr.resample(soxr.resample(samples, SAMPLE_RATE, rate, quality="HQ"), rate,
                         SAMPLE_RATE, quality="HQ")
    return np.pad(back[: samples.size], (0, max(0, samples.size - back.size)))


# --- configuration and the augmenter ----------------------------------------------------


def _range(value: object, name: str, low: float, high: float) -> tuple[float, float]:
    pair = float_tuple(value, name)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ConfigError(f"{name}: must be [min, max] with {low} <= min <= max <= {high}, "
                          f"got {list(value)}")
    return pair[0], pair[1]


def _probability(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name}: must be in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AugmentConfig:
    """Waveform augmentation settings; lists from YAML are accepted and stored as tuples.

    ``AugmentConfig(speed=(1.0,), noise_prob=0, reverb_prob=0, gain_db=(0, 0))`` is off.
    """

    speed: tuple[float, ...] = (0.9, 1.0, 1.1)  # factors, one drawn uniformly per utterance
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)  # speech-to-noise power ratio, drawn uniformly
    noise_kinds: tuple[str, ...] = tuple(NOISE_KINDS)  # one drawn uniformly per noisy utterance
    reverb_prob: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds, range of the RIR bank's rooms (>= 0.15)
    num_rirs: int = 64  # size of the RIR bank
    gain_db: tuple[float, float] = (-10.0, 6.0)
    vtlp: tuple[float, float] = (1.0, 1.0)  # VTLP warp factor range, drawn uniformly; off
    pad_prob: float = 0.0  # off
    pad_seconds: tuple[float, float] = (0.0, 1.0)  # silence before and after, each drawn
    band_prob: float = 0.0  # off
    band_rate: tuple[float, float] = (8000.0, 16000.0)  # Hz: the bandwidth is half of it

    def __post_init__(self) -> None:
        speed = float_tuple(self.speed, "data.augment.speed")
        if not speed or not all(0.5 <= s <= 2.0 for s in speed):
            raise ConfigError(f"data.augment.speed: give factors in [0.5, 2], got "
                              f"{list(self.speed)}")
        set_ = object.__setattr__
        set_(self, "speed", speed)
        set_(self, "noise_prob", _probability(self.noise_prob, "data.augment.noise_prob"))
        set_(self, "reverb_prob", _probability(self.reverb_prob, "data.augment.reverb_prob"))
        set_(self, "snr_db", _range(self.snr_db, "data.augment.snr_db", -20.0, 100.0))
        set_(self, "rt60", _range(self.rt60, "data.augment.rt60", 0.15, 2.0))
        set_(self, "gain_db", _range(self.gain_db, "data.augment.gain_db", -60.0, 20.0))
        set_(self, "vtlp", _range(self.vtlp, "data.augment.vtlp", 0.8, 1.25))
        set_(self, "pad_prob", _probability(self.pad_prob, "data.augment.pad_prob"))
        set_(self, "pad_seconds", _range(self.pad_seconds, "data.augment.pad_seconds", 0.0, 10.0))
        set_(self, "band_prob", _probability(self.band_prob, "data.augment.band_prob"))
        set_(self, "band_rate", _range(self.band_rate, "data.augment.band_rate", 4000.0,
                                       float(SAMPLE_RATE)))
        kinds = self.noise_kinds
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
            raise ConfigError(f"data.augment.noise_kinds: expected a non-empty list, got {kinds!r}")
        unknown = [k for k in kinds if k not in NOISE_KINDS]
        if unknown:
            raise ConfigError(f"data.augment.noise_kinds: unknown kind {unknown[0]!r} "
                              f"(known: {', '.join(NOISE_KINDS)})")
        set_(self, "noise_kinds", tuple(kinds))
        rirs = self.num_rirs
        if isinstance(rirs, bool) or not isinstance(rirs, int) or rirs < 1:
            raise ConfigError(f"data.augment.num_rirs: must be a positive integer, got {rirs!r}")

    @property
    def is_identity(self) -> bool:
        """True when no step can change the audio (VTLP changes only the features)."""
        return (set(self.speed) == {1.0} and self.noise_prob == 0 and self.reverb_prob == 0
                and self.gain_db == (0.0, 0.0) and self.pad_prob == 0 and self.band_prob == 0)


class Augmenter:
    """``augmenter(samples, rng)``: (N,) float32 16 kHz mono -> (M,) float32 in [-1, 1].

    M = N unless speed perturbation or padding applies (M ~= N / factor + the pads). The
    RIR bank is built on first use (about 5 ms per response) from ``seed`` and kept in
    the object.
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self._rirs: list[np.ndarray] | None = None

    @property
    def rirs(self) -> list[np.ndarray]:
        """The bank of ``cfg.num_rirs`` impulse responses, RT60s spread over ``cfg.rt60``."""
        if self._rirs is None:
            rng = np.random.default_rng([self.seed, 0x5EB])  # a stream of its own for rooms
            self._rirs = [simulate_rir(rng, rng.uniform(*self.cfg.rt60))
                          for _ in range(self.cfg.num_rirs)]
        return self._rirs

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one utterance; every random choice is drawn from ``rng``."""
        cfg = self.cfg
        if cfg.is_identity or samples.size == 0:
            return samples
        out = np.asarray(samples, dtype=np.float64)
        factor = cfg.speed[rng.integers(len(cfg.speed))]
        if factor != 1.0:
            out = soxr.resample(out, factor * SAMPLE_RATE, SAMPLE_RATE, quality="HQ")
        if cfg.pad_prob > 0 and rng.random() < cfg.pad_prob:  # off: draws nothing
            before, after = (round(rng.uniform(*cfg.pad_seconds) * SAMPLE_RATE) for _ in "ab")
            out = np.pad(out, (before, after))
        if rng.random() < cfg.reverb_prob:
            out = _convolve(out, self.rirs[rng.integers(len(self.rirs))])
        if rng.random() < cfg.noise_prob:
            out = add_noise(out, rng, cfg.noise_kinds[rng.integers(len(cfg.noise_kinds))],
                            rng.uniform(*cfg.snr_db))
        if cfg.band_prob > 0 and rng.random() < cfg.band_prob:  # off: draws nothing
            out = band_limited(out, rng.uniform(*cfg.band_rate))
        out = out * 10.0 ** (rng.uniform(*cfg.gain_db) / 20.0)
        peak = np.max(np.abs(out))
        if peak > 1.0:
            out = out / peak
        return out.astype(np.float32)

    def warp_factor(self, rng: np.random.Generator) -> float:
        """The utterance's VTLP factor, drawn from ``rng`` (1.0, drawing nothing, when off)."""
        if self.cfg.vtlp == (1.0, 1.0):
            return 1.0
        return float(rng.uniform(*self.cfg.vtlp))
