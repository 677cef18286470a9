"""Dynamic int8 quantisation of a model for CPU inference."""

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
    the products run in int8 on the CPU. Convolutions, normalisation, attention
    and embeddings stay in float32. CPU only, inference only (no gradients).
    """
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of the separate torchao
        # package; its dynamic quantisation still works in the pinned torch.
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions")
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )
    return quantized.eval()
