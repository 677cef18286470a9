"""Self-training on each utterance (inference.adapt, ``self_train_steps``): CTC steps
towards the first transcript, checked against torch's Adam and CTC loss on one utterance
at a time, and the transcriber's second decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference import adapt as adapt_module
from conformer_asr.inference import transcriber as transcriber_module
from conformer_asr.inference.adapt import (
    SelfTraining,
    adaptation_loss,
    adapted_parameters,
    ctc_losses,
    encode_adapted,
)
from conformer_asr.inference.transcriber import Transcriber
from conformer_asr.models import ASRModel, ModelConfig
from conformer_asr.models.config import EncoderConfig

TINY = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.0)


def _ctc_model(seed: int = 0) -> ASRModel:
    torch.manual_seed(seed)
    return ASRModel(ModelConfig(encoder=TINY, vocab_size=12, ctc_weight=1.0)).eval()


def test_ctc_losses_are_each_rows_own():
    model = _ctc_model()
    enc = torch.randn(3, 20, TINY.d_model)
    lengths = torch.tensor([20, 14, 9])
    targets = [[3, 4, 4, 7], [], [1, 2]]
    losses = ctc_losses(model, enc, lengths, targets)
    assert losses[1] == 0.0  # no transcript: nothing to train towards
    for row in (0, 2):
        log_probs = model.ctc_head(enc[row:row + 1, : lengths[row]]).log_softmax(-1)
        expected = F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([targets[row]]),
                              lengths[row:row + 1], torch.tensor([len(targets[row])]),
                              reduction="sum")
        torch.testing.assert_close(losses[row], expected)


def _self_trained_alone(model: ASRModel, feats: torch.Tensor, length: torch.Tensor,
                        target: list[int], ctc_steps: int, ctc_lr: float, steps: int,
                        lr: float) -> torch.Tensor:
    """One utterance (1, T, F): torch's Adam on the model's own LayerNorms, ``ctc_steps``
    of the CTC loss towards ``target`` (none for an empty one), then ``steps`` of SUTA's
    loss with a fresh Adam, then the encoding (T', D); the parameters are put back."""
    params = adapted_parameters(model)
    original = [p.detach().clone() for p in params]

    def take(loss_of, n: int, rate: float) -> None:
        optimiser = torch.optim.Adam(params, lr=rate)
        for _ in range(n):
            with torch.enable_grad():
                enc, enc_lengths = model.encode(feats, length)
                grads = torch.autograd.grad(loss_of(enc, enc_lengths), params)
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            optimiser.step()

    def ctc(enc: torch.Tensor, enc_lengths: torch.Tensor) -> torch.Tensor:
        log_probs = model.ctc_head(enc).log_softmax(-1).transpose(0, 1)
        return F.ctc_loss(log_probs, torch.tensor([target]), enc_lengths,
                          torch.tensor([len(target)]), reduction="sum")

    try:
        if target:
            take(ctc, ctc_steps, ctc_lr)
        take(lambda enc, _: adaptation_loss(model.ctc_head(enc[0])), steps, lr)
        with torch.no_grad():
            return model.encode(feats, length)[0][0]
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, original, strict=True):
                p.copy_(p0)
                p.grad = None


@pytest.mark.parametrize("max_frames", [6000, 200])
def test_each_utterance_trains_towards_its_own_transcript(max_frames):
    """A row's output is what it gets trained alone with torch's Adam and CTC loss, then
    adapted as before, whatever else is in the batch and however it is split into runs;
    a row without a transcript is only adapted."""
    model = _ctc_model()
    feats = torch.randn(3, 160, 80)
    lengths = torch.tensor([160, 90, 41])
    feats[1, 90:] = 0.0
    feats[2, 41:] = 0.0
    targets = [[3, 4, 4, 7, 1], [], [2, 9]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc, enc_lengths = encode_adapted(model, feats, lengths, steps=2, lr=0.01,
                                      max_frames=max_frames,
                                      self_training=SelfTraining(targets, 3, 0.02))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for row, n in enumerate(enc_lengths.tolist()):
        alone = _self_trained_alone(model, feats[row:row + 1, : lengths[row]],
                                    lengths[row:row + 1], targets[row], 3, 0.02, 2, 0.01)
        assert len(alone) == n
        torch.testing.assert_close(enc[row, :n], alone, atol=1e-5, rtol=1e-4)


def test_self_training_lowers_the_loss_towards_the_transcript():
    model = _ctc_model()
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 120])
    targets = [[5, 6, 7], [1, 1, 2, 3]]
    plain, plain_lengths = encode_adapted(model, feats, lengths, steps=0, lr=0.01)
    trained, trained_lengths = encode_adapted(model, feats, lengths, steps=0, lr=0.01,
                                              self_training=SelfTraining(targets, 5, 0.02))
    assert torch.equal(plain_lengths, trained_lengths)
    with torch.no_grad():
        before = ctc_losses(model, plain, plain_lengths, targets)
        after = ctc_losses(model, trained, trained_lengths, targets)
    assert (after < before).all()


def test_the_transcriber_decodes_again_towards_its_first_transcripts(manifest_tokenizer,
                                                                      monkeypatch):
    tokenizer = manifest_tokenizer
    torch.manual_seed(0)
    model = ASRModel(ModelConfig(encoder=TINY, vocab_size=tokenizer.vocab_size,
                                 ctc_weight=1.0)).eval()
    calls = []
    encode = transcriber_module.encode

    def spy(model, feats, lengths, options, targets=None):
        calls.append(targets)
        return encode(model, feats, lengths, options, targets)
    monkeypatch.setattr(transcriber_module, "encode", spy)
    monkeypatch.setattr(adapt_module, "encode", spy)  # the second, in ``self_trained``
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000 + 4000 * i).astype(np.float32) * 0.1 for i in range(2)]

    first = Transcriber(model, tokenizer).decode_waves(waves)
    assert calls == [None]
    calls.clear()
    options = DecodingOptions(self_train_steps=3, self_train_lr=0.05)
    second = Transcriber(model, tokenizer, options).decode_waves(waves)
    assert len(calls) == 2 and calls[0] is None
    assert sorted(map(tuple, calls[1])) == sorted(tuple(h.tokens) for h in first)
    assert any(a.tokens != b.tokens for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(("fields", "message"), [
    ({"self_train_steps": -1}, "self_train_steps: must be >= 0"),
    ({"self_train_steps": 1.5}, "self_train_steps: must be a whole number"),
    ({"self_train_lr": 0.0}, "self_train_lr: must be > 0"),
    ({"self_train_lr": math.inf}, "self_train_lr: must be a finite number"),
])
def test_bad_self_training_options_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DecodingOptions(**fields)


def test_a_transducer_without_ctc_head_cannot_self_train():
    transducer = ASRModel(ModelConfig(encoder=TINY, vocab_size=12, pred_embed_dim=8,
                                      pred_hidden_dim=16, joint_dim=16))
    with pytest.raises(ValueError, match="self-training needs a CTC head"):
        DecodingOptions(self_train_steps=1).check_model(transducer)
