"""A tiny model learns a handful of real (synthesised) clips, through the whole pipeline."""

import json
from pathlib import Path

import pytest
import torch

from conformer_asr import load_model
from conformer_asr.audio.features import LogMelFeatures
from conformer_asr.audio.io import load_audio
from conformer_asr.inference.model_dir import save_model_dir
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig, SpecAugmentConfig
from conformer_asr.text.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"


def _clips() -> tuple[list[Path], list[str]]:
    rows = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
    return [DATA / r["audio"] for r in rows], [r["text"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("ctc_weight", [1.0, 0.0, 0.3], ids=["ctc", "rnnt", "hybrid"])
def test_tiny_model_overfits_clips(tmp_path, ctc_weight):
    torch.manual_seed(0)
    paths, texts = _clips()
    tokenizer = Tokenizer.train(texts, tmp_path / "tok", vocab_size=40)
    cfg = ModelConfig(
        encoder=EncoderConfig(d_model=64, n_layers=2, n_heads=4, conv_kernel_size=15,
                              dropout=0.0),
        spec_augment=SpecAugmentConfig(freq_masks=0, time_masks=0),
        vocab_size=tokenizer.vocab_size, ctc_weight=ctc_weight,
        pred_embed_dim=32, pred_hidden_dim=64, joint_dim=64,
    )
    model = ASRModel(cfg)

    waves = [torch.from_numpy(load_audio(p)) for p in paths]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    feats, feat_lengths = LogMelFeatures()(batch, lengths)
    tokens = [torch.tensor(tokenizer.encode(t)) for t in texts]
    targets = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
    target_lengths = torch.tensor([len(t) for t in tokens])

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    save_model_dir(model, tokenizer, tmp_path / "untrained")
    assert load_model(tmp_path / "untrained").transcribe([str(p) for p in paths]) != texts
    first = None
    for step in range(1, 501):
        model.train()
        loss = model(feats, feat_lengths, targets, target_lengths).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            save_model_dir(model, tokenizer, tmp_path / "model")
            hyps = load_model(tmp_path / "model").transcribe([str(p) for p in paths])
            if hyps == texts:
                break
    assert loss.item() < 0.1 * first
    assert hyps == texts, f"not learnt after {step} steps"
