"""Reduced-precision copies of a model for CPU inference: dynamic int8 for the
Linear and LSTM layers, bfloat16 for the multi-channel 2-D convolutions where the CPU
has fast bfloat16 kernels."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as dynamic_quantized
from torch.ao.quantization import get_default_dynamic_quant_module_mappings

from .conformer import tracks_grad

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def quantize_int8(model: ModuleT) -> ModuleT:
    """An int8 copy of ``model`` in eval mode; ``model`` itself is left as it is.

    Linear and LSTM layers become dynamically quantised ones: weights are stored
    as int8 once, activations are quantised batch by batch as they arrive, and
    the products run in int8 on the CPU. Activations get all 8 bits where the CPU's
    int8 products cannot overflow (:func:`full_range_int8_is_exact`: VNNI), which
    halves their rounding error, and 7 elsewhere (torch's default). The 2-D
    convolutions after the first (the encoder's subsampling) run in bfloat16 where
    oneDNN has bfloat16 kernels for this CPU (:func:`bf16_kernels_are_fast`,
    AVX-512), and in float32 elsewhere. Other convolutions, normalisation, attention
    and embeddings stay in float32. CPU only. The int8 weights cannot be trained, but
    gradients pass through the int8 Linear layers to what comes before them, so the
    float32 parameters can (test-time adaptation does).
    """
    with _quiet_deprecations():
        full_range = full_range_int8_is_exact()
        mapping = {**get_default_dynamic_quant_module_mappings(), nn.Linear: Int8Linear}
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM}, dtype=torch.qint8, mapping=mapping
        )
    if full_range:
        _activations_in_full_range(quantized)
    if bf16_kernels_are_fast():
        _convolve_in_bf16(quantized)
    return quantized.eval()


def check_int8_device(device: str | torch.device) -> None:
    """ValueError unless ``device`` is the CPU, the one device int8 inference runs on."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"int8: int8 inference runs on the CPU only, not on {str(device)!r}")


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch.ao.quantization is deprecated in favour of the separate torchao package; its
    dynamic quantisation still works in the pinned torch, so its warnings are dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions")
        yield


@functools.cache
def full_range_int8_is_exact() -> bool:
    """Whether fbgemm's int8 products are exact with activations quantised to all 8 bits.

    Without VNNI (AVX2, AVX-512 before VNNI) fbgemm adds pairs of uint8 x int8 products
    in 16 bits, which can overflow with 8-bit activations (255 * 127 * 2 > 32767); that
    is why torch quantises activations to 7 bits by default (``reduce_range``). With
    VNNI each product goes straight into 32 bits. Rather than trust CPU flags, this
    runs the overflowing case: activations all 255, weights all 127. False also where
    the quantised kernels cannot run it at all.
    """
    weight = torch.full((8, 64), 127.0)
    x = torch.ones(2, 64)
    x[0, 0] = 0.0  # the range is [0, 1]: every other activation quantises to 255
    try:
        with _quiet_deprecations(), torch.no_grad():
            layer = dynamic_quantized.Linear(64, 8, bias_=False)
            layer.set_weight_bias(torch.quantize_per_tensor(weight, 1.0, 0, torch.qint8), None)
            out = torch.ops.quantized.linear_dynamic(x, layer._packed_params._packed_params,
                                                     False)
    except RuntimeError:
        return False
    return bool(torch.allclose(out, x @ weight.T, rtol=0.01))


class Int8Linear(dynamic_quantized.Linear):
    """torch's dynamically quantised Linear, with two changes: activations are quantised
    to all 8 bits where ``reduce_range`` is False (:func:`full_range_int8_is_exact`), and
    gradients reach its input (not its int8 weights), so that the parameters before it can
    be adapted (``inference.adapt``). The input's gradient is a product with the weights
    dequantised (at the first backward pass, then kept), in bfloat16 where the CPU has
    bfloat16 kernels and float32 elsewhere. (An int8 product there, with the gradient
    quantised per tensor as the activations are, put test-time adaptation's gradients
    40-50% off those of float32 products; bfloat16 puts them 0.3% off.)"""

    reduce_range = True  # torch's default: 7-bit activations
    _backward_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracks_grad(x):
            return _Int8Product.apply(x, self)
        return self.product(x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features), in x's dtype, without gradients."""
        out = torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=self.reduce_range)
        return out.to(x.dtype)

    def input_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """grad (..., out_features) -> grad @ weight (..., in_features), in grad's dtype."""
        if self._backward_weight is None:
            dtype = torch.bfloat16 if bf16_kernels_are_fast() else torch.float32
            self._backward_weight = self.weight().dequantize().to(dtype)
        return (grad.to(self._backward_weight.dtype) @ self._backward_weight).to(grad.dtype)


class _Int8Product(torch.autograd.Function):
    """``layer.product(x)``, differentiable in x."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
        ctx.layer = layer
        return layer.product(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.layer.input_gradient(grad), None


def _activations_in_full_range(module: nn.Module) -> None:
    """Has every int8 Linear and LSTM below ``module`` quantise its activations to all 8
    bits (torch builds the LSTMs' cells with ``reduce_range``, and rebuilds them here)."""
    for layer in module.modules():
        if isinstance(layer, Int8Linear):
            layer.reduce_range = False
        elif isinstance(layer, dynamic_quantized.LSTM):
            for packed in layer._all_weight_values:
                (kind, (bias_ih, bias_hh), _, _, (w_ih, w_hh)), _ = packed.param.__getstate__()
                assert kind == "quantized_dynamic", kind
                packed.param = torch.ops.quantized.make_quantized_cell_params_dynamic(
                    w_ih, w_hh, bias_ih, bias_hh, False)


def bf16_kernels_are_fast() -> bool:
    """Whether oneDNN runs bfloat16 convolutions and matrix products natively on this CPU
    (AVX-512 and newer); on others they are emulated and slower than float32."""
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
