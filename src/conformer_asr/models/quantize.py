"""Reduced-precision copies of a model for CPU inference: dynamic int8 for the
Linear and LSTM layers, bfloat16 for the multi-channel 2-D convolutions where the CPU
has fast bfloat16 kernels."""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def quantize_int8(model: ModuleT) -> ModuleT:
    """An int8 copy of ``model`` in eval mode; ``model`` itself is left as it is.

    Linear and LSTM layers become dynamically quantised ones: weights are stored
    as int8 once, activations are quantised batch by batch as they arrive, and
    the products run in int8 on the CPU. The 2-D convolutions after the first (the
    encoder's subsampling) run in bfloat16 where oneDNN has bfloat16 kernels for this
    CPU (:func:`bf16_convolutions_are_fast`, AVX-512), and in float32 elsewhere. Other
    convolutions, normalisation, attention and embeddings stay in float32. CPU only,
    inference only (no gradients).
    """
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of the separate torchao
        # package; its dynamic quantisation still works in the pinned torch.
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )
    if bf16_convolutions_are_fast():
        _convolve_in_bf16(quantized)
    return quantized.eval()


def bf16_convolutions_are_fast() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX-512 and
    newer); on others they are emulated and slower than float32."""
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class BF16Conv2d(nn.Module):
    """``conv`` with its weights converted to bfloat16 (in place): float32 (B, C, H, W)
    in, computed in bfloat16, float32 out."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.to(torch.bfloat16)).to(x.dtype)


def _convolve_in_bf16(module: nn.Module) -> None:
    """Replaces every ``nn.Conv2d`` below ``module`` that reads more than one channel by a
    :class:`BF16Conv2d` of it. A first layer, which reads the features themselves, costs
    little and stays in float32: with it in bfloat16 too, the int8 bundled model got
    19.96% WER on the unseen-voice test, against 19.74% without (float32: 19.67%)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.in_channels > 1:
            setattr(module, name, BF16Conv2d(child))
        else:
            _convolve_in_bf16(child)
