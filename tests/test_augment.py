from pathlib import Path

import numpy as np
import pytest

from conformer_asr.audio.io import SAMPLE_RATE, load_audio
from conformer_asr.data.augment import (
    NOISE_KINDS,
    AugmentConfig,
    Augmenter,
    add_noise,
    simulate_rir,
)
from conformer_asr.models.config import ConfigError, build_section

DATA = Path(__file__).parent / "data"
OFF = {"speed": (1.0,), "noise_prob": 0.0, "reverb_prob": 0.0, "gain_db": (0.0, 0.0),
       "num_rirs": 4}


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A real TTS utterance, peak 0.5."""
    samples = load_audio(DATA / "clip1.wav")
    return (0.5 * samples / np.abs(samples).max()).astype(np.float32)


def _augment(samples: np.ndarray, seed: int = 0, **changes: object) -> np.ndarray:
    return Augmenter(AugmentConfig(**{**OFF, **changes}))(samples, np.random.default_rng(seed))


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))


def test_everything_off_is_exact_identity(speech):
    assert AugmentConfig(**OFF).is_identity
    assert not AugmentConfig().is_identity
    for seed in range(3):
        out = _augment(speech, seed)
        assert out.dtype == np.float32 and np.array_equal(out, speech)


def test_same_rng_seed_same_output(speech):
    cfg = AugmentConfig(noise_prob=1.0, reverb_prob=1.0, num_rirs=4)
    first = Augmenter(cfg, seed=3)(speech, np.random.default_rng([0, 1, 2]))
    again = Augmenter(cfg, seed=3)(speech, np.random.default_rng([0, 1, 2]))
    other = Augmenter(cfg, seed=3)(speech, np.random.default_rng([0, 1, 3]))
    assert first.dtype == np.float32
    assert np.array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_rir_bank_depends_only_on_augmenter_seed():
    cfg = AugmentConfig(num_rirs=3)
    bank = Augmenter(cfg, seed=1).rirs
    assert len(bank) == 3
    assert all(np.array_equal(a, b) for a, b in zip(bank, Augmenter(cfg, seed=1).rirs,
                                                     strict=True))
    assert not np.array_equal(bank[0], Augmenter(cfg, seed=2).rirs[0])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_by_factor(speech, factor):
    out = _augment(speech, speed=(factor,))
    assert abs(len(out) - len(speech) / factor) <= 1


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
def test_noise_added_at_requested_snr(speech, kind):
    out = _augment(speech, noise_prob=1.0, snr_db=(10.0, 10.0), noise_kinds=(kind,))
    assert len(out) == len(speech)
    assert _snr_db(speech, out) == pytest.approx(10.0, abs=0.1)


def test_snr_drawn_within_range(speech):
    for seed in range(5):
        snr = _snr_db(speech, _augment(speech, seed, noise_prob=1.0, snr_db=(5.0, 20.0)))
        assert 5.0 - 0.1 <= snr <= 20.0 + 0.1


def test_noise_kinds_have_their_spectra():
    rng = np.random.default_rng(0)
    n = 4 * SAMPLE_RATE
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)

    def band_power(noise: np.ndarray, low: float, high: float) -> float:
        power = np.abs(np.fft.rfft(noise)) ** 2
        return float(power[(freqs >= low) & (freqs < high)].mean())

    def low_over_high(kind: str) -> float:  # dB, 250-500 Hz over 4-8 kHz
        noise = NOISE_KINDS[kind](rng, n)
        return 10 * np.log10(band_power(noise, 250, 500) / band_power(noise, 4000, 8000))

    assert abs(low_over_high("white")) < 1.0
    assert low_over_high("pink") == pytest.approx(10 * np.log10(16), abs=1.5)  # 4 octaves
    assert low_over_high("brown") == pytest.approx(20 * np.log10(16), abs=1.5)
    hum = NOISE_KINDS["hum"](rng, n)
    low = band_power(hum, 20, 1000) * np.sum((freqs >= 20) & (freqs < 1000))
    total = band_power(hum, 0, 8001) * len(freqs)
    assert low / total > 0.95  # mains harmonics
    babble = NOISE_KINDS["babble"](rng, n)
    speech_band = band_power(babble, 200, 3500) * np.sum((freqs >= 200) & (freqs < 3500))
    assert speech_band / (band_power(babble, 0, 8001) * len(freqs)) > 0.8
    frame_power = (babble[: n // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1)
    assert frame_power.std() / frame_power.mean() > 0.5  # modulated like speech, not steady


def test_noise_on_silence_leaves_silence():
    silence = np.zeros(1600)
    assert np.array_equal(add_noise(silence, np.random.default_rng(0), "white", 10.0), silence)


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_simulated_rooms_have_requested_rt60(rt60):
    from pyroomacoustics.experimental import measure_rt60

    for seed in range(2):
        rir = simulate_rir(np.random.default_rng(seed), rt60)
        assert rir.dtype == np.float32
        assert measure_rt60(rir, SAMPLE_RATE) == pytest.approx(rt60, rel=0.25)


def test_padding_puts_silence_around_the_speech(speech):
    assert not AugmentConfig(**{**OFF, "pad_prob": 0.5}).is_identity
    out = _augment(speech, pad_prob=1.0, pad_seconds=(0.25, 0.25))
    pad = SAMPLE_RATE // 4
    assert len(out) == len(speech) + 2 * pad
    assert not out[:pad].any() and not out[-pad:].any()
    assert np.array_equal(out[pad:-pad], speech)
    lengths = {len(_augment(speech, seed, pad_prob=1.0, pad_seconds=(0.0, 0.5)))
               for seed in range(6)}
    assert len(lengths) > 1
    assert all(len(speech) <= n <= len(speech) + SAMPLE_RATE for n in lengths)
    padded = [len(_augment(speech, seed, pad_prob=0.5)) > len(speech) for seed in range(40)]
    assert 5 < sum(padded) < 35


def test_band_limiting_keeps_what_lies_below_half_the_rate(speech):
    """A trip through 8 kHz, as a phone line's: nothing left above 4 kHz, what lies below
    3.5 kHz kept, same length and timing; drawn for about band_prob of the utterances."""
    assert not AugmentConfig(**{**OFF, "band_prob": 0.5}).is_identity
    out = _augment(speech, band_prob=1.0, band_rate=(8000.0, 8000.0)).astype(np.float64)
    assert len(out) == len(speech)
    freqs = np.fft.rfftfreq(len(speech), 1 / SAMPLE_RATE)
    before, after = (np.fft.rfft(x) for x in (speech.astype(np.float64), out))
    assert np.sum(np.abs(after[freqs > 4100]) ** 2) < 1e-6 * np.sum(np.abs(after) ** 2)
    low = freqs < 3500
    assert np.abs(after[low] - before[low]).max() < 1e-3 * np.abs(before[low]).max()
    changed = [not np.array_equal(_augment(speech, seed, band_prob=0.5), speech)
               for seed in range(40)]
    assert 5 < sum(changed) < 35


def test_noise_covers_the_padding(speech):
    out = _augment(speech, pad_prob=1.0, pad_seconds=(0.25, 0.25), noise_prob=1.0)
    pad = SAMPLE_RATE // 4
    assert np.all(out[:pad] != 0) and np.all(out[-pad:] != 0)


def test_reverb_keeps_length_and_level(speech):
    for seed in range(4):
        out = _augment(speech, seed, reverb_prob=1.0)
        assert len(out) == len(speech)
        rms_in, rms_out = np.sqrt(np.mean(speech**2)), np.sqrt(np.mean(out**2))
        assert rms_out == pytest.approx(rms_in, rel=0.05)
        lags = np.arange(-800, 801, 8)
        corr = [np.dot(speech[800:-800], np.roll(out, -lag)[800:-800]) for lag in lags]
        assert abs(lags[int(np.argmax(corr))]) <= 320  # early reflections: within 20 ms


def test_reverb_keeps_direct_sound_in_place():
    click = np.zeros(SAMPLE_RATE, dtype=np.float32)
    click[8000] = 0.5
    for seed in range(8):
        out = np.abs(_augment(click, seed, reverb_prob=1.0))
        assert abs(7960 + np.argmax(out[7960:8040]) - 8000) <= 1  # direct sound peak
        assert np.sum(out[:7990] ** 2) < 0.01 * np.sum(out**2)  # nothing arrives earlier


def test_output_never_clips(speech):
    loud = speech / np.abs(speech).max()
    for seed in range(4):
        out = _augment(loud, seed, gain_db=(6.0, 6.0), noise_prob=1.0, snr_db=(0.0, 0.0),
                       reverb_prob=0.5, speed=(0.9, 1.1))
        assert np.abs(out).max() <= 1.0


def test_yaml_lists_become_tuples():
    cfg = build_section(AugmentConfig, {"speed": [0.9, 1, 1.1], "snr_db": [0, 20],
                                        "noise_kinds": ["white"]}, "data.augment")
    assert cfg.speed == (0.9, 1.0, 1.1) and cfg.snr_db == (0.0, 20.0)
    assert cfg.noise_kinds == ("white",)
    assert hash(cfg) == hash(AugmentConfig(speed=(0.9, 1.0, 1.1), snr_db=(0.0, 20.0),
                                           noise_kinds=("white",)))


@pytest.mark.parametrize(("field", "value"), [
    ("speed", ()), ("speed", (0.0, 1.0)), ("speed", "fast"),
    ("noise_prob", 1.5), ("noise_prob", "often"), ("reverb_prob", -0.1),
    ("snr_db", (30.0, 5.0)), ("snr_db", (5.0,)), ("rt60", (0.0, 0.5)),
    ("gain_db", (-10.0, 40.0)), ("noise_kinds", ()), ("noise_kinds", ("jet engine",)),
    ("num_rirs", 0), ("vtlp", (0.5, 1.0)), ("vtlp", (1.1, 0.9)),
    ("pad_prob", 2.0), ("pad_seconds", (1.0, 0.5)), ("pad_seconds", (-0.1, 0.5)),
    ("band_prob", 1.5), ("band_rate", (3000.0, 8000.0)), ("band_rate", (8000.0, 22050.0)),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^data\.augment\.{field}: "):
        AugmentConfig(**{field: value})


def test_vtlp_warp_factor_drawn_in_range_and_off_draws_nothing():
    off = Augmenter(AugmentConfig(**OFF))
    rng = np.random.default_rng(0)
    assert off.warp_factor(rng) == 1.0
    assert rng.random() == np.random.default_rng(0).random()  # the stream was not consumed
    on = Augmenter(AugmentConfig(**OFF, vtlp=(0.9, 1.1)))
    draws = [on.warp_factor(np.random.default_rng(seed)) for seed in range(200)]
    assert 0.9 <= min(draws) < 0.92 and 1.08 < max(draws) <= 1.1
    assert draws == [on.warp_factor(np.random.default_rng(seed)) for seed in range(200)]
