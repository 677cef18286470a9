"""One time step of an LSTM, as the decoders take them: a token per hypothesis at a time.

On a CPU, ``nn.LSTM`` runs oneDNN's LSTM, which has a large fixed cost per call, and a
larger one for each row count it has not seen before; a beam search's row count changes
from step to step. Over many rows the cost is spread thin, but over the few rows of
one utterance's beams it is most of the call. So below ``FEW_ROWS`` rows a float LSTM
in eval mode is stepped here, one matrix product per weight matrix; above, and for int8
(dynamically quantised) LSTMs, on GPUs and in training, by the module itself. Both
give the same result to float rounding. With the bundled model and LM on 2 threads,
transcribing 40 test utterances one at a time took 7.9 s instead of 14.9 s, and 200
in batches (mostly 256-2048 rows a step) took the same time either way.
"""

from __future__ import annotations

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
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}")
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        gates = torch.addmm(b_ih + b_hh, x, w_ih.t()).addmm_(h_prev[layer], w_hh.t())
        i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTM's gate order
        c = torch.addcmul(f.sigmoid() * c_prev[layer], i.sigmoid(), g.tanh())
        x = o.sigmoid() * c.tanh()
        hs.append(x)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


def _steps_here(lstm: nn.Module, x: torch.Tensor) -> bool:
    return (isinstance(lstm, nn.LSTM) and not lstm.training and x.device.type == "cpu"
            and x.shape[0] < FEW_ROWS and lstm.bias and not lstm.bidirectional
            and lstm.proj_size == 0)
