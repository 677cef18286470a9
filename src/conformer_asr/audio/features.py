"""80-channel log-mel filterbank features in torch (CPU or GPU, batched, length-aware),
with optional per-utterance vocal tract length perturbation (VTLP) for training."""

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


VTLP_KNEE_HZ = 4800.0  # Jaitly & Hinton (2013): below ~this the warp is a pure scaling


def warp_frequencies(hz: torch.Tensor, factor: float | torch.Tensor,
                     nyquist: float) -> torch.Tensor:
    """VTLP's piecewise-linear frequency warp (Jaitly & Hinton, 2013): ``hz * factor`` up
    to a knee at ``VTLP_KNEE_HZ * min(factor, 1) / factor``, then the straight line that
    takes the knee to ``nyquist``, so that 0 and Nyquist stay fixed. ``factor`` is a number
    or a tensor that broadcasts against ``hz`` (a column of factors: one warp per row)."""
    factor = torch.as_tensor(factor, dtype=hz.dtype)
    knee = VTLP_KNEE_HZ * factor.clamp(max=1.0) / factor
    above = nyquist - (nyquist - knee * factor) / (nyquist - knee) * (nyquist - hz)
    return torch.where(hz <= knee, hz * factor, above)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int,
                   warp: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Triangular HTK-mel filters from 0 Hz to Nyquist, peak 1: (n_fft // 2 + 1, n_mels).

    ``warp`` != 1 evaluates the filters at the VTLP-warped bin frequencies: a formant at
    f Hz then lands in the channel that f * warp would have (below the knee). A tensor of
    B warps gives one filterbank each, (B, n_fft // 2 + 1, n_mels), made in float32 on the
    warps' device (a training batch's); a single one is made in float64."""
    batched = isinstance(warp, torch.Tensor)
    dtype = torch.float32 if batched else torch.float64
    device = warp.device if batched else None
    bins_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=dtype, device=device)
    if batched:
        bins_hz = warp_frequencies(bins_hz, warp.to(dtype)[:, None], sample_rate / 2)
    elif warp != 1.0:
        bins_hz = warp_frequencies(bins_hz, warp, sample_rate / 2)
    top = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    edges_hz = edges_hz.to(dtype=dtype, device=device)
    low, centre, high = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bins_hz[..., None] - low) / (centre - low)
    falling = (high - bins_hz[..., None]) / (high - centre)
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

    forward(wave (B, N) float in [-1, 1], lengths (B,) samples, warps (B,) or None)
        -> (feats (B, T, n_mels), frame_lengths (B,))

    Frames of ``win_length`` samples every ``hop_length`` (no centring), Hann
    window, zero-padded to ``n_fft``, power spectrum, HTK mel filters,
    ``log(max(mel, 1e-10))``. Each utterance is then normalised to zero mean
    and unit variance per channel over its own valid frames (which removes
    gain and stationary channel colouring); padded frames are zero. ``warps`` gives
    each utterance its own VTLP factor (training augmentation; see ``mel_filterbank``).
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

    def log_mel(self, wave: torch.Tensor, warps: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N), warps (B,) or None -> (B, T, n_mels) unnormalised log-mel over all frames."""
        frames = wave.unfold(-1, self.cfg.win_length, self.cfg.hop_length)  # (B, T, win)
        spectrum = torch.fft.rfft(frames * self.window, n=self.cfg.n_fft)
        power = spectrum.real.square() + spectrum.imag.square()
        if warps is None:
            return torch.log(torch.clamp(power @ self.filters, min=LOG_FLOOR))
        cfg = self.cfg  # one filterbank per utterance: (B, n_fft // 2 + 1, n_mels)
        filters = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, warps.to(power.device))
        return torch.log(torch.clamp(torch.bmm(power, filters), min=LOG_FLOOR))

    @torch.no_grad()
    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor, warps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.shape[-1] < self.cfg.win_length:
            wave = torch.nn.functional.pad(wave, (0, self.cfg.win_length - wave.shape[-1]))
        feats = self.log_mel(wave.float(), warps)
        frame_lengths = num_frames(lengths, self.cfg.win_length, self.cfg.hop_length)
        valid = (
            torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None]
        )[:, :, None]
        count = frame_lengths.clamp(min=1)[:, None, None].to(feats.dtype)
        mean = (feats * valid).sum(dim=1, keepdim=True) / count
        centred = (feats - mean) * valid
        std = torch.sqrt(centred.square().sum(dim=1, keepdim=True) / count)
        return centred / (std + 1e-5), frame_lengths

