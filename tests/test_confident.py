"""The confidence gate (``DecodingOptions.confident_entropy``): utterances whose unadapted
CTC posteriors are sure enough are decoded once, unadapted; the others as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference.adapt import mean_frame_entropy
from conformer_asr.inference.transcriber import Transcriber
from conformer_asr.models import ASRModel, ModelConfig
from conformer_asr.models.config import EncoderConfig

TINY = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.0)
ADAPTED = DecodingOptions(adapt_steps=3, adapt_lr=0.3, self_train_steps=1, self_train_lr=0.3)


def test_mean_frame_entropy_is_each_rows_own_mean():
    torch.manual_seed(0)
    model = ASRModel(ModelConfig(encoder=TINY, vocab_size=12, ctc_weight=1.0)).eval()
    enc = torch.randn(3, 20, TINY.d_model) * 3
    lengths = torch.tensor([20, 13, 1])
    got = mean_frame_entropy(model, enc, lengths)
    for row, n in enumerate(lengths.tolist()):
        logits = model.ctc_head(enc[row, :n])
        expected = torch.distributions.Categorical(logits=logits).entropy().mean()
        torch.testing.assert_close(got[row], expected)


def test_sure_rows_are_decoded_unadapted_and_the_others_as_before(manifest_tokenizer,
                                                                   monkeypatch):
    tokenizer = manifest_tokenizer
    torch.manual_seed(0)
    model = ASRModel(ModelConfig(encoder=TINY, vocab_size=tokenizer.vocab_size,
                                 ctc_weight=1.0)).eval()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(8000 + 3000 * i).astype(np.float32) * (0.02 + 0.2 * (i % 2))
             for i in range(6)]
    plain = Transcriber(model, tokenizer)
    with torch.no_grad():
        enc, enc_lengths = model.encode(*plain.features_of(waves))
        entropy = mean_frame_entropy(model, enc, enc_lengths)
    threshold = float(entropy.median())
    sure = (entropy <= threshold).tolist()
    assert 0 < sum(sure) < len(waves)

    adapted_lengths = []
    decode_adapted = Transcriber._decode_adapted

    def spy(self, feats, feat_lengths):
        adapted_lengths.extend(feat_lengths.tolist())
        return decode_adapted(self, feats, feat_lengths)
    monkeypatch.setattr(Transcriber, "_decode_adapted", spy)
    gated = Transcriber(model, tokenizer, replace(ADAPTED, confident_entropy=threshold))
    got = [hyp.tokens for hyp in gated.decode_waves(waves)]
    _, unsure_lengths = plain.features_of([w for w, s in zip(waves, sure, strict=True)
                                           if not s])
    assert sorted(adapted_lengths) == sorted(unsure_lengths.tolist())  # adapted: these only

    unadapted = [hyp.tokens for hyp in plain.decode_waves(waves)]
    every = [hyp.tokens for hyp in Transcriber(model, tokenizer, ADAPTED).decode_waves(waves)]
    assert unadapted != every  # the two decodings differ, so the routing shows
    assert got == [u if s else a for u, a, s in zip(unadapted, every, sure, strict=True)]


def test_the_gate_set_to_zero_adapts_every_utterance(manifest_tokenizer, monkeypatch):
    tokenizer = manifest_tokenizer
    torch.manual_seed(1)
    model = ASRModel(ModelConfig(encoder=TINY, vocab_size=tokenizer.vocab_size,
                                 ctc_weight=1.0)).eval()
    encoded = []
    monkeypatch.setattr(model, "encode", lambda *a: encoded.append(a) or ASRModel.encode(
        model, *a))
    waves = [np.random.default_rng(i).standard_normal(9000).astype(np.float32) * 0.1
             for i in range(2)]
    Transcriber(model, tokenizer, ADAPTED).decode_waves(waves)
    assert not encoded  # no unadapted encoding is spent where nothing is gated
