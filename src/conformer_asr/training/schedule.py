"""The Transformer ("Noam") learning-rate schedule used by the paper."""

from __future__ import annotations

import math

import torch


def noam_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 at ``warmup_steps``, then decay as 1/sqrt(step)."""
    step = max(step, 1)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def noam_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplies each group's base (peak) learning rate by ``noam_factor``; step per batch."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: noam_factor(step + 1, warmup_steps)
    )
