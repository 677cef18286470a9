"""The word-piece LM: training, its folder, test-set exclusion, and fusion through the CLI."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conformer_asr import load_model
from conformer_asr.cli import build_parser, main
from conformer_asr.decoding.lexicon import Lexicon
from conformer_asr.decoding.search import DecodingOptions
from conformer_asr.inference.lm_dir import (
    load_lm_dir,
    load_tokenizer,
    read_lexicon_words,
    save_lm_dir,
)
from conformer_asr.inference.model_dir import (
    BUNDLED_DIR,
    WEIGHTS_FILE,
    ModelDirError,
    load_model_dir,
    read_weights,
    save_model_dir,
)
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig
from conformer_asr.models.int8_rows import Int8RowsLSTM, int8_rows
from conformer_asr.models.lm import LMConfig, WordPieceLM, get_lm_config
from conformer_asr.text.tokenizer import Tokenizer
from conformer_asr.training.lm_train import STATE_FILE, LMTrainConfig, train_lm

DATA = Path(__file__).parent / "data"
SENTENCES = [
    "the cat sat on the mat", "a dog ran home", "green leaves fall in autumn",
    "we like fresh bread", "the dog sat on the rug", "a cat ran to the mat",
    "fresh leaves are green", "we ran home in autumn", "the bread is fresh",
    "a green mat for the cat",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(SENTENCES * 6) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(SENTENCES, tmp_path_factory.mktemp("tok"), vocab_size=40)


def _train_config(steps: int = 120) -> LMTrainConfig:
    return LMTrainConfig(steps=steps, batch_size=8, peak_lr=1e-2, warmup_steps=10,
                         heldout_fraction=0.1, log_every=40, checkpoint_every=40)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, corpus, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("lm")
    train_lm([corpus], tokenizer, out, get_lm_config("tiny"), _train_config(), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2, conv_kernel_size=7),
        vocab_size=tokenizer.vocab_size, pred_embed_dim=16, pred_hidden_dim=32, joint_dim=32,
    )
    return save_model_dir(ASRModel(cfg), tokenizer, tmp_path_factory.mktemp("model"))


def test_perplexity_falls_and_the_lm_prefers_real_sentences(lm_dir, tokenizer):
    lm, _, info = load_lm_dir(lm_dir)
    assert info["heldout_perplexity"] < 0.5 * info["heldout_perplexity_start"]
    assert lm.score("the cat sat on the mat", tokenizer) > lm.score("mat the on sat cat the",
                                                                     tokenizer)


def test_lm_folder_round_trip(lm_dir, tmp_path):
    lm, tokenizer, info = load_lm_dir(lm_dir)
    save_lm_dir(lm, tokenizer, tmp_path / "copy", info)
    again, _, info_again = load_lm_dir(tmp_path / "copy")
    assert again.cfg == lm.cfg and info_again == info
    tokens = torch.tensor([0, 3, 5])
    out, _ = lm.step(tokens, None)
    out_again, _ = again.step(tokens, None)
    assert torch.equal(out, out_again)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.model"]


def test_train_lm_writes_a_lexicon_of_its_text_and_the_dictionary(lm_dir):
    words = read_lexicon_words(lm_dir)
    assert words == sorted(set(words))
    assert {w for s in SENTENCES for w in s.split()} <= set(words)
    assert {"zebra", "quietly", "don't"} <= set(words)  # from the CMU dictionary
    assert "a." not in words and "'bout" not in words  # never a normalised transcript's word


def test_training_resumes_from_its_state(corpus, tokenizer, tmp_path):
    lines = []
    first = train_lm([corpus], tokenizer, tmp_path, get_lm_config("tiny"), _train_config(40),
                     log=lines.append)
    report = train_lm([corpus], tokenizer, tmp_path, get_lm_config("tiny"), _train_config(60),
                      log=lines.append)
    assert "resuming at step 40" in lines and report.steps == 60
    # the report compares with the untrained LM, not with the LM at the resumed step
    assert report.heldout_perplexity_start == first.heldout_perplexity_start
    assert report.heldout_perplexity < first.heldout_perplexity


def test_bf16_training_computes_under_autocast_and_learns(corpus, tokenizer, tmp_path,
                                                          monkeypatch):
    autocast_seen = []
    token_log_probs = WordPieceLM.token_log_probs

    def recording(self, sentences):
        if self.training:
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return token_log_probs(self, sentences)

    monkeypatch.setattr(WordPieceLM, "token_log_probs", recording)
    config = dataclasses.replace(_train_config(), bf16=True)
    report = train_lm([corpus], tokenizer, tmp_path, get_lm_config("tiny"), config,
                      log=lambda _: None)
    assert autocast_seen == [True] * 120
    assert report.heldout_perplexity < 0.5 * report.heldout_perplexity_start
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    args = build_parser().parse_args(["train-lm", "--text", "t", "--tokenizer", "k", "--out",
                                      "o", "--config", "medium", "--bf16"])
    assert args.bf16 and get_lm_config(args.config).hidden_dim == 768


def test_train_lm_writes_a_new_folder_or_resumes_its_own(corpus, tokenizer, tmp_path):
    """--out a model folder was written over (its weights lost); a resume with another
    tokenizer of the same size mixed two vocabularies."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"acoustic weights")
    with pytest.raises(ValueError, match=f"^{model}: not an LM run's folder"):
        train_lm([corpus], tokenizer, model, get_lm_config("tiny"), _train_config(5))
    assert (model / "model.safetensors").read_bytes() == b"acoustic weights"
    with pytest.raises(ValueError, match=f"^--out {model / 'model.safetensors'}: a file, not "
                                         "a folder$"):  # was "not an LM run's folder"
        train_lm([corpus], tokenizer, model / "model.safetensors", get_lm_config("tiny"),
                 _train_config(5))

    out = tmp_path / "lm"
    train_lm([corpus], tokenizer, out, get_lm_config("tiny"), _train_config(5))
    reversed_words = [" ".join(w[::-1] for w in s.split()) for s in SENTENCES]
    other = Tokenizer.train(reversed_words, tmp_path / "other", vocab_size=40)
    assert other.vocab_size == tokenizer.vocab_size  # the same LM config: only pieces differ
    with pytest.raises(ValueError, match="a run with another tokenizer; use a new --out"):
        train_lm([corpus], other, out, get_lm_config("tiny"), _train_config(10))
    smaller = Tokenizer.train(SENTENCES, tmp_path / "smaller", vocab_size=30)
    with pytest.raises(ValueError, match="a run with another tokenizer; use a new --out"):
        train_lm([corpus], smaller, out, get_lm_config("tiny"), _train_config(10))  # "LM config"
    # a new seed drew a new held-out split, of sentences it had trained on; fewer steps
    # than it had run wrote the LM of the later step (both were taken without a word)
    for config, message in [
            (dataclasses.replace(_train_config(10), seed=5), "--seed: 5, but the run in "
             f"{out} started with 0; a resume keeps its settings: give those, or use a new "
             "--out"),
            (_train_config(3), f"--steps: 3 is below the step {out / 'train_state.pt'} has "
             "reached (5); give 5 or more")]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            train_lm([corpus], tokenizer, out, get_lm_config("tiny"), config)
    with pytest.raises(ValueError, match="^--text: "):
        train_lm([corpus, corpus], tokenizer, out, get_lm_config("tiny"), _train_config(10))
    assert train_lm([corpus], tokenizer, out, get_lm_config("tiny"), _train_config(6)).steps == 6


def test_train_lm_keeps_a_second_run_out_of_its_folder(corpus, tokenizer, tmp_path):
    """Two runs resumed into one --out overwrote each other's state (it had no lock). A run
    that fails at once leaves no folder behind; one killed before its first save leaves only
    the lock, and a re-run starts there."""
    out = tmp_path / "lm"
    holder = subprocess.Popen(  # another process, as a running train-lm holds it
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from conformer_asr."
         "files import claimed\nwith claimed(Path(sys.argv[1]), '--out'):\n    print(flush=True)"
         "\n    time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        with pytest.raises(ValueError, match=f"^--out: another run \\(process "
                                             f"{holder.pid}\\) is using {out}; wait for it, or "
                                             "stop it$"):
            train_lm([corpus], tokenizer, out, get_lm_config("tiny"), _train_config(5))
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in out.iterdir()] == [".lock"]
    train_lm([corpus], tokenizer, out, get_lm_config("tiny"), _train_config(5))
    assert (out / STATE_FILE).is_file()

    one_sentence = tmp_path / "one.txt"
    one_sentence.write_text("a cat\n")
    with pytest.raises(ValueError, match="sentences left: need 2 or more"):
        train_lm([one_sentence], tokenizer, tmp_path / "new", get_lm_config("tiny"),
                 _train_config(5))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("signal_number", "stopped_by"), [
    (signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_train_lm_stopped_saves_its_last_step_and_resumes_there(corpus, tokenizer, tmp_path,
                                                                 signal_number, stopped_by):
    """Ctrl-C or SIGTERM between checkpoints lost every step since the last one."""
    config = dataclasses.replace(_train_config(60), log_every=10, checkpoint_every=40)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("step 30/"):
            os.kill(os.getpid(), signal_number)

    with pytest.raises(stopped_by):
        train_lm([corpus], tokenizer, tmp_path / "lm", get_lm_config("tiny"), config, log=log)
    assert lines[-1] == (f"stopped at step 30: the same command resumes from "
                         f"{tmp_path / 'lm' / 'train_state.pt'}")
    report = train_lm([corpus], tokenizer, tmp_path / "lm", get_lm_config("tiny"), config,
                      log=lines.append)
    assert "resuming at step 30" in lines and report.steps == 60


def test_train_lm_removes_sentences_of_excluded_manifests(corpus, tokenizer, tmp_path, capsys):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "audio": "a.wav", "text": "The cat sat on the mat."}) + "\n"
        + json.dumps({"id": "b", "audio": "b.wav", "text": "we like FRESH bread"}) + "\n")
    out = tmp_path / "lm"
    rc = main(["train-lm", "--text", str(corpus), "--tokenizer", str(tokenizer.path),
               "--out", str(out), "--exclude", str(manifest), "--config", "tiny",
               "--steps", "5", "--heldout-fraction", "0.1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "removed 12 training sentences found in --exclude manifests" in printed
    info = load_lm_dir(out)[2]
    assert info["excluded"] == 12
    assert info["train_sentences"] + info["heldout_sentences"] == 60 - 12


def test_a_manifest_given_as_text_gives_its_transcripts(tmp_path):
    """`train-lm --text train.jsonl` trained on the JSON lines, ids and paths and all."""
    from conformer_asr.training.lm_corpus import read_sentences

    plain = tmp_path / "train.jsonl"
    plain.write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "The cat sat."}) + "\n\n"
                     + json.dumps({"id": "b", "audio": "b.wav", "text": "A dog!"}) + "\n")
    cuts = tmp_path / "cuts.jsonl"
    cuts.write_text(json.dumps({"id": "c", "supervisions": [{"text": "TWO"}, {"text": "words"}]})
                    + "\n")
    text = tmp_path / "text.txt"
    text.write_text('{not json, a sentence}\n"quoted"\n')
    assert read_sentences([plain, cuts, text]) == ["the cat sat", "a dog", "two words",
                                                    "not json a sentence", "quoted"]
    (tmp_path / "half.jsonl").write_text(plain.read_text() + '{"id": "d"}\n')
    with pytest.raises(ValueError, match=r"half\.jsonl:4: no transcript"):
        read_sentences([tmp_path / "half.jsonl"])


def test_train_lm_refuses_a_manifest_without_transcripts(corpus, tokenizer, tmp_path, capsys):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav"}) + "\n")
    rc = main(["train-lm", "--text", str(corpus), "--tokenizer", str(tokenizer.path),
               "--out", str(tmp_path / "lm"), "--exclude", str(manifest), "--steps", "1"])
    assert rc == 2 and "no transcript" in capsys.readouterr().err
    assert not (tmp_path / "lm").exists()


def test_tune_prints_a_table_and_the_best_setting(model_dir, lm_dir, capsys):
    rc = main(["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
               "--lm", str(lm_dir), "--beam-size", "2", "--lm-weights", "0,0.5",
               "--length-bonuses", "0,1", "--oov-penalties", "0,3"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("encoded 4 utterances")
    rows = lines[lines.index(next(x for x in lines if "WER" in x)) + 1:][:8]
    assert [tuple(map(float, r.split()[:3])) for r in rows] == [
        (w, b, p) for w in (0, 0.5) for b in (0, 1) for p in (0, 3)]
    assert lines[-2] == f"best (beam 2, threshold {DecodingOptions().beam_threshold:g}):"


def test_tune_searches_with_the_beam_threshold_given(model_dir, lm_dir, capsys, monkeypatch):
    import conformer_asr.inference.tune as tune_module

    thresholds = []
    real = tune_module.decode
    monkeypatch.setattr(tune_module, "decode", lambda model, enc, lengths, options, *rest:
                        thresholds.append(options.beam_threshold)
                        or real(model, enc, lengths, options, *rest))
    base = ["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
            "--lm", str(lm_dir), "--beam-size", "2", "--lm-weights", "0.5",
            "--length-bonuses", "1"]
    assert main(base) == 0 and main([*base, "--beam-threshold", "2.5"]) == 0
    assert "best (beam 2, threshold 2.5):" in capsys.readouterr().out
    default = DecodingOptions().beam_threshold  # the flags of tune and pack repeat it
    assert thresholds and set(thresholds) == {default, 2.5}
    assert thresholds.count(2.5) == thresholds.count(default)
    pack = ["pack", "m", "--lm", "l", "--out", "o", "--lm-weight", "1", "--length-bonus", "1"]
    assert build_parser().parse_args(pack).beam_threshold == default


def test_tune_int8_tunes_the_int8_model_and_lm(model_dir, lm_dir, capsys, monkeypatch):
    """tune had no --int8: settings for an int8 deployment were tuned on float32 ones. The
    LM decodes in int8 rows with or without it, as the transcriber's does."""
    import conformer_asr.inference.tune as tune_module
    import conformer_asr.models.quantize as quantize

    quantized, tuned_lms = [], []
    real, real_tune = quantize.quantize_int8, tune_module.tune
    monkeypatch.setattr(quantize, "quantize_int8",
                        lambda module: quantized.append(type(module).__name__) or real(module))
    monkeypatch.setattr(tune_module, "tune", lambda model, tokenizer, lm, *args, **kwargs:
                        tuned_lms.append(lm) or real_tune(model, tokenizer, lm, *args, **kwargs))
    args = ["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
            "--lm", str(lm_dir), "--beam-size", "2", "--lm-weights", "0.5",
            "--length-bonuses", "1", "--int8"]
    assert main(args) == 0
    assert quantized == ["ASRModel"]
    assert [type(lm.lstm) for lm in tuned_lms] == [Int8RowsLSTM]
    assert capsys.readouterr().out.splitlines()[-2].startswith("best (beam 2, threshold ")


def test_tune_stops_before_encoding_on_a_bad_grid_or_with_nothing_to_score(model_dir, lm_dir,
                                                                          tmp_path, capsys):
    from conformer_asr.inference.model_dir import load_model_dir
    from conformer_asr.inference.tune import tune

    model, tokenizer, _ = load_model_dir(model_dir)
    lm, _, _ = load_lm_dir(lm_dir)
    with pytest.raises(ValueError, match="^beam_size: must be >= 1, got 0$"):
        tune(model, tokenizer, lm, "no-such-manifest.jsonl", 0, [0.1], [0.0])
    base = ["tune", "--model", str(model_dir), "--lm", str(lm_dir), "--lm-weights", "0.1",
            "--length-bonuses", "0"]
    gone = tmp_path / "gone.jsonl"
    gone.write_text('{"id": "a", "audio": "a.wav", "text": "a cat"}\n')
    assert main([*base, "--manifest", str(gone), "--beam-size", "2"]) == 2
    assert capsys.readouterr().err == (
        f"skipped (scored as empty): {tmp_path / 'a.wav'}: no such file\n"
        f"error: {gone}: none of its audio could be read; nothing to tune on\n")
    some_gone = tmp_path / "some-gone.jsonl"  # exit 1, as evaluate's (it was 0)
    some_gone.write_text(gone.read_text() + json.dumps(
        {"id": "b", "audio": str(DATA / "clip1.wav"), "text": "a cat"}) + "\n")
    assert main([*base, "--manifest", str(some_gone), "--beam-size", "2"]) == 1
    out, err = capsys.readouterr()  # the table on stdout, what was skipped on stderr
    assert err == f"skipped (scored as empty): {tmp_path / 'a.wav'}: no such file\n"
    assert "skipped" not in out and "best (beam 2, threshold " in out


def test_tune_refuses_utterances_too_long_to_decode_whole_before_encoding(
        model_dir, lm_dir, tmp_path, capsys, monkeypatch):
    """tune decodes utterances whole, at a cost growing with the square of the length (one
    of 300 s took 87 s and 3.5 GB): a too-long one is named before any encoding instead."""
    import conformer_asr.inference.tune as tune_module

    encoded = []
    monkeypatch.setattr(tune_module, "encode", lambda *args: encoded.append(args))
    monkeypatch.setattr(tune_module, "MAX_SECONDS", 1.4)  # clip1.wav: 1.545 s, clip3.wav 1.85
    manifest = tmp_path / "long.jsonl"
    manifest.write_text("".join(json.dumps({"id": name, "audio": str(DATA / name),
                                            "text": "a cat"}) + "\n"
                                for name in ("clip2.wav", "clip1.wav", "clip3.wav")))
    assert main(["tune", "--manifest", str(manifest), "--model", str(model_dir), "--lm",
                 str(lm_dir), "--lm-weights", "0.1", "--length-bonuses", "0"]) == 2
    assert capsys.readouterr().err == (
        f"error: {DATA / 'clip1.wav'}: 1.5 s long (and 1 more); tune decodes each utterance "
        "whole, up to 1.4 s: cut longer recordings into utterances (evaluate reads them in "
        "windows)\n")
    assert not encoded


@pytest.mark.parametrize(("args", "message"), [
    (["train-lm", "--steps", "0"], "argument --steps: must be 1 or more, got 0"),
    (["train-lm", "--lr", "inf"], "argument --lr: not a finite number: 'inf'"),
    (["train-lm", "--heldout-fraction", "2"],
     "argument --heldout-fraction: must be between 0 and 1, got 2"),
    (["tune", "--beam-size", "0"], "argument --beam-size: must be 1 or more, got 0"),
    (["tune", "--lm-weights", "0.1,nan"], "argument --lm-weights: not a finite number: 'nan'"),
    (["tune", "--backward-shares", "0.5, 1.5"],
     "argument --backward-shares: must be between 0 and 1, got 1.5"),
    (["tune", "--ngram-shares", ","],
     "argument --ngram-shares: not a comma-separated list of shares: ','"),
    (["pack", "m", "--beam-size", "2.5"], "argument --beam-size: not a whole number: '2.5'"),
    (["transcribe", "a.wav", "--lm-weight", "inf"],
     "argument --lm-weight: not a finite number: 'inf'"),
])
def test_bad_flag_values_are_named_by_their_flags(args, message, capsys):
    """They were named by the parameters behind them (``error: steps: must be positive``)."""
    required = {"train-lm": ["--text", "t", "--tokenizer", "m", "--out", "o"],
                "tune": ["--manifest", "d", "--lm", "l"],
                "pack": ["--lm", "l", "--out", "o", "--lm-weight", "1", "--length-bonus", "1"]}
    with pytest.raises(SystemExit) as stop:
        main([*args, *required.get(args[0], [])])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"conformer-asr {args[0]}: error: {message}"


def test_oov_penalties_without_a_lexicon_are_refused(model_dir, lm_dir, tmp_path, capsys):
    lm, tokenizer, info = load_lm_dir(lm_dir)
    save_lm_dir(lm, tokenizer, tmp_path / "lm", info)  # no words: no lexicon
    assert main(["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
                 "--lm", str(tmp_path / "lm"), "--oov-penalties", "0,2"]) == 2
    assert "no lexicon.txt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a lexicon"):
        load_model(model_dir, beam_size=2, lm=tmp_path / "lm", oov_penalty=2.0)
    assert main(["pack", str(model_dir), "--lm", str(tmp_path / "lm"), "--out",
                 str(tmp_path / "packed"), "--lm-weight", "0.4", "--length-bonus", "0.5",
                 "--oov-penalty", "2"]) == 2
    assert "no lexicon.txt" in capsys.readouterr().err and not (tmp_path / "packed").exists()


def test_transcribe_and_evaluate_with_an_lm(model_dir, lm_dir, capsys):
    transcriber = load_model(model_dir, beam_size=3, lm=str(lm_dir), lm_weight=0.2,
                             oov_penalty=1.5)
    assert isinstance(transcriber.lm, WordPieceLM) and isinstance(transcriber.lexicon, Lexicon)
    assert transcriber.lexicon.words == set(read_lexicon_words(lm_dir))
    assert (transcriber.options.beam_size, transcriber.options.lm_weight,
            transcriber.options.oov_penalty) == (3, 0.2, 1.5)
    assert len(transcriber.transcribe([str(DATA / "clip1.wav")])) == 1
    assert main(["evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                 str(model_dir), "--beam-size", "2", "--lm", str(lm_dir), "--lm-weight", "0.4",
                 "--length-bonus", "0.5", "--oov-penalty", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["utterances"] == 4
    assert report["decoding"]["lm_weight"] == 0.4 and report["decoding"]["length_bonus"] == 0.5
    assert report["decoding"]["oov_penalty"] == 2


def test_lm_folders_missing_or_not_lm_folders_are_told_apart(model_dir, tmp_path):
    with pytest.raises(ModelDirError, match=f"^{tmp_path / 'nowhere'}: no such LM folder$"):
        load_model(model_dir, lm=tmp_path / "nowhere")  # was "not an LM folder (no ...)"
    with pytest.raises(ModelDirError, match=f"^{tmp_path}: not an LM folder \\(no config.json\\)$"):
        load_model(model_dir, lm=tmp_path)
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / STATE_FILE).write_bytes(b"")  # train-lm stopped before its end
    with pytest.raises(ModelDirError, match=f"^{tmp_path / 'stopped'}: an LM still being "
                                            "trained or stopped"):  # "not an LM folder"
        load_model(model_dir, lm=tmp_path / "stopped")
    with pytest.raises(ModelDirError, match=f"^{model_dir}: a model folder, not an LM folder "
                                            r"\(train-lm writes those\)$"):  # was "invalid..."
        load_model(model_dir, lm=model_dir)


def test_int8_rows_load_back_and_a_stray_scale_is_an_error(tmp_path):
    from safetensors.torch import save_file

    matrix = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.01]])
    rows, scale = int8_rows(matrix)
    assert rows.dtype == torch.int8 and rows[0, 1] == -127 and scale[1] == 1.0
    save_file({"w": rows, "w.row_scale": scale, "b": torch.ones(3)}, tmp_path / WEIGHTS_FILE)
    weights = read_weights(tmp_path)
    assert weights.keys() == {"w", "b"} and weights["w"].dtype == torch.float16
    assert torch.allclose(weights["w"].float(), matrix, atol=3.0 / 254 + 2e-3)
    save_file({"w": matrix, "w.row_scale": scale}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ModelDirError, match=r"unreadable weights \(w\.row_scale scales no "
                                            "int8 matrix"):
        read_weights(tmp_path)


def test_an_lm_with_another_tokenizer_is_refused(model_dir, tmp_path):
    other = Tokenizer.train(SENTENCES + ["zebras quietly jump"], tmp_path / "tok", vocab_size=45)
    save_lm_dir(WordPieceLM(LMConfig(vocab_size=other.vocab_size)), other, tmp_path / "lm")
    with pytest.raises(ModelDirError, match="another tokenizer"):
        load_model(model_dir, beam_size=2, lm=tmp_path / "lm")


def test_pack_bundles_the_lm_and_its_tuned_decoding(model_dir, lm_dir, tmp_path, capsys):
    out = tmp_path / "packed"
    args = ["pack", str(model_dir), "--lm", str(lm_dir), "--out", str(out), "--beam-size", "3",
            "--beam-threshold", "7.5", "--lm-weight", "0.4", "--length-bonus", "0.5",
            "--oov-penalty", "1.5"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(  # it printed DecodingOptions(beam_size=3, ...)
        f"{out}: {model_dir} + {lm_dir} (weights in float16, the LM's matrices in int8), "
        "decoding with beam 3 (threshold "
        "7.5), LM weight 0.4, length bonus 0.5, OOV penalty 1.5, 0 adaptation steps, 0 "
        "self-training steps; ")
    assert (out / "lm" / "lexicon.txt").read_text() == (lm_dir / "lexicon.txt").read_text()
    stored = load_file(str(out / "lm" / "model.safetensors"))
    original = load_lm_dir(lm_dir)[0].state_dict()
    matrices = {k for k, v in original.items() if v.dim() == 2}
    assert matrices and {k: stored[k].dtype for k in matrices} == dict.fromkeys(
        matrices, torch.int8)
    assert {k: stored[k + ".row_scale"].shape for k in matrices} == {
        k: original[k].shape[:1] for k in matrices}
    assert {v.dtype for k, v in stored.items() if k in original and k not in matrices} == \
        {torch.float16}
    stored_model = load_file(str(out / "model.safetensors"))
    original_model = load_model_dir(model_dir)[0].state_dict()
    assert {v.dtype for v in stored_model.values() if v.is_floating_point()} == {torch.float16}
    assert stored_model["encoder.blocks.0.conv.batch_norm.num_batches_tracked"].dtype == torch.long

    packed = load_model(out)  # the folder's own LM and decoding, as transcribe uses it
    assert packed.options == DecodingOptions(beam_size=3, beam_threshold=7.5, lm_weight=0.4,
                                             length_bonus=0.5, oov_penalty=1.5)
    assert packed.lexicon is not None
    assert isinstance(packed.lm.lstm, Int8RowsLSTM)  # decoding multiplies in int8 rows
    for key, value in load_lm_dir(out / "lm")[0].state_dict().items():  # as it loads
        assert torch.equal(value, value.half().float()), key  # float16 values (lstm_step)
        if key in matrices:  # within half an int8 step of each row, and float16's rounding
            step = original[key].abs().amax(dim=1, keepdim=True) / 127
            error = (value - original[key]).abs()
            assert (error <= 0.5 * step + original[key].abs() * 2**-10).all(), key
        else:
            assert torch.equal(value, original[key].half().float()), key
    for key, value in packed.model.state_dict().items():
        expected = original_model[key]
        assert torch.equal(value, expected.half().float() if expected.is_floating_point()
                           else expected), key
    assert len(packed.transcribe([str(DATA / "clip1.wav")])) == 1
    assert load_model(out, beam_size=2).options.lm_weight == 0.4
    for lm in (out / "lm", lm_dir):  # named: the same settings (it used to be beam 1)
        assert load_model(out, lm=lm).options == packed.options
    assert load_model(model_dir, lm=lm_dir).options == DecodingOptions()  # none to take

    plain = load_model(out, lm=None)
    assert plain.lm is None and plain.options == DecodingOptions()
    assert main(["transcribe", str(DATA / "clip1.wav"), "--model", str(out), "--lm", "none"]) == 0

    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    assert main([*args[:4], "--out", str(a_file), *args[6:]]) == 2
    assert capsys.readouterr().err == f"error: --out {a_file}: a file, not a folder\n"


def _ctc_model_dir(tokenizer: Tokenizer, out: Path, seed: int) -> Path:
    """A folder of a tiny, untrained CTC-only model (one that adaptation can train)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2,
                                            conv_kernel_size=7),
                      vocab_size=tokenizer.vocab_size, ctc_weight=1.0)
    return save_model_dir(ASRModel(cfg), tokenizer, out)


def test_pack_keeps_adaptation_steps_for_a_ctc_model_only(model_dir, lm_dir, tokenizer,
                                                          tmp_path, capsys):
    """--adapt-steps, --self-train-steps, --confident-entropy and --adapt-to-speaker are
    stored with the decoding, int8 models included; 0 (False) turns each off at load time; a
    transducer-only model (no CTC head to adapt on) is refused before packing, and by
    tune."""
    ctc_dir = _ctc_model_dir(tokenizer, tmp_path / "ctc", seed=0)
    common = ["--lm", str(lm_dir), "--lm-weight", "0.4", "--length-bonus", "0.5",
              "--adapt-steps", "2"]
    assert main(["pack", str(ctc_dir), "--out", str(tmp_path / "packed"), *common,
                 "--self-train-steps", "3", "--confident-entropy", "0.5",
                 "--adapt-to-speaker"]) == 0
    assert ("2 adaptation steps, 3 self-training steps (none for utterances of at most 0.5 "
            "nats a frame unadapted), each speaker learnt first; ") in capsys.readouterr().out
    packed = load_model(tmp_path / "packed")
    assert (packed.options.adapt_steps, packed.options.self_train_steps,
            packed.options.confident_entropy, packed.options.speaker_adaptation) == (
                2, 3, 0.5, True)
    assert len(packed.transcribe([str(DATA / "clip1.wav")])) == 1
    off = load_model(tmp_path / "packed", adapt_steps=0, self_train_steps=0,
                     confident_entropy=0, speaker_adaptation=False).options
    assert (off.adapt_steps, off.self_train_steps, off.confident_entropy,
            off.speaker_adaptation) == (0, 0, 0, False)
    int8 = load_model(tmp_path / "packed", int8=True)
    assert (int8.options.adapt_steps, int8.options.self_train_steps) == (2, 3)
    assert len(int8.transcribe([str(DATA / "clip1.wav")])) == 1
    assert main(["transcribe", str(DATA / "clip1.wav"), "--model", str(tmp_path / "packed"),
                 "--self-train-steps", "0"]) == 0

    assert main(["pack", str(model_dir), "--out", str(tmp_path / "rnnt"), *common]) == 2
    assert "adaptation needs a CTC head" in capsys.readouterr().err
    assert main(["pack", str(model_dir), "--out", str(tmp_path / "rnnt"), *common[:-2],
                 "--adapt-to-speaker"]) == 2
    assert "adaptation to each speaker needs a CTC head" in capsys.readouterr().err
    assert not (tmp_path / "rnnt").exists()

    tune = ["tune", "--manifest", str(DATA / "manifest.jsonl"), "--lm", str(lm_dir),
            "--lm-weights", "0.3", "--length-bonuses", "0", "--adapt-steps", "2"]
    assert main([*tune, "--model", str(ctc_dir)]) == 0  # tuned as pack will decode
    assert main([*tune, "--model", str(ctc_dir), "--int8"]) == 0  # int8 adapts too
    assert main([*tune, "--model", str(model_dir)]) == 2
    assert "adaptation needs a CTC head" in capsys.readouterr().err


@pytest.mark.parametrize("gated", [False, True])
def test_tune_self_trains_and_gates_as_the_transcriber_does(lm_dir, tokenizer, tmp_path,
                                                            monkeypatch, gated):
    """tune had no --self-train-steps: the bundle's settings were tuned on one decoding and
    shipped with two; then it had no --confident-entropy, and adapted the utterances the
    bundle decodes once. With them, a setting scores what ``evaluate`` of that setting
    scores, and the second decoding trains towards that setting's first transcripts of the
    utterances the gate did not let through."""
    import conformer_asr.inference.adapt as adapt
    from conformer_asr.audio.io import load_audio
    from conformer_asr.inference.evaluate import evaluate, read_manifest
    from conformer_asr.inference.lm_dir import lm_for_decoding, load_lexicon_for, load_lm_for
    from conformer_asr.inference.tune import tune

    ctc_dir = _ctc_model_dir(tokenizer, tmp_path / "ctc", seed=1)
    model, model_tokenizer, _ = load_model_dir(ctc_dir)
    model.eval()
    threshold, unsure = 0.0, 4
    if gated:  # the median of the utterances' own entropies lets two of the four through
        features = load_model(ctc_dir, lm=None).features_of
        entropies = []
        with torch.no_grad():
            for utterance in read_manifest(DATA / "manifest.jsonl"):
                enc, lengths = model.encode(*features([load_audio(utterance.audio)]))
                entropies.append(float(adapt.mean_frame_entropy(model, enc, lengths)))
        threshold = sorted(entropies)[1]
        unsure = sum(e > threshold for e in entropies)
        assert unsure == 2
    targets: list[list[int]] = []
    real = adapt.encode
    monkeypatch.setattr(adapt, "encode", lambda *args: targets.extend(args[4] or [])
                        or real(*args))
    settings = {"lm_weight": 0.3, "length_bonus": 0.5, "oov_penalty": 2.0}
    lm = lm_for_decoding(load_lm_for(str(lm_dir), model_tokenizer), "cpu")
    logged: list[str] = []
    tuning = tune(model, model_tokenizer, lm,
                  DATA / "manifest.jsonl", 2, [settings["lm_weight"]],
                  [settings["length_bonus"]], [settings["oov_penalty"]],
                  load_lexicon_for(str(lm_dir), model_tokenizer), adapt_steps=2,
                  self_train_steps=3, confident_entropy=threshold, log=logged.append)
    assert len(targets) == unsure and any(targets)  # a first transcript per unsure one
    assert ("; 2 sure enough to decode once, unadapted" in logged[0]) == gated
    report = evaluate(load_model(ctc_dir, beam_size=2, lm=str(lm_dir), adapt_steps=2,
                                 self_train_steps=3, confident_entropy=threshold,
                                 **settings), DATA / "manifest.jsonl")
    assert tuning.results[0].errors == report.total


def test_a_packed_folder_with_bad_decoding_options_is_refused(model_dir, lm_dir, tmp_path):
    out = tmp_path / "packed"
    assert main(["pack", str(model_dir), "--lm", str(lm_dir), "--out", str(out), "--beam-size",
                 "2", "--lm-weight", "0.4", "--length-bonus", "0.5"]) == 0
    config = json.loads((out / "config.json").read_text())
    config["decoding"]["beam_width"] = 4  # not a DecodingOptions field
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="invalid decoding options"):
        load_model(out)


def test_train_lm_tokenizer_of_a_folder_a_file_or_the_bundled_model(tokenizer, tmp_path):
    bundled = (BUNDLED_DIR / "tokenizer.model").read_bytes()
    assert load_tokenizer("default").sp.serialized_model_proto() == bundled
    assert load_tokenizer(BUNDLED_DIR).sp.serialized_model_proto() == bundled
    assert load_tokenizer(tokenizer.path).vocab_size == tokenizer.vocab_size
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "run" / "model").mkdir(parents=True)  # was "tokenizer model not found"
    with pytest.raises(ModelDirError, match=f"^{tmp_path / 'run'}: a training run's folder; "
                                            f"its model is {tmp_path / 'run' / 'model'}$"):
        load_tokenizer(tmp_path / "run")
