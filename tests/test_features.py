import librosa
import numpy as np
import pytest
import torch

from conformer_asr.audio.features import (
    VTLP_KNEE_HZ,
    LogMelFeatures,
    mel_filterbank,
    num_frames,
    warp_frequencies,
)
from conformer_asr.models.config import FeatureConfig


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    tone = sum(np.sin(2 * np.pi * f * t * (1 + 0.1 * np.sin(3 * t))) for f in (220, 660, 1800))
    return (0.1 * tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_filterbank_matches_librosa_htk():
    ours = mel_filterbank(512, 80, 16000).numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, htk=True, norm=None).T
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_log_mel_matches_librosa():
    wave = _speechlike(1.3, 0)
    ours = LogMelFeatures().log_mel(torch.from_numpy(wave)[None])[0].numpy()
    # librosa centres a 400-sample Hann window inside each 512-sample frame
    # (offset 56); shifting the signal by 56 samples gives the same frames as
    # ours, whose magnitude spectra equal ours (a circular shift of zero-padded data).
    power = librosa.feature.melspectrogram(
        y=np.concatenate([np.zeros(56, np.float32), wave]), sr=16000, n_fft=512,
        win_length=400, hop_length=160, window="hann", center=False, power=2.0,
        n_mels=80, htk=True, norm=None,
    ).T
    ref = np.log(np.maximum(power, 1e-10))
    n = min(len(ref), len(ours))
    assert n >= num_frames(len(wave), 400, 160) - 1
    # Stated tolerance: 1e-3 absolute on natural-log mel energies (float32 FFT vs float64).
    np.testing.assert_allclose(ours[:n], ref[:n], atol=1e-3)


def test_batched_features_equal_single_and_are_normalised():
    extractor = LogMelFeatures()
    waves = [_speechlike(s, i) for i, s in enumerate((0.5, 1.2, 0.9))]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(3, int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, frame_lengths = extractor(batch, lengths)
    assert feats.shape == (3, int(frame_lengths.max()), 80)
    for i, w in enumerate(waves):
        single, n = extractor(torch.from_numpy(w)[None], torch.tensor([len(w)]))
        assert int(n) == int(frame_lengths[i]) == num_frames(len(w), 400, 160)
        torch.testing.assert_close(feats[i, : int(n)], single[0], atol=1e-4, rtol=1e-4)
        assert feats[i, int(n):].abs().max() == 0 if int(n) < feats.shape[1] else True
        valid = feats[i, : int(n)]
        assert valid.mean(0).abs().max() < 1e-4
        assert (valid.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_gain_invariance():
    extractor = LogMelFeatures()
    wave = torch.from_numpy(_speechlike(0.8, 3))[None]
    lengths = torch.tensor([wave.shape[1]])
    quiet, _ = extractor(wave * 0.05, lengths)
    loud, _ = extractor(wave, lengths)
    torch.testing.assert_close(quiet, loud, atol=1e-3, rtol=1e-3)


def test_short_and_silent_audio():
    extractor = LogMelFeatures()
    feats, n = extractor(torch.zeros(1, 100), torch.tensor([100]))
    assert int(n) == 0 and feats.shape[-1] == 80
    feats, n = extractor(torch.zeros(1, 16000), torch.tensor([16000]))
    assert torch.isfinite(feats).all() and int(n) == 98


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_matches_cpu():
    extractor = LogMelFeatures(FeatureConfig())
    wave = torch.from_numpy(_speechlike(1.0, 4))[None]
    lengths = torch.tensor([wave.shape[1]])
    cpu, _ = extractor(wave, lengths)
    gpu, _ = extractor.cuda()(wave.cuda(), lengths.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("factor", [0.85, 0.95, 1.1, 1.2])
def test_vtlp_warp_is_scaling_then_a_line_to_nyquist(factor):
    """Brute force: the warp, written point by point from Jaitly & Hinton's definition."""
    nyquist = 8000.0
    hz = torch.linspace(0.0, nyquist, 1001, dtype=torch.float64)
    knee = VTLP_KNEE_HZ * min(factor, 1.0) / factor
    expected = [f * factor if f <= knee else
                knee * factor + (f - knee) * (nyquist - knee * factor) / (nyquist - knee)
                for f in hz.tolist()]
    warped = warp_frequencies(hz, factor, nyquist)
    np.testing.assert_allclose(warped.numpy(), expected, atol=1e-9)
    assert warped[0] == 0 and abs(float(warped[-1]) - nyquist) < 1e-9
    assert (warped.diff() > 0).all()


def _centroid_channel(log_mel: torch.Tensor) -> float:
    energy = log_mel.exp().mean(0)
    return float((energy * torch.arange(energy.numel())).sum() / energy.sum())


@pytest.mark.parametrize(("tone_hz", "factor"), [(500, 1.15), (1000, 0.9), (2500, 1.1)])
def test_vtlp_moves_a_tone_to_where_the_scaled_tone_would_be(tone_hz, factor):
    """Below the knee, warping by a factor puts a tone in the mel channel that the tone
    at ``factor`` times its frequency has without warping (within a quarter channel)."""
    extractor = LogMelFeatures()
    t = torch.arange(16000, dtype=torch.float64) / 16000

    def tone(hz: float) -> torch.Tensor:
        return torch.sin(2 * torch.pi * hz * t).float()[None]

    warped = extractor.log_mel(tone(tone_hz), torch.tensor([factor]))[0]
    scaled = extractor.log_mel(tone(tone_hz * factor))[0]
    plain = extractor.log_mel(tone(tone_hz))[0]
    assert abs(_centroid_channel(warped) - _centroid_channel(scaled)) < 0.25
    assert abs(_centroid_channel(warped) - _centroid_channel(plain)) > 1.0


def test_vtlp_batch_warps_each_utterance_with_its_own_factor():
    extractor = LogMelFeatures()
    waves = [_speechlike(s, i) for i, s in enumerate((0.6, 1.0, 0.8))]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves],
                                            batch_first=True)
    warps = torch.tensor([0.9, 1.0, 1.12])
    feats, _ = extractor(batch, lengths, warps)
    for i, w in enumerate(waves):
        n = num_frames(len(w), 400, 160)
        filters = mel_filterbank(512, 80, 16000, float(warps[i]))
        reference = LogMelFeatures()
        reference.filters = filters
        single, _ = reference(torch.from_numpy(w)[None], torch.tensor([len(w)]))
        torch.testing.assert_close(feats[i, :n], single[0], atol=1e-4, rtol=1e-4)
    unwarped, _ = extractor(batch, lengths)
    torch.testing.assert_close(feats[1], unwarped[1], atol=1e-4, rtol=1e-4)
    assert (feats[0] - unwarped[0]).abs().max() > 0.1
