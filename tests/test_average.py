"""``conformer-asr average``: a model folder of the mean of models' weights, and the models
it refuses."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conformer_asr import load_model
from conformer_asr.cli import main
from conformer_asr.inference.model_dir import read_config, save_model_dir
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig, SpecAugmentConfig
from conformer_asr.text.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.usefixtures("one_thread")


def _model_dir(tokenizer: Tokenizer, out: Path, seed: int, d_model: int = 16,
               dropout: float = 0.1, time_masks: int = 10, name: str = "custom") -> Path:
    """A tiny CTC model's folder, its BatchNorm statistics and batch counter set by the
    seed too (buffers: the float ones are averaged, the counter is the last model's)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, encoder=EncoderConfig(d_model=d_model, n_layers=1, n_heads=2,
                                            conv_kernel_size=3, dropout=dropout),
                      spec_augment=SpecAugmentConfig(time_masks=time_masks),
                      vocab_size=tokenizer.vocab_size, ctc_weight=1.0)
    model = ASRModel(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(seed)
    return save_model_dir(model, tokenizer, out, info={"seed": seed})


def test_average_writes_each_weights_mean(manifest_tokenizer, tmp_path, capsys):
    folders = [_model_dir(manifest_tokenizer, tmp_path / f"m{seed}", seed) for seed in (1, 2)]
    # training-time settings and names may differ; the soup keeps the first model's
    folders.append(_model_dir(manifest_tokenizer, tmp_path / "m3", 3, dropout=0.3, time_masks=2,
                              name="seed-3"))
    out = tmp_path / "soup"
    assert main(["average", *map(str, folders), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: the mean of 3 models' weights, in float32\n"

    states = [load_file(str(folder / "model.safetensors")) for folder in folders]
    soup = load_file(str(out / "model.safetensors"))
    assert soup.keys() == states[0].keys()
    assert any(name.endswith("running_mean") for name in soup)
    for name, value in soup.items():
        if value.is_floating_point():
            expected = torch.stack([state[name] for state in states]).mean(dim=0)
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)
        else:
            assert torch.equal(value, states[-1][name]), name  # 3: the last model's counter
    assert read_config(out).model == read_config(folders[0]).model
    info = read_config(out).info["averaged_models"]
    assert info == [{"folder": str(folder), "info": {"seed": seed}}
                    for folder, seed in zip(folders, (1, 2, 3), strict=True)]
    assert len(load_model(out, lm=None).transcribe([str(DATA / "clip1.wav")])) == 1


def test_average_refuses_models_it_cannot_average(manifest_tokenizer, tmp_path, capsys):
    first = _model_dir(manifest_tokenizer, tmp_path / "first", 1)
    wider = _model_dir(manifest_tokenizer, tmp_path / "wider", 2, d_model=32)
    # the same number of pieces, other pieces: the manifest's texts in ROT13
    rot13 = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
    texts = [json.loads(line)["text"].lower().translate(rot13)
             for line in (DATA / "manifest.jsonl").open()]
    other_pieces = Tokenizer.train(texts, tmp_path / "tok",
                                   vocab_size=manifest_tokenizer.vocab_size)
    other = _model_dir(other_pieces, tmp_path / "other", 3)
    out = tmp_path / "soup"
    for models, error in [
        ([first], "average: give two models or more"),
        ([first, wider], f"{wider}: another architecture than {first}'s"),
        ([first, other], f"{other}: another tokenizer than {first}'s"),
        ([first, tmp_path / "missing"], f"{tmp_path / 'missing'}: no such model folder"),
    ]:
        assert main(["average", *map(str, models), "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"error: {error}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "other", "tok", "wider"]

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["average", str(first), str(first), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}: already exists and is not empty; "
                                       "give a new folder\n")
