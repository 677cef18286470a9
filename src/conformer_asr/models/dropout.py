"""Dropout whose CPU random mask costs a fraction of torch's.

``nn.Dropout`` on a CPU draws one random number per element through
``bernoulli_``; on AMD processors (no MKL fast path) that makes it about three
times slower than the rest of dropout, and a Conformer training step calls it
about a hundred times. Here each element takes 16 random bits instead, drawn 64
at a time, and is kept when they fall below ``round((1 - p) * 2**16)``: a keep
probability within 2**-17 of ``1 - p``, and kept elements are scaled by exactly
its inverse, so the expected output still equals the input. Other devices, and
code that ``torch.compile`` traces (its generated code draws masks of its own), use
``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

_LEVELS = 2**16  # values of the 16 random bits per element


def drop_mask(shape: torch.Size, keep: int) -> torch.Tensor:
    """Bool tensor of ``shape`` on the CPU, each element independently True (dropped) with
    probability ``1 - keep / 2**16``."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform in [-2**15, 2**15)
    return bits >= keep - _LEVELS // 2


class _ZeroAndScale(torch.autograd.Function):
    """x (any shape), dropped (bool, x's shape), scale -> x with dropped elements zeroed and
    the others multiplied by ``scale``; the gradient is masked and scaled alike."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, dropped: torch.Tensor, scale: float
                ) -> torch.Tensor:
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return x.masked_fill(dropped, 0.0).mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dropped,) = ctx.saved_tensors
        return grad.masked_fill(dropped, 0.0).mul_(ctx.scale), None, None


def draws_own_mask(x: torch.Tensor) -> bool:
    """Whether :func:`dropout` on ``x`` draws its 16-bit mask: on the CPU, outside
    ``torch.compile``."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with a faster mask on the CPU (module docstring)."""
    if not training or p == 0.0:
        return x
    keep = round((1.0 - p) * _LEVELS)
    if keep == 0 or not draws_own_mask(x):
        return F.dropout(x, p, training)
    return _ZeroAndScale.apply(x, drop_mask(x.shape, keep), _LEVELS / keep)


class Dropout(nn.Module):
    """``nn.Dropout(p)`` computed by :func:`dropout`: (any shape) -> the same shape."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
