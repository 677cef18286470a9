"""Backward LMs and rescoring a search's best hypotheses with one (decoding.rescore)."""

import dataclasses
import itertools
import json
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conformer_asr import load_model
from conformer_asr.cli import main
from conformer_asr.decoding.beam import NEG_INF
from conformer_asr.decoding.ctc_beam import ctc_beam_search
from conformer_asr.decoding.rescore import TOP, Rescoring, rescored
from conformer_asr.decoding.rnnt_beam import rnnt_beam_search
from conformer_asr.files import read_text
from conformer_asr.inference.lm_dir import load_lm_dir
from conformer_asr.inference.model_dir import save_model_dir
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig
from conformer_asr.models.lm import LMConfig, WordPieceLM, get_lm_config
from conformer_asr.text.tokenizer import Tokenizer
from conformer_asr.training.lm_train import LMTrainConfig, train_lm

DATA = Path(__file__).parent / "data"
SENTENCES = ["the cat sat on the mat", "a dog ran home", "green leaves fall in autumn",
             "we like fresh bread", "the dog sat on the rug", "a cat ran to the mat"]


MANIFEST_TEXTS = {json.loads(line)["text"] for line in (DATA / "manifest.jsonl").open()}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return Tokenizer.train(SENTENCES, tmp_path_factory.mktemp("tok"), vocab_size=40)


def _train(tokenizer: Tokenizer, out: Path, backward: bool) -> Path:
    text = out.parent / f"{out.name}.txt"
    text.write_text("\n".join(SENTENCES * 6) + "\n")
    config = LMTrainConfig(steps=60, batch_size=8, peak_lr=1e-2, warmup_steps=10,
                           heldout_fraction=0.2, log_every=60, checkpoint_every=60)
    lm_config = dataclasses.replace(get_lm_config("tiny"), backward=backward)
    train_lm([text], tokenizer, out, lm_config, config, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """(a forward LM folder, a backward one), trained on the same sentences."""
    root = tmp_path_factory.mktemp("lms")
    return _train(tokenizer, root / "forward", False), _train(tokenizer, root / "backward", True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2,
                                            conv_kernel_size=7),
                      vocab_size=tokenizer.vocab_size, ctc_weight=1.0)
    return save_model_dir(ASRModel(cfg), tokenizer, tmp_path_factory.mktemp("model"))


def test_a_backward_lm_reads_each_sentence_last_piece_first():
    torch.manual_seed(0)
    backward = WordPieceLM(LMConfig(vocab_size=12, embed_dim=8, hidden_dim=8, n_layers=1,
                                    backward=True)).eval()
    forward = WordPieceLM(LMConfig(vocab_size=12, embed_dim=8, hidden_dim=8, n_layers=1)).eval()
    forward.load_state_dict(backward.state_dict())
    sentences = [[3, 1, 4, 1, 5], [9, 2], []]
    assert torch.equal(backward.token_log_probs(sentences),
                       forward.token_log_probs([s[::-1] for s in sentences]))
    assert not torch.equal(backward.token_log_probs(sentences[:1]),
                           forward.token_log_probs(sentences[:1]))


def test_the_trained_backward_lm_prefers_real_sentences_and_keeps_its_direction(lm_dirs,
                                                                                tokenizer):
    lm, _, info = load_lm_dir(lm_dirs[1])
    assert lm.cfg.backward and json.loads((lm_dirs[1] / "config.json").read_text())["lm"][
        "backward"]
    assert info["heldout_perplexity"] < 0.5 * info["heldout_perplexity_start"]
    assert lm.score("the cat sat on the mat", tokenizer) > lm.score("mat the on sat cat the",
                                                                     tokenizer)


class _TableLM:
    """A sentence LM whose log-probability is given per sentence (0 for the others); it
    records what it was asked."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        self.table, self.asked = table, []

    def token_log_probs(self, sentences: Sequence[Sequence[int]]) -> torch.Tensor:
        self.asked.append([tuple(s) for s in sentences])
        return torch.tensor([[self.table.get(tuple(s), 0.0)] for s in sentences])


def test_rescored_hands_a_share_of_the_lm_term_to_the_backward_lm():
    """Brute force: per row, the TOP best live scores get weight x (backward - forward),
    the rest -inf."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, TOP + 5, generator=generator)
    scores[1, 3:] = NEG_INF  # fewer live hypotheses than TOP
    scores[2] = NEG_INF  # none
    tokens = [[(b, k) for k in range(scores.shape[1])] for b in range(3)]
    lm = _TableLM({(b, k): float(b + k) for b in range(3) for k in range(scores.shape[1])})
    forward = torch.tensor([[float(b * k) for k in range(scores.shape[1])] for b in range(3)])
    out = rescored(scores, tokens, forward, Rescoring(lm, backward_weight=0.5))
    expected = torch.full_like(scores, NEG_INF)
    for b in range(3):
        live = [k for k in range(scores.shape[1]) if scores[b, k] > NEG_INF]
        for k in sorted(live, key=lambda k: -scores[b, k])[:TOP]:
            expected[b, k] = scores[b, k] + 0.5 * (b + k - b * k)
    assert torch.equal(out, expected)
    assert len(lm.asked) == 1 and len(lm.asked[0]) == TOP + 3  # one batch, live rows only


def _ctc_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    log_probs = (2 * torch.randn(2, 12, 6, generator=generator)).log_softmax(dim=-1)
    return log_probs, torch.tensor([12, 9])


def _rnnt_inputs() -> tuple[ASRModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    model = ASRModel(ModelConfig(encoder=EncoderConfig(d_model=16, n_layers=1, n_heads=2,
                                                       conv_kernel_size=3),
                                 vocab_size=6, pred_embed_dim=8, pred_hidden_dim=16,
                                 joint_dim=16)).eval()
    return model, torch.randn(2, 10, 16), torch.tensor([10, 7])


@pytest.mark.parametrize("search", ["ctc", "rnnt"])
def test_beam_search_takes_the_rescored_best_of_its_top_hypotheses(search):
    """An LM indifferent to every hypothesis leaves the search's choice; one that favours
    the second of the hypotheses it was shown picks it; favouring a sentence the search
    never finished changes nothing."""
    if search == "ctc":
        log_probs, lengths = _ctc_inputs()

        def run(rescoring):
            return ctc_beam_search(log_probs, lengths, 8, rescoring=rescoring)
    else:
        model, enc, lengths = _rnnt_inputs()

        def run(rescoring):
            return rnnt_beam_search(model, enc, lengths, 8, rescoring=rescoring)

    plain = run(None)
    tokens = [h.tokens for h in plain]
    indifferent = _TableLM({})
    assert [h.tokens for h in run(Rescoring(indifferent, 1.0))] == tokens
    shown = indifferent.asked[0]
    assert tuple(plain[0].tokens) == shown[0]  # the best first
    second = shown[1]  # the prefixes a beam holds are distinct
    favouring = _TableLM({second: 100.0})
    picked = run(Rescoring(favouring, 1.0))
    assert tuple(picked[0].tokens) == second
    assert [h.tokens for h in picked][1:] == tokens[1:]
    unseen = _TableLM({(5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5): 100.0})
    assert [h.tokens for h in run(Rescoring(unseen, 1.0))] == tokens


def _evaluated_and_described(folder: Path, capsys) -> tuple[dict, dict]:
    """``evaluate --json`` of the test manifest with a packed ``folder``: its report's
    decoding; and ``model-info`` of the folder."""
    assert main(["evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                 str(folder), "--json"]) == 0
    decoding = json.loads(capsys.readouterr().out.splitlines()[0])["decoding"]
    assert main(["model-info", str(folder)]) == 0
    return decoding, json.loads(capsys.readouterr().out)


def test_pack_stores_a_backward_lm_that_the_folder_rescores_with(model_dir, lm_dirs, tmp_path,
                                                                capsys):
    forward, backward = lm_dirs
    out = tmp_path / "packed"
    common = ["--lm", str(forward), "--beam-size", "4", "--lm-weight", "0.4",
              "--length-bonus", "0.5"]
    assert main(["pack", str(model_dir), *common, "--backward-lm", str(backward),
                 "--backward-share", "0.3", "--out", str(out)]) == 0
    assert f"rescored with {backward} at a share of 0.3; " in capsys.readouterr().out
    stored = load_file(str(out / "backward_lm" / "model.safetensors"))
    assert stored["out.weight"].dtype == torch.int8  # compact, as the forward LM is

    packed = load_model(out)
    assert packed.backward_lm is not None and packed.backward_lm.cfg.backward
    assert packed.options.backward_share == 0.3
    assert len(packed.transcribe([str(DATA / "clip1.wav")])) == 1
    assert len(load_model(out, int8=True).transcribe([str(DATA / "clip1.wav")])) == 1
    assert load_model(out, backward_share=0).options.backward_share == 0
    assert load_model(out, lm=None).backward_lm is None  # no LM: no rescoring either
    assert load_model(out, lm=forward).backward_lm is None  # only with the folder's own LM
    with pytest.raises(ValueError, match="backward_share: there is no backward LM"):
        load_model(model_dir, lm=forward, backward_share=0.5)

    decoding, info = _evaluated_and_described(out, capsys)
    assert decoding["backward_lm"] and decoding["backward_share"] == 0.3
    assert info["backward_lm"]["name"] == "lstm-lm-tiny" and info["backward_lm"]["params"] > 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--lm", "{backward}"], "a backward LM; give it as --backward-lm"),
    (["--lm", "{forward}", "--backward-lm", "{forward}", "--backward-share", "0.3"],
     "a forward LM (train-lm --backward makes one)"),
    (["--lm", "{forward}", "--backward-share", "0.3"], "--backward-share: give a share > 0"),
    (["--lm", "{forward}", "--backward-lm", "{backward}"], "--backward-share: give a share > 0"),
])
def test_pack_refuses_lms_in_the_wrong_direction_or_a_weight_without_one(
        model_dir, lm_dirs, tmp_path, capsys, flags, message):
    forward, backward = lm_dirs
    flags = [f.format(forward=forward, backward=backward) for f in flags]
    out = tmp_path / "packed"
    assert main(["pack", str(model_dir), *flags, "--lm-weight", "0.4", "--length-bonus", "0",
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_backward_lm_cannot_be_fused(model_dir, lm_dirs):
    with pytest.raises(ValueError, match="lm: a backward LM"):
        load_model(model_dir, lm=lm_dirs[1])


def test_train_lm_does_not_resume_a_run_of_the_other_direction(lm_dirs, tokenizer, tmp_path):
    out = tmp_path / "lm"
    _train(tokenizer, out, backward=False)
    with pytest.raises(ValueError, match="another LM config"):
        _train(tokenizer, out, backward=True)


def test_tune_scores_each_backward_share_as_the_packed_folder_decodes_with_it(
        model_dir, lm_dirs, tmp_path, capsys, monkeypatch):
    """tune searched without the backward LM, so the share that pack ships was picked
    by hand. Each share's row now scores what evaluate of a folder decoding with it does."""
    import conformer_asr.decoding.ctc_beam as ctc_beam

    forward, backward = lm_dirs
    weights: list[float] = []
    real = ctc_beam.rescored
    monkeypatch.setattr(ctc_beam, "rescored", lambda scores, tokens, forward, rescoring:
                        weights.append(rescoring.backward_weight)
                        or real(scores, tokens, forward, rescoring))
    assert main(["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
                 "--lm", str(forward), "--backward-lm", str(backward), "--beam-size", "4",
                 "--lm-weights", "0.4", "--length-bonuses", "0.5",
                 "--backward-shares", "0,0.5,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "WER" in line)
    assert lines[header].split()[:5] == ["lm_weight", "bonus", "oov", "share", "ngram"]
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [float(r[3]) for r in rows] == [0, 0.5, 1]
    assert sorted(set(weights)) == pytest.approx([0.2, 0.4])  # 0.4 x each share > 0

    out = tmp_path / "packed"
    assert main(["pack", str(model_dir), "--lm", str(forward), "--beam-size", "4",
                 "--lm-weight", "0.4", "--length-bonus", "0.5", "--backward-lm", str(backward),
                 "--backward-share", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    for row in rows:
        assert main(["evaluate", "--manifest", str(DATA / "manifest.jsonl"), "--model",
                     str(out), "--backward-share", row[3], "--json"]) == 0
        report = json.loads(capsys.readouterr().out.splitlines()[0])
        assert [report[k] for k in ("wer", "substitutions", "deletions", "insertions")] == [
            float(row[5]), *map(int, row[6:9])]


@pytest.mark.parametrize(("flags", "message"), [
    (["--lm", "{backward}"], "a backward LM; give it as --backward-lm"),
    (["--lm", "{forward}", "--backward-lm", "{forward}"],
     "a forward LM (train-lm --backward makes one)"),
    (["--lm", "{forward}", "--backward-shares", "0,0.5"],
     "backward_shares: there is no backward LM"),
])
def test_tune_refuses_lms_in_the_wrong_direction_or_a_share_without_one(
        model_dir, lm_dirs, capsys, flags, message):
    forward, backward = lm_dirs
    flags = [f.format(forward=forward, backward=backward) for f in flags]
    assert main(["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
                 *flags, "--lm-weights", "0.4", "--length-bonuses", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "encoded" not in err


@pytest.mark.parametrize("int8_rows", [False, True])
@pytest.mark.parametrize("search", ["ctc", "rnnt"])
def test_the_forward_lm_score_rescoring_replaces_is_the_one_the_search_summed(
        search, int8_rows, monkeypatch):
    """Rescoring takes log P_forward from the search's own sums (``FusionScores``) instead
    of reading every hypothesis again: they are what the LM gives the whole sentence."""
    import conformer_asr.decoding.ctc_beam as ctc_beam
    import conformer_asr.decoding.rnnt_beam as rnnt_beam
    from conformer_asr.decoding.fusion import ShallowFusion
    from conformer_asr.models.int8_rows import int8_rows_lm

    torch.manual_seed(0)
    lm = WordPieceLM(LMConfig(vocab_size=6, embed_dim=4, hidden_dim=8, n_layers=2)).eval()
    lm = int8_rows_lm(lm) if int8_rows else lm
    fusion = ShallowFusion(lm, weight=0.7, length_bonus=0.5)
    seen: list[tuple[list[list[tuple[int, ...]]], torch.Tensor, torch.Tensor]] = []
    module = ctc_beam if search == "ctc" else rnnt_beam
    real = module.rescored

    def recording(scores, tokens, forward, rescoring):
        seen.append(([list(row) for row in tokens], forward.clone(), scores.clone()))
        return real(scores, tokens, forward, rescoring)

    monkeypatch.setattr(module, "rescored", recording)
    rescoring = Rescoring(_TableLM({}), 0.35)
    if search == "ctc":
        log_probs, lengths = _ctc_inputs()
        ctc_beam_search(log_probs, lengths, 8, fusion, rescoring=rescoring)
    else:
        model, enc, lengths = _rnnt_inputs()
        rnnt_beam_search(model, enc, lengths, 8, fusion, rescoring=rescoring)
    (tokens, forward, scores), = seen
    live = [(b, k) for b in range(scores.shape[0]) for k in range(scores.shape[1])
            if scores[b, k] > NEG_INF]
    assert len(live) > 4 and any(tokens[b][k] for b, k in live)
    with torch.no_grad():
        expected = lm.token_log_probs([tokens[b][k] for b, k in live]).sum(dim=1)
    torch.testing.assert_close(torch.stack([forward[b, k] for b, k in live]), expected,
                               atol=1e-5, rtol=1e-5)


class _TableNgram:
    """A sentence scorer over token ids, as ``SpelledNgram`` is: log-probabilities per sentence."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        self.table = table

    def sentence_log_probs(self, sentences: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([self.table.get(tuple(s), 0.0) for s in sentences])


def test_rescored_hands_shares_to_the_backward_and_the_ngram_lm():
    """Brute force: each of the TOP best live scores gets weight x (backward - forward) +
    ngram_weight x (ngram - forward); without a backward LM, the n-gram term alone."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(2, TOP + 3, generator=generator)
    scores[1, 4:] = NEG_INF
    tokens = [[(b, k) for k in range(scores.shape[1])] for b in range(2)]
    cells = [(b, k) for b in range(2) for k in range(scores.shape[1])]
    backward = _TableLM({(b, k): float(b - k) for b, k in cells})
    ngram = _TableNgram({(b, k): float(3 * k + b) for b, k in cells})
    forward = torch.tensor([[float(b + 2 * k) for k in range(scores.shape[1])] for b in range(2)])
    for lm, weight in ((backward, 0.2), (None, 0.0)):
        out = rescored(scores, tokens, forward, Rescoring(lm, weight, ngram, 0.6))
        expected = torch.full_like(scores, NEG_INF)
        for b in range(2):
            live = [k for k in range(scores.shape[1]) if scores[b, k] > NEG_INF]
            for k in sorted(live, key=lambda k: -scores[b, k])[:TOP]:
                f = b + 2 * k
                expected[b, k] = scores[b, k] + weight * (b - k - f) + 0.6 * (3 * k + b - f)
        torch.testing.assert_close(out, expected)


def test_the_shares_must_leave_room_for_each_other():
    from conformer_asr.decoding.search import DecodingOptions

    DecodingOptions(backward_share=0.25, ngram_share=0.75)
    with pytest.raises(ValueError, match="backward_share \\+ ngram_share: must be at most 1"):
        DecodingOptions(backward_share=0.5, ngram_share=0.75)
    with pytest.raises(ValueError, match="ngram_share: must be in \\[0, 1\\]"):
        DecodingOptions(ngram_share=1.5)
    with pytest.raises(ValueError, match="ngram_order: must be >= 2, got 1"):
        DecodingOptions(ngram_order=1)
    with pytest.raises(ValueError, match="ngram_order: must be a whole number"):
        DecodingOptions(ngram_order=3.0)


def test_pack_stores_an_ngram_text_that_the_folder_rescores_with(model_dir, lm_dirs, tmp_path,
                                                                 capsys, monkeypatch):
    import conformer_asr.decoding.ctc_beam as ctc_beam

    forward, _ = lm_dirs
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES) + "\nThe Dog sat, on the RUG!\n")
    out = tmp_path / "packed"
    common = [str(model_dir), "--lm", str(forward), "--beam-size", "4", "--lm-weight", "0.4",
              "--length-bonus", "0.5"]
    assert main(["pack", *common, "--ngram-text", str(text), "--exclude",
                 str(DATA / "manifest.jsonl"), "--ngram-share", "0.5", "--ngram-order", "4",
                 "--out", str(out)]) == 0
    assert "removed 4 found in --exclude manifests" in capsys.readouterr().out
    stored = read_text(out / "ngram.txt.xz").splitlines()  # normalised, test lines gone
    assert stored == [s for s in SENTENCES if s not in MANIFEST_TEXTS] + ["the dog sat on the rug"]

    packed = load_model(out)
    assert packed.ngram is not None and packed.options.ngram_share == 0.5
    assert packed.ngram.lm.order == packed.options.ngram_order == 4
    weights: list[float] = []
    real = ctc_beam.rescored
    monkeypatch.setattr(ctc_beam, "rescored", lambda scores, tokens, forward, rescoring:
                        weights.append(rescoring.ngram_weight)
                        or real(scores, tokens, forward, rescoring))
    assert len(packed.transcribe([str(DATA / "clip1.wav")])) == 1
    assert weights == [pytest.approx(0.2)]  # LM weight 0.4 x share 0.5
    assert load_model(out, ngram_share=0).ngram is None
    assert load_model(out, lm=None).ngram is None
    with pytest.raises(ValueError, match="ngram_share: there is no n-gram LM"):
        load_model(model_dir, lm=forward, ngram_share=0.5)

    decoding, info = _evaluated_and_described(out, capsys)
    assert decoding["ngram"] and decoding["ngram_share"] == 0.5
    assert info["ngram"]["order"] == 4 and info["ngram"]["words"] == len(
        {w for s in stored for w in s.split()})


@pytest.mark.parametrize(("flags", "message"), [
    (["--ngram-share", "0.5"], "--ngram-share: give a share > 0 with --ngram-text"),
    (["--ngram-text", "{text}"], "--ngram-share: give a share > 0 with --ngram-text"),
    (["--exclude", "{manifest}"], "--exclude: removes sentences from --ngram-text"),
    (["--ngram-order", "4"], "--ngram-order: counts --ngram-text"),
    (["--ngram-text", "{big}", "--ngram-share", "0.5", "--ngram-order", "4"],
     "--ngram-text: a word n-gram LM of order 4 holds at most 65533 words"),
    (["--ngram-text", "{missing}", "--ngram-share", "0.5"], "no such file"),
])
def test_pack_refuses_an_ngram_share_without_its_text(model_dir, lm_dirs, tmp_path, capsys,
                                                      flags, message):
    text = tmp_path / "text.txt"
    text.write_text("a dog ran home\n")
    big = tmp_path / "big.txt"
    letters = itertools.product(string.ascii_lowercase, repeat=4)  # words as pack normalises
    big.write_text(" ".join("".join(w) for w in itertools.islice(letters, 1 << 16)) + "\n")
    flags = [f.format(text=text, manifest=DATA / "manifest.jsonl", missing=tmp_path / "no.txt",
                      big=big) for f in flags]
    out = tmp_path / "packed"
    assert main(["pack", str(model_dir), "--lm", str(lm_dirs[0]), "--lm-weight", "0.4",
                 "--length-bonus", "0", *flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_tune_leaves_out_shares_over_one_and_rescores_with_the_ngram(model_dir, lm_dirs,
                                                                    tmp_path, capsys):
    forward, backward = lm_dirs
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    assert main(["tune", "--manifest", str(DATA / "manifest.jsonl"), "--model", str(model_dir),
                 "--lm", str(forward), "--backward-lm", str(backward), "--beam-size", "4",
                 "--lm-weights", "0.4", "--length-bonuses", "0.5", "--backward-shares",
                 "0,0.5", "--ngram-text", str(text), "--ngram-shares", "0,0.5,1",
                 "--ngram-order", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "WER" in line)
    rows = [line.split() for line in lines[header + 1:] if line.split()[0][0].isdigit()]
    pairs = [(float(r[3]), float(r[4])) for r in rows[:-1]]  # the last row: the best again
    assert pairs == [(0, 0), (0, 0.5), (0, 1), (0.5, 0), (0.5, 0.5)]
