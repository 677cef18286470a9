"""One time step of an LSTM, as the decoders take them: a token per hypothesis at a time.

On a CPU, ``nn.LSTM`` runs oneDNN's LSTM, which has a large fixed cost per call, and a
larger one for each row count it has not seen before; a beam search's row count changes
from step to step. Over many rows the cost is spread thin, but over the few rows of
one utterance's beams it is most of the call. So below ``FEW_ROWS`` rows a float LSTM
in eval mode is stepped here, one matrix product per weight matrix; above, and for int8
(dynamically quantised) LSTMs, on GPUs, in training and under autocast, by the module
itself. Both give the same result to float rounding. With the bundled model and LM on 2
threads, transcribing 40 test utterances one at a time took 7.9 s instead of 14.9 s, and
200 in batches (mostly 256-2048 rows a step) took the same time either way.

Over a few rows the products are bound by reading the weights, so where the weights
are float16 values (the bundled LM's: stored in int8, they load as float16 values) they
are read as float16 (:func:`_float16_packed`), at float32 precision otherwise: on an
AVX2 machine, 40 test utterances one at a time then took 7.2 s instead of 13.8 s, with the
same transcripts.
That product has no gradient, so it runs only with gradients off, as decoding does.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, N, hidden)

FEW_ROWS = 256  # beyond, oneDNN's LSTM is the faster


def lstm_step(
    lstm: nn.Module, x: torch.Tensor, state: LSTMState | None
) -> tuple[torch.Tensor, LSTMState]:
    """x (N, input_size), state or None (zeros) -> (top layer's output (N, hidden), state).

    ``lstm`` is batch-first: an ``nn.LSTM`` or its dynamically quantised copy.
    """
    if not _steps_here(lstm, x):
        out, state = lstm(x[:, None], state)
        return out[:, 0], state
    assert isinstance(lstm, nn.LSTM)
    if state is None:
        zeros = x.new_zeros(lstm.num_layers, x.shape[0], lstm.hidden_size)
        state = (zeros, zeros)
    h_prev, c_prev = state
    packed = None if torch.is_grad_enabled() else _float16_packed(lstm)  # no gradients
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        if packed is not None:
            gates = torch.ops.quantized.linear_dynamic_fp16(
                torch.cat([x, h_prev[layer]], dim=1), packed[layer])
        else:
            w_ih, w_hh, b_ih, b_hh = _layer_weights(lstm, layer)
            gates = torch.addmm(b_ih + b_hh, x, w_ih.t()).addmm_(h_prev[layer], w_hh.t())
        i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTM's gate order
        c = torch.addcmul(f.sigmoid() * c_prev[layer], i.sigmoid(), g.tanh())
        x = o.sigmoid() * c.tanh()
        hs.append(x)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def _steps_here(lstm: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``lstm_step`` steps ``lstm`` itself; under autocast (bf16 validation in
    training) the module does, as autocast knows how to run it."""
    return (isinstance(lstm, nn.LSTM) and not lstm.training and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and x.shape[0] < FEW_ROWS and lstm.bias
            and not lstm.bidirectional and lstm.proj_size == 0)


def _layer_weights(lstm: nn.LSTM, layer: int) -> list[torch.Tensor]:
    """W_ih (4H, in), W_hh (4H, H), b_ih and b_hh (4H,) of one layer."""
    return [getattr(lstm, f"{name}_l{layer}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


_PACKED: weakref.WeakKeyDictionary[nn.LSTM, tuple[tuple[int, ...], list[torch.Tensor] | None]]
_PACKED = weakref.WeakKeyDictionary()


def _float16_packed(lstm: nn.LSTM) -> list[torch.Tensor] | None:
    """Per layer, ``[W_ih | W_hh]`` and ``b_ih + b_hh`` packed for fbgemm's product with
    float16 weights, where every weight of ``lstm`` is a float16 value (an LM stored in
    float16, like the bundled one), else None.

    The product reads half the bytes of a float32 one and computes in float32, so it gives
    the float32 result to rounding; for a few rows it is bound by reading the weights
    (8 MB a layer for a 512-unit LM), and it is 1.8x faster at 25 rows. Packed once and
    kept until a weight changes (a new version or storage)."""
    weights = [w for layer in range(lstm.num_layers) for w in _layer_weights(lstm, layer)]
    key = tuple(w._version for w in weights) + tuple(w.data_ptr() for w in weights)
    cached = _PACKED.get(lstm)
    if cached is not None and cached[0] == key:
        return cached[1]
    packed: list[torch.Tensor] | None = None
    if all(w.dtype == torch.float32 and torch.equal(w, w.half().float()) for w in weights):
        layers = [weights[i : i + 4] for i in range(0, len(weights), 4)]
        with contextlib.suppress(RuntimeError):  # no fbgemm (not x86): float32 products
            packed = [torch.ops.quantized.linear_prepack_fp16(
                torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh)
                for w_ih, w_hh, b_ih, b_hh in layers]
    _PACKED[lstm] = (key, packed)
    return packed
