"""Int8 products with a scale per row, for a language model decoding on the CPU.

Each weight matrix is stored in int8 with a scale per output row (:func:`int8_rows`), and
each row of activations is quantised by its own scale as it arrives; the product sums in
int32, which is exact, and the two scales are applied to its result. A row's result is
therefore the same whichever rows share its batch. That is why this, and not torch's
dynamic int8 (``quantize.quantize_int8``), runs the LMs: torch quantises a batch's
activations with one scale for the whole batch, so a hypothesis's LM score, and in the end
a transcript, depended on which utterances were decoded with it (6 of 300 test utterances
read differently alone). Inference only: nothing here has gradients.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .lstm_step import LSTMState

if TYPE_CHECKING:
    from .lm import WordPieceLM


def int8_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """matrix (R, C) float -> (int8 (R, C), float32 scale (R,)): each row divided by its
    largest magnitude over 127 and rounded; ``scale[:, None] * int8`` gives it back to
    within half a step (a row of zeros has scale 1)."""
    matrix = matrix.float()
    scale = matrix.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (matrix / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


class Int8RowsMatrix:
    """A weight matrix (out, in) in int8 with a scale per row, multiplied by activations
    quantised a row at a time."""

    def __init__(self, weight: torch.Tensor) -> None:
        rows, self.scale = int8_rows(weight.detach())
        self.transposed = rows.t()  # (in, out): torch._int_mm's right-hand layout

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) float32 -> x @ weight.T (N, out) float32."""
        scale = x.abs().amax(dim=1, keepdim=True) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        product = torch._int_mm((x / scale).round_().to(torch.int8), self.transposed)
        return product.float().mul_(scale).mul_(self.scale)


class Int8RowsLinear(nn.Module):
    """``nn.Linear``'s product in int8 rows; float32 bias."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = Int8RowsMatrix(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        out = self.weight(x.reshape(-1, x.shape[-1]).float())
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


class Int8RowsLSTM(nn.Module):
    """A batch-first, one-way ``nn.LSTM`` with biases, its products in int8 rows: the input
    and the previous output are quantised apart (each has its own range), so a sequence
    gives what stepping it one token at a time gives, exactly."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not (lstm.batch_first and lstm.bias and not lstm.bidirectional
                and lstm.proj_size == 0):
            raise ValueError("Int8RowsLSTM: needs a batch-first, one-way LSTM with biases")
        self.hidden_size = lstm.hidden_size
        self.layers: list[tuple[Int8RowsMatrix | None, Int8RowsMatrix, torch.Tensor]] = [
            (Int8RowsMatrix(getattr(lstm, f"weight_ih_l{layer}")),
             Int8RowsMatrix(getattr(lstm, f"weight_hh_l{layer}")),
             (getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}"))
             .detach().float().clone())
            for layer in range(lstm.num_layers)]

    def forward(
        self, x: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """x (N, T, in), or (N, T, 4 x hidden) after ``projected_embedding``, state or None
        (zeros) -> (top layer's outputs (N, T, hidden), state after the last step)."""
        n, steps = x.shape[:2]
        if state is None:
            zeros = x.new_zeros(len(self.layers), n, self.hidden_size, dtype=torch.float32)
            state = (zeros, zeros)
        hs, cs = [], []
        for layer, (w_ih, w_hh, bias) in enumerate(self.layers):
            inputs = x.float() if w_ih is None else (
                w_ih(x.reshape(n * steps, -1).float()) + bias).reshape(n, steps, -1)
            h, c = state[0][layer], state[1][layer]
            outputs = []
            for t in range(steps):
                i, f, g, o = (inputs[:, t] + w_hh(h)).chunk(4, dim=1)  # nn.LSTM's order
                c = torch.addcmul(f.sigmoid() * c, i.sigmoid(), g.tanh())
                h = o.sigmoid() * c.tanh()
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))

    def projected_embedding(self, embed: nn.Embedding) -> nn.Embedding:
        """``embed`` -> an embedding of each token's first-layer input product plus biases
        (V, 4 x hidden); from then on this LSTM takes those rows as its input, so a step
        looks them up instead of multiplying (a quarter of an LM step's products). Each
        row is quantised by its own scale, so the table holds exactly what the product
        gave each token."""
        w_ih, w_hh, bias = self.layers[0]
        if w_ih is None:
            raise ValueError("Int8RowsLSTM: its input product is projected already")
        table = w_ih(embed.weight.detach().float()) + bias
        self.layers[0] = (None, w_hh, bias)
        return nn.Embedding.from_pretrained(table)


def int8_rows_lm(lm: WordPieceLM) -> WordPieceLM:
    """A copy of ``lm`` (in eval mode) whose LSTM and output layer multiply in int8 rows,
    its embedding holding each token's first-layer input product
    (``Int8RowsLSTM.projected_embedding``). ``lm`` itself is left as it is; an LM that
    already multiplies so is returned as it is."""
    if isinstance(lm.lstm, Int8RowsLSTM):
        return lm
    quantized = copy.deepcopy(lm).cpu().eval()
    quantized.lstm = Int8RowsLSTM(quantized.lstm)
    quantized.embed = quantized.lstm.projected_embedding(quantized.embed)
    quantized.out = Int8RowsLinear(quantized.out)
    return quantized
