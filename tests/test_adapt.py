"""Test-time adaptation (inference.adapt): its loss against a loop written out by hand,
and what it must leave alone: the model, the other utterances of a batch."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.plain import adapt_one_at_a_time
from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference import adapt
from conformer_asr.inference.adapt import (
    ENTROPY_WEIGHT,
    MAX_FRAMES,
    TEMPERATURE,
    adaptation_loss,
    adapted_parameters,
    encode,
    encode_adapted,
    with_rowwise_layer_norms,
)
from conformer_asr.models import ASRModel, ModelConfig, quantize_int8
from conformer_asr.models.config import EncoderConfig

TINY = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.0)


def _ctc_model(seed: int = 0) -> ASRModel:
    torch.manual_seed(seed)
    return ASRModel(ModelConfig(encoder=TINY, vocab_size=12, ctc_weight=1.0)).eval()


def _loss_by_hand(logits: list[list[float]]) -> float:
    """SUTA's loss, one frame and one class at a time."""
    probs, entropies = [], []
    for row in logits:
        scaled = [x / TEMPERATURE for x in row]
        top = max(scaled)
        total = sum(math.exp(x - top) for x in scaled)
        p = [math.exp(x - top) / total for x in scaled]
        probs.append(p)
        entropies.append(-sum(q * math.log(q) for q in p))
    labelled = [h for h, row in zip(entropies, logits, strict=True)
                if max(range(len(row)), key=row.__getitem__) != 0]
    mean_entropy = sum(labelled) / len(labelled) if labelled else 0.0
    raw = [1 + math.exp(-h) for h in entropies]
    weights = [w * len(raw) / sum(raw) for w in raw]
    classes = len(logits[0])
    confusion = [[sum(weights[t] * probs[t][i] * probs[t][j] for t in range(len(logits)))
                  for j in range(classes)] for i in range(classes)]
    off_diagonal = sum(confusion[i][j] / sum(confusion[i]) for i in range(classes)
                       for j in range(classes) if i != j)
    return ENTROPY_WEIGHT * mean_entropy + (1 - ENTROPY_WEIGHT) * off_diagonal / classes


@pytest.mark.parametrize("blank_frames", [0, 3, 6])
def test_loss_matches_a_loop_written_out(blank_frames):
    torch.manual_seed(blank_frames)
    logits = torch.randn(6, 4) * 3
    logits[:blank_frames, 0] = 20.0  # these frames' most likely token is blank
    expected = _loss_by_hand(logits.tolist())
    assert adaptation_loss(logits).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_loss_is_lower_for_confident_unconfused_frames():
    confident = torch.eye(5)[[1, 2, 3, 4, 1]] * 30  # each frame sure of its own token
    unsure = torch.zeros(5, 5)  # every frame uniform
    assert adaptation_loss(confident) < 0.5 * adaptation_loss(unsure)


def test_adaptation_lowers_its_loss_and_puts_the_model_back():
    model = _ctc_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats, lengths = torch.randn(1, 120, 80), torch.tensor([120])
    plain, plain_lengths = encode_adapted(model, feats, lengths, steps=0, lr=0.01)
    with torch.no_grad():
        reference, _ = model.encode(feats, lengths)
    torch.testing.assert_close(plain, reference)
    adapted, adapted_lengths = encode_adapted(model, feats, lengths, steps=5, lr=0.01)
    assert torch.equal(adapted_lengths, plain_lengths)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    with torch.no_grad():
        assert adaptation_loss(model.ctc_head(adapted[0])) < adaptation_loss(
            model.ctc_head(plain[0]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_only_the_layer_norms_move():
    model = _ctc_model()
    names = {id(p) for p in adapted_parameters(model)}
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert names == {id(p) for m in norms for p in m.parameters()}
    assert len(names) == 2 * len(norms) > 0


@pytest.mark.parametrize(("max_frames", "runs"), [
    (MAX_FRAMES, [[160, 90, 41]]), (200, [[160], [90, 41]]), (1, [[160], [90], [41]])])
def test_each_utterance_is_adapted_alone(max_frames, runs, monkeypatch):
    """A row's output is what it gets when adapted by itself (torch's Adam on the model's
    own LayerNorms, one utterance at a time: ``adapt_one_at_a_time``), whatever else is in
    the batch (padding included), however the batch is split into runs to bound memory,
    and the batch comes back padded to its longest row."""
    model = _ctc_model()
    feats = torch.randn(3, 160, 80)
    lengths = torch.tensor([160, 90, 41])
    feats[1, 90:] = 0.0
    feats[2, 41:] = 0.0
    seen = []

    def spy(model, feats, lengths, *args):
        seen.append(lengths.tolist())
        return adapt_rows(model, feats, lengths, *args)
    adapt_rows = adapt._adapt_rows
    monkeypatch.setattr(adapt, "_adapt_rows", spy)
    enc, enc_lengths = encode_adapted(model, feats, lengths, steps=3, lr=0.01,
                                      max_frames=max_frames)
    assert seen == runs
    alone, alone_lengths = adapt_one_at_a_time(model, feats, lengths, steps=3, lr=0.01)
    assert torch.equal(enc_lengths, alone_lengths)
    for row, n in enumerate(alone_lengths.tolist()):
        torch.testing.assert_close(enc[row, :n], alone[row, :n], atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(enc[row, n:]) == 0
    assert enc.shape[1] == int(enc_lengths.max())


def _layer_norm_gradient(model: ASRModel, feats: torch.Tensor,
                         lengths: torch.Tensor) -> torch.Tensor:
    """The adaptation loss's gradient in every row's LayerNorm gains and biases."""
    adapting, table = with_rowwise_layer_norms(model, feats.shape[0])
    enc, enc_lengths = adapting.encode(feats, lengths)
    logits = adapting.ctc_head(enc)
    loss = sum(adaptation_loss(logits[row, : int(n)]) for row, n in enumerate(enc_lengths))
    return torch.autograd.grad(loss, table)[0]


def test_an_int8_model_adapts_as_its_float32_model_does():
    """Gradients pass through the int8 Linear layers: the adaptation's gradient is close to
    the float32 model's, and its steps move the encoder output the same way."""
    model = _ctc_model()
    int8 = quantize_int8(model)
    feats, lengths = torch.randn(2, 120, 80), torch.tensor([120, 90])
    expected = _layer_norm_gradient(model, feats, lengths)
    error = _layer_norm_gradient(int8, feats, lengths) - expected
    assert error.norm() < 0.1 * expected.norm()
    unadapted, _ = encode_adapted(int8, feats, lengths, steps=0, lr=0.01)
    adapted, _ = encode_adapted(int8, feats, lengths, steps=5, lr=0.01)
    adapted_float, _ = encode_adapted(model, feats, lengths, steps=5, lr=0.01)
    assert (adapted - adapted_float).norm() < 0.5 * (adapted - unadapted).norm()
    with torch.no_grad():
        assert adaptation_loss(model.ctc_head(adapted[0])) < adaptation_loss(
            model.ctc_head(unadapted[0]))


def test_adapting_leaves_the_model_as_it_was():
    """Adaptation works on a copy whose LayerNorms are per-row ones; the model keeps its
    own modules and encodes as before, also after an error inside the adaptation. The
    copy shares every other module and every parameter."""
    model = _ctc_model()
    modules = list(model.modules())
    feats, lengths = torch.randn(2, 100, 80), torch.tensor([100, 70])
    with torch.no_grad():
        before, _ = model.encode(feats, lengths)
    encode_adapted(model, feats, lengths, steps=2, lr=0.01)
    with pytest.raises(RuntimeError):  # a feature size the encoder cannot take
        encode_adapted(model, torch.randn(2, 100, 7), lengths, steps=2, lr=0.01)
    with torch.no_grad():
        after, _ = model.encode(feats, lengths)
    assert torch.equal(before, after)
    assert list(model.modules()) == modules
    adapting, _ = with_rowwise_layer_norms(model, rows=2)
    norms = [m for m in modules if isinstance(m, torch.nn.LayerNorm)]
    rowwise = [m for m in adapting.modules() if isinstance(m, adapt.RowwiseLayerNorm)]
    assert len(rowwise) == len(norms) > 0
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in adapting.modules())
    assert adapting.ctc_head is model.ctc_head
    assert adapting.encoder.subsampling is model.encoder.subsampling
    assert {id(p) for p in adapting.parameters()} < {id(p) for p in model.parameters()}


def test_threads_adapt_with_one_model_at_once():
    """A server's threads transcribing with one model: each adaptation works on its own
    copy of the LayerNorms, so concurrent calls give what they give one after another
    (swapping the LayerNorms in the shared model made them fail)."""
    import threading

    model = _ctc_model()
    inputs = [(torch.randn(1, 120 + 20 * i, 80), torch.tensor([120 + 20 * i]))
              for i in range(4)]
    expected = [encode_adapted(model, f, n, steps=3, lr=0.01)[0] for f, n in inputs]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[i] = encode_adapted(model, *inputs[i], steps=3, lr=0.01)[0]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(len(inputs)))
    for i, reference in enumerate(expected):
        torch.testing.assert_close(results[i], reference)


def test_encode_adapts_only_when_the_options_say_so():
    model = _ctc_model()
    feats, lengths = torch.randn(2, 100, 80), torch.tensor([100, 70])
    with torch.no_grad():  # as the transcriber calls it
        reference, _ = model.encode(feats, lengths)
        off, _ = encode(model, feats, lengths, DecodingOptions())
    assert torch.equal(off, reference)
    on, _ = encode(model, feats, lengths, DecodingOptions(adapt_steps=2, adapt_lr=0.01))
    expected, _ = encode_adapted(model, feats, lengths, steps=2, lr=0.01)
    torch.testing.assert_close(on, expected)


@pytest.mark.parametrize(("fields", "message"), [
    ({"adapt_steps": -1}, "adapt_steps: must be >= 0"),
    ({"adapt_steps": 2.5}, "adapt_steps: must be a whole number"),
    ({"adapt_steps": True}, "adapt_steps: must be a whole number"),
    ({"adapt_lr": 0.0}, "adapt_lr: must be > 0"),
    ({"adapt_lr": math.nan}, "adapt_lr: must be a finite number"),
    ({"confident_entropy": -0.1}, "confident_entropy: must be >= 0"),
    ({"confident_entropy": math.nan}, "confident_entropy: must be a finite number"),
    ({"confident_entropy": "1"}, "confident_entropy: must be a number"),
])
def test_bad_adaptation_options_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DecodingOptions(**fields)


def test_a_transducer_without_ctc_head_cannot_adapt():
    transducer = ASRModel(ModelConfig(encoder=TINY, vocab_size=12, pred_embed_dim=8,
                                      pred_hidden_dim=16, joint_dim=16))
    with pytest.raises(ValueError, match="adaptation needs a CTC head"):
        DecodingOptions(adapt_steps=1).check_model(transducer)
    with pytest.raises(ValueError, match="the confidence gate needs a CTC head"):
        DecodingOptions(confident_entropy=0.5).check_model(transducer)
    DecodingOptions().check_model(transducer)
