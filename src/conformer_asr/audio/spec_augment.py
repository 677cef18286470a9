"""SpecAugment (Park et al. 2019) with adaptive time masks, no time warping."""

from __future__ import annotations

import torch
from torch import nn

from ..models.config import SpecAugmentConfig


def _band_mask(
    starts: torch.Tensor, widths: torch.Tensor, size: int
) -> torch.Tensor:
    """starts, widths (B, M) -> (B, size) bool, True inside any of the M bands."""
    positions = torch.arange(size, device=starts.device)[None, None, :]
    inside = (positions >= starts[:, :, None]) & (positions < (starts + widths)[:, :, None])
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """Frequency and time masking, identity in eval mode.

    forward(feats (B, T, F), lengths (B,), generator=None) -> masked feats (B, T, F)

    Each utterance gets ``freq_masks`` bands of width U[0, freq_width] and
    ``time_masks`` bands of width U[0, floor(time_width_ratio * length)],
    placed inside its own valid length (not the padded one). Masked values are
    set to 0, the mean of normalised features. Pass a seeded
    ``torch.Generator`` (on the features' device) for reproducible masks.
    """

    def __init__(self, cfg: SpecAugmentConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SpecAugmentConfig()

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if not self.training:
            return feats
        b, t, f = feats.shape
        cfg = self.cfg
        device = feats.device

        def uniform(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.rand(shape, device=device, generator=generator)

        freq_width = min(cfg.freq_width, f)
        widths = (uniform((b, cfg.freq_masks)) * (freq_width + 1)).long()
        starts = (uniform((b, cfg.freq_masks)) * (f - widths + 1)).long()
        freq_mask = _band_mask(starts, widths, f)  # (B, F)

        lengths = lengths.to(device)
        max_width = torch.floor(lengths.float() * cfg.time_width_ratio)[:, None]
        widths = (uniform((b, cfg.time_masks)) * (max_width + 1)).long()
        starts = (uniform((b, cfg.time_masks)) * (lengths[:, None] - widths + 1)).long()
        time_mask = _band_mask(starts, widths, t)  # (B, T)

        mask = freq_mask[:, None, :] | time_mask[:, :, None]
        return feats.masked_fill(mask, 0.0)
