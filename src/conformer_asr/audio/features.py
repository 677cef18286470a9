"""80-channel log-mel filterbank features in torch (CPU or GPU, batched, length-aware)."""

from __future__ import annotations

import torch
from torch import nn

from ..models.config import FeatureConfig

LOG_FLOOR = 1e-10


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters from 0 Hz to Nyquist, peak 1: (n_fft // 2 + 1, n_mels)."""
    bins_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    low, centre, high = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bins_hz[:, None] - low) / (centre - low)
    falling = (high - bins_hz[:, None]) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def num_frames(num_samples: torch.Tensor | int, win_length: int, hop_length: int):
    """Frames from unpadded framing (no centring): 1 + (N - win) // hop, 0 if N < win."""
    if isinstance(num_samples, torch.Tensor):
        return torch.where(
            num_samples >= win_length,
            1 + torch.div(num_samples - win_length, hop_length, rounding_mode="floor"),
            torch.zeros_like(num_samples),
        )
    return 0 if num_samples < win_length else 1 + (num_samples - win_length) // hop_length


class LogMelFeatures(nn.Module):
    """Waveforms -> per-utterance normalised log-mel features.

    forward(wave (B, N) float in [-1, 1], lengths (B,) samples)
        -> (feats (B, T, n_mels), frame_lengths (B,))

    Frames of ``win_length`` samples every ``hop_length`` (no centring), Hann
    window, zero-padded to ``n_fft``, power spectrum, HTK mel filters,
    ``log(max(mel, 1e-10))``. Each utterance is then normalised to zero mean
    and unit variance per channel over its own valid frames (which removes
    gain and stationary channel colouring); padded frames are zero.
    """

    def __init__(self, cfg: FeatureConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        self.register_buffer(
            "window", torch.hann_window(self.cfg.win_length), persistent=False
        )
        self.register_buffer(
            "filters",
            mel_filterbank(self.cfg.n_fft, self.cfg.n_mels, self.cfg.sample_rate),
            persistent=False,
        )

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, T, n_mels) unnormalised log-mel over all frames."""
        frames = wave.unfold(-1, self.cfg.win_length, self.cfg.hop_length)  # (B, T, win)
        spectrum = torch.fft.rfft(frames * self.window, n=self.cfg.n_fft)
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.log(torch.clamp(power @ self.filters, min=LOG_FLOOR))

    @torch.no_grad()
    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.shape[-1] < self.cfg.win_length:
            wave = torch.nn.functional.pad(wave, (0, self.cfg.win_length - wave.shape[-1]))
        feats = self.log_mel(wave.float())
        frame_lengths = num_frames(lengths, self.cfg.win_length, self.cfg.hop_length)
        valid = (
            torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        )[:, :, None]
        count = frame_lengths.clamp(min=1)[:, None, None].to(feats.dtype)
        mean = (feats * valid).sum(dim=1, keepdim=True) / count
        centred = (feats - mean) * valid
        std = torch.sqrt(centred.square().sum(dim=1, keepdim=True) / count)
        return centred / (std + 1e-5), frame_lengths

