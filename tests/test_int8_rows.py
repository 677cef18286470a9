"""Int8 products with a scale per row (``models.int8_rows``), the LMs' decoding path on the
CPU: against a brute-force product of the same integers, against the float LM, and the
property they are there for: a row's result does not depend on the rows batched with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conformer_asr import load_model
from conformer_asr.inference.lm_dir import lm_for_decoding
from conformer_asr.inference.transcriber import Transcriber
from conformer_asr.models.int8_rows import (
    Int8RowsLinear,
    Int8RowsLSTM,
    Int8RowsMatrix,
    int8_rows,
    int8_rows_lm,
)
from conformer_asr.models.lm import LMConfig, WordPieceLM


def _lm(n_layers: int = 2) -> WordPieceLM:
    torch.manual_seed(0)
    return WordPieceLM(LMConfig(vocab_size=30, embed_dim=12, hidden_dim=16,
                                n_layers=n_layers)).eval()


def _sentences(count: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (count,), generator=generator).tolist()
    return [torch.randint(1, 30, (n,), generator=generator).tolist() for n in lengths]


def test_the_product_is_that_of_the_rounded_integers():
    """Brute force in float64 over the integers each row rounds to, with a row of zeros
    (scale 1) and rows of very different ranges."""
    torch.manual_seed(0)
    weight = torch.randn(7, 13)
    x = torch.randn(5, 13) * torch.tensor([[1e-3], [1.0], [50.0], [0.0], [3.0]])
    out = Int8RowsMatrix(weight)(x)
    rows, row_scale = int8_rows(weight)
    x_scale = x.abs().amax(dim=1, keepdim=True).double() / 127
    x_scale[x_scale == 0] = 1.0
    x_ints = (x.double() / x_scale).round()
    assert x_ints.abs().max() <= 127
    expected = (x_ints @ rows.double().T) * x_scale * row_scale.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-9)
    assert torch.equal(out[3], torch.zeros(7))
    relative = (out - x @ weight.T).abs() / (x.abs().amax(1, keepdim=True) * weight.abs().sum(1))
    assert relative[[0, 1, 2, 4]].max() < 1 / 127  # each factor within half a step


def test_linear_keeps_leading_dimensions_and_bias():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    x = torch.randn(2, 3, 6)
    out = Int8RowsLinear(linear)(x)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, linear(x).detach(), atol=0.03, rtol=0.0)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_the_lstm_is_near_torch_and_steps_as_it_reads_a_sequence(n_layers):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=n_layers, batch_first=True).eval()
    quantized = Int8RowsLSTM(lstm)
    x = torch.randn(4, 7, 6)
    with torch.no_grad():
        expected, expected_state = lstm(x)
    out, state = quantized(x)
    torch.testing.assert_close(out, expected, atol=0.02, rtol=0.0)
    torch.testing.assert_close(state, expected_state, atol=0.02, rtol=0.0)
    stepped, step_state = [], None
    for t in range(x.shape[1]):
        one, step_state = quantized(x[:, t:t + 1], step_state)
        stepped.append(one)
    assert torch.equal(torch.cat(stepped, dim=1), out)
    assert all(torch.equal(a, b) for a, b in zip(step_state, state, strict=True))


def test_a_two_way_lstm_is_refused():
    with pytest.raises(ValueError, match="batch-first, one-way LSTM with biases"):
        Int8RowsLSTM(nn.LSTM(4, 4, batch_first=True, bidirectional=True))


def test_an_lm_scores_each_sentence_the_same_alone_as_in_a_batch():
    """Exactly: what int8 rows are for (torch's dynamic int8, one scale per batch, is not)."""
    quantized = int8_rows_lm(_lm())
    sentences = _sentences(12)
    with torch.no_grad():
        batched = quantized.token_log_probs(sentences)
        for row, sentence in enumerate(sentences):
            alone = quantized.token_log_probs([sentence])[0]
            assert torch.equal(batched[row, :len(alone)], alone)
        tokens = torch.tensor([s[0] for s in sentences])
        log_probs, (h, c) = quantized.step(tokens, None)
        for row in (0, 5, 11):
            one, (h1, c1) = quantized.step(tokens[row:row + 1], None)
            assert torch.equal(log_probs[row], one[0])
            assert torch.equal(h[:, row], h1[:, 0]) and torch.equal(c[:, row], c1[:, 0])


def test_the_looked_up_first_layer_inputs_are_the_products_exactly():
    """``int8_rows_lm`` stores each token's first-layer input product in its embedding; a
    copy that multiplies them at each step scores and steps bit for bit the same."""
    import copy

    lm = _lm()
    projected = int8_rows_lm(lm)
    multiplied = copy.deepcopy(lm)
    multiplied.lstm, multiplied.out = Int8RowsLSTM(lm.lstm), Int8RowsLinear(lm.out)
    assert projected.embed.weight.shape == (30, 4 * 16)  # (V, 4 x hidden)
    assert multiplied.lstm.layers[0][0] is not None and projected.lstm.layers[0][0] is None
    sentences = _sentences(10)
    tokens = torch.tensor([s[0] for s in sentences])
    with torch.no_grad():
        assert torch.equal(projected.token_log_probs(sentences),
                           multiplied.token_log_probs(sentences))
        (a, a_state), (b, b_state) = projected.step(tokens, None), multiplied.step(tokens, None)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(a_state, b_state, strict=True))
    with pytest.raises(ValueError, match="projected already"):
        projected.lstm.projected_embedding(lm.embed)


def test_an_lm_in_int8_rows_scores_near_the_float_one_and_leaves_it_alone():
    lm = _lm()
    before = {name: value.clone() for name, value in lm.state_dict().items()}
    quantized = int8_rows_lm(lm)
    sentences = _sentences(8)
    with torch.no_grad():
        expected = lm.token_log_probs(sentences).sum(1)
        got = quantized.token_log_probs(sentences).sum(1)
        assert (got - expected).abs().max() < 0.05 * expected.abs().max()
        # the search's steps add up to the rescoring's sentence scores
        stepped, state = torch.zeros(len(sentences)), None
        width = max(len(s) for s in sentences) + 1
        inputs = torch.zeros(len(sentences), width, dtype=torch.long)
        for row, sentence in enumerate(sentences):
            inputs[row, 1:len(sentence) + 1] = torch.tensor(sentence)
        for t in range(width):
            log_probs, state = quantized.step(inputs[:, t], state)
            for row, sentence in enumerate(sentences):
                if t <= len(sentence):
                    target = sentence[t] if t < len(sentence) else 0
                    stepped[row] += log_probs[row, target]
    torch.testing.assert_close(stepped, got, atol=1e-4, rtol=1e-5)
    assert all(torch.equal(lm.state_dict()[name], value) for name, value in before.items())
    assert isinstance(lm.lstm, nn.LSTM) and isinstance(lm.out, nn.Linear)


def test_decoding_on_the_cpu_uses_int8_rows_for_the_lms():
    transcriber = load_model()
    assert isinstance(transcriber.lm.lstm, Int8RowsLSTM)
    lm = WordPieceLM(LMConfig(vocab_size=transcriber.model.cfg.vocab_size, embed_dim=8,
                              hidden_dim=8, n_layers=1)).eval()
    assert isinstance(lm_for_decoding(lm, "cpu").out, Int8RowsLinear)
    assert isinstance(load_model(lm=lm, beam_size=2).lm.lstm, Int8RowsLSTM)
    # a Transcriber made directly decodes as load_model's does
    backward = int8_rows_lm(WordPieceLM(LMConfig(
        vocab_size=lm.cfg.vocab_size, embed_dim=8, hidden_dim=8, n_layers=1, backward=True)))
    direct = Transcriber(transcriber.model, transcriber.tokenizer, lm=lm, backward_lm=backward)
    assert isinstance(direct.lm.lstm, Int8RowsLSTM)
    assert direct.backward_lm is backward  # already in int8 rows: kept as it is
    assert isinstance(lm.lstm, nn.LSTM)  # the LM passed in is copied, not changed


def test_the_bundled_lm_decodes_with_the_int8_rows_it_is_stored_in():
    """Stored in int8 rows, loaded as float16 values, quantised again: the same integers."""
    from safetensors.torch import load_file

    from conformer_asr.inference.lm_dir import load_lm_dir
    from conformer_asr.inference.model_dir import BUNDLED_DIR, LM_SUBDIR, ROW_SCALE, WEIGHTS_FILE

    stored = load_file(BUNDLED_DIR / LM_SUBDIR / WEIGHTS_FILE)
    loaded = load_lm_dir(BUNDLED_DIR / LM_SUBDIR)[0].state_dict()
    matrices = [name.removesuffix(ROW_SCALE) for name in stored if name.endswith(ROW_SCALE)]
    assert "lstm.weight_hh_l0" in matrices and "out.weight" in matrices
    for name in matrices:
        assert torch.equal(int8_rows(loaded[name])[0], stored[name]), name
