"""Beam searches against brute force, greedy search, themselves, and with an LM."""

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conformer_asr.decoding.beam import NEG_INF, select
from conformer_asr.decoding.ctc_beam import ctc_beam_search
from conformer_asr.decoding.fusion import ShallowFusion
from conformer_asr.decoding.greedy import ctc_greedy, rnnt_greedy
from conformer_asr.decoding.lexicon import Lexicon
from conformer_asr.decoding.rnnt_beam import rnnt_beam_search
from conformer_asr.decoding.search import DecodingOptions, decode
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig
from conformer_asr.models.lm import LMConfig, WordPieceLM

pytestmark = pytest.mark.usefixtures("one_thread")


def _label_sequences(vocab: int, max_length: int):
    for n in range(max_length + 1):
        yield from itertools.product(range(1, vocab), repeat=n)


def _ctc_log_likelihood(log_probs: torch.Tensor, labels: tuple[int, ...]) -> float:
    """log_probs (T, V) -> log P(labels), summed over all CTC alignments."""
    target = torch.tensor([labels], dtype=torch.long).reshape(1, len(labels))
    return -float(F.ctc_loss(log_probs[:, None], target, torch.tensor([len(log_probs)]),
                             torch.tensor([len(labels)]), reduction="sum"))


def _tiny_transducer(vocab: int = 3, seed: int = 0) -> ASRModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        encoder=EncoderConfig(d_model=16, n_layers=1, n_heads=2, conv_kernel_size=3),
        vocab_size=vocab, pred_embed_dim=8, pred_hidden_dim=12, joint_dim=10,
    )
    model = ASRModel(cfg).eval()
    with torch.no_grad():  # sharper distributions than the default init gives
        model.joint.out.weight.mul_(4.0)
    return model


def _one_token_per_frame_log_likelihood(model: ASRModel, enc: torch.Tensor,
                                        labels: tuple[int, ...]) -> float:
    """enc (T, D) -> log P(labels) summed over the alignments that emit blank or one
    label at each frame (the search space of the modified beam search)."""
    assert model.predictor is not None and model.joint is not None
    with torch.no_grad():
        pred = model.predictor(torch.tensor([labels], dtype=torch.long).reshape(1, -1))
        lp = model.joint.full(enc[None], pred)[0].log_softmax(dim=-1)  # (T, U+1, V)
    frames, labels_count = enc.shape[0], len(labels)
    alpha = [0.0] + [float("-inf")] * labels_count
    for t in range(frames):
        new = [float("-inf")] * (labels_count + 1)
        for u in range(labels_count + 1):
            stay = alpha[u] + float(lp[t, u, 0])
            emit = alpha[u - 1] + float(lp[t, u - 1, labels[u - 1]]) if u else float("-inf")
            new[u] = float(torch.logaddexp(torch.tensor(stay), torch.tensor(emit)))
        alpha = new
    return alpha[labels_count]


class UnigramLM:
    """A fusion LM with fixed next-token log-probabilities (V,), whatever the prefix."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.log_probs = log_probs

    def step(self, tokens, state):
        rows = tokens.shape[0]
        return self.log_probs.expand(rows, -1), (torch.zeros(1, rows, 1),)


@pytest.mark.parametrize("seed", range(5))
def test_ctc_prefix_search_finds_most_probable_labelling(seed):
    torch.manual_seed(seed)
    frames, vocab = 5, 3
    log_probs = (2 * torch.randn(3, frames, vocab)).log_softmax(dim=-1)
    lengths = torch.tensor([5, 4, 2])
    hyps = ctc_beam_search(log_probs, lengths, beam_size=64)  # > 63 prefixes: exhaustive
    for b, hyp in enumerate(hyps):
        lp = log_probs[b, : lengths[b]]
        scores = {seq: _ctc_log_likelihood(lp, seq)
                  for seq in _label_sequences(vocab, int(lengths[b]))}
        best = max(scores, key=scores.__getitem__)
        assert tuple(hyp.tokens) == best
        assert hyp.score == pytest.approx(scores[best], abs=1e-4)
        assert len(hyp.frames) == len(hyp.tokens)
        assert hyp.frames == sorted(hyp.frames) and all(f < lengths[b] for f in hyp.frames)


def test_ctc_prefix_search_times_a_token_where_it_is_spoken():
    """A prefix that enters a wide beam early at a tiny probability kept that frame when
    the real emission merged into it: words started up to a quarter second early."""
    probs = torch.full((1, 9, 3), 0.01)
    probs[0, :, 0] = 0.98  # blank
    probs[0, 0, 1] = 0.05  # a faint "1" at the start (and "2" at frame 3)...
    probs[0, 3, 2] = 0.05
    probs[0, 2, 1] = probs[0, 6, 2] = 0.97  # ...spoken at frames 2 and 6
    probs[0, 2, 0] = probs[0, 6, 0] = 0.01
    log_probs = (probs / probs.sum(-1, keepdim=True)).log()
    lengths = torch.tensor([9])
    greedy = ctc_greedy(log_probs, lengths)[0]
    assert (greedy.tokens, greedy.frames) == ([1, 2], [2, 6])
    for beam_size in (2, 8):
        hyp = ctc_beam_search(log_probs, lengths, beam_size)[0]
        assert (hyp.tokens, hyp.frames) == ([1, 2], [2, 6])  # (was [0, 3] at beam 8)


def test_rnnt_beam_of_one_is_greedy_with_one_symbol_per_frame():
    model = _tiny_transducer(vocab=6)
    enc = 3 * torch.randn(3, 9, 16)
    lengths = torch.tensor([9, 6, 3])
    greedy = rnnt_greedy(model, enc, lengths, max_symbols_per_frame=1)
    beam = rnnt_beam_search(model, enc, lengths, beam_size=1)
    for g, b in zip(greedy, beam, strict=True):
        assert (b.tokens, b.frames) == (g.tokens, g.frames)
        assert b.score == pytest.approx(g.score, abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_rnnt_big_beam_finds_the_most_probable_sequence(seed):
    model = _tiny_transducer(vocab=3, seed=seed)
    enc = 3 * torch.randn(1, 5, 16)
    lengths = torch.tensor([5])
    hyp = rnnt_beam_search(model, enc, lengths, beam_size=64)[0]  # > 63 prefixes
    greedy = rnnt_greedy(model, enc, lengths, max_symbols_per_frame=1)[0]
    scores = {seq: _one_token_per_frame_log_likelihood(model, enc[0], seq)
              for seq in _label_sequences(3, 5)}
    best = max(scores, key=scores.__getitem__)
    assert tuple(hyp.tokens) == best
    assert hyp.score == pytest.approx(scores[best], abs=1e-4)
    assert scores[tuple(hyp.tokens)] >= scores[tuple(greedy.tokens)]


def _tiny_lm(vocab: int) -> WordPieceLM:
    torch.manual_seed(1)
    return WordPieceLM(LMConfig(vocab_size=vocab, embed_dim=8, hidden_dim=16, n_layers=2,
                                dropout=0.0)).eval()


def test_searches_are_deterministic():
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(2, 12, 16)
    lengths = torch.tensor([12, 7])
    log_probs = (2 * torch.randn(2, 12, 8)).log_softmax(dim=-1)
    fusion = ShallowFusion(_tiny_lm(8), weight=0.5, length_bonus=0.3)
    first = (rnnt_beam_search(model, enc, lengths, 4, fusion),
             ctc_beam_search(log_probs, lengths, 4, fusion))
    second = (rnnt_beam_search(model, enc, lengths, 4, fusion),
              ctc_beam_search(log_probs, lengths, 4, fusion))
    assert first == second


def test_ties_go_to_the_lower_token_id():
    log_probs = torch.tensor([[[-5.0, -0.6931, -0.6931]]])  # tokens 1 and 2 tie
    assert ctc_beam_search(log_probs, torch.tensor([1]), 2)[0].tokens == [1]


def test_select_drops_the_candidates_beyond_the_threshold():
    candidates = torch.tensor([[[0.0, -1.0, -5.0], [-2.0, -20.0, -3.5]]])  # (B=1, K=2, V=3)
    scores, sources, tokens = select(candidates, 4)
    assert (scores.tolist(), sources.tolist(), tokens.tolist()) == (
        [[0.0, -1.0, -2.0, -3.5]], [[0, 0, 1, 1]], [[0, 1, 0, 2]])
    scores, sources, tokens = select(candidates, 4, threshold=3.0)
    assert scores.tolist() == [[0.0, -1.0, -2.0, NEG_INF]]  # -3.5 < 0 - 3
    assert sources.tolist() == [[0, 0, 1, 0]]  # the dead row continues hypothesis 0...
    assert tokens.tolist() == [[0, 1, 0, 0]]  # ...and appends nothing


class CountingLM:
    """A fusion LM that counts the rows it steps."""

    def __init__(self, lm: WordPieceLM) -> None:
        self.lm, self.rows = lm, 0

    def step(self, tokens, state):
        self.rows += tokens.shape[0]
        return self.lm.step(tokens, state)


def test_a_threshold_below_every_gap_searches_as_a_beam_of_one():
    """Hypotheses the threshold drops stay dropped: with a threshold too small for any but
    the best candidate, a beam of 8 finds what a beam of 1 finds, and the LM steps no
    more rows than one per utterance and frame."""
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(3, 12, 16)
    lengths = torch.tensor([12, 7, 3])
    log_probs = (2 * torch.randn(3, 12, 8)).log_softmax(dim=-1)
    lm = CountingLM(_tiny_lm(8))
    fusion = ShallowFusion(lm, weight=0.5, length_bonus=0.3)
    searches = [
        lambda beam, threshold: rnnt_beam_search(model, enc, lengths, beam, fusion, threshold),
        lambda beam, threshold: ctc_beam_search(log_probs, lengths, beam, fusion, threshold),
    ]
    for search in searches:
        one = search(1, None)
        lm.rows = 0
        thresholded = search(8, 1e-6)
        assert lm.rows <= 3 * 8 + 3 * 12  # every row at the start, then one per utterance and frame
        assert [(h.tokens, h.frames) for h in thresholded] == [(h.tokens, h.frames) for h in one]
        assert [h.score for h in thresholded] == pytest.approx([h.score for h in one], abs=1e-5)
        lm.rows = 0
        wide = search(8, None)
        assert lm.rows > 3 * 8 + 3 * 12
        assert search(8, 1e6) == wide  # a threshold wider than every gap drops nothing


def test_batched_search_equals_one_utterance_at_a_time():
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(4, 10, 16)
    lengths = torch.tensor([10, 3, 7, 1])
    log_probs = (2 * torch.randn(4, 10, 8)).log_softmax(dim=-1)
    fusion = ShallowFusion(_tiny_lm(8), weight=0.4, length_bonus=0.2)
    searches = [
        lambda i: rnnt_beam_search(model, enc[i], lengths[i], 4, fusion),
        lambda i: ctc_beam_search(log_probs[i], lengths[i], 4, fusion),
    ]
    for search in searches:
        together = search(slice(None))
        for i, hyp in enumerate(together):
            alone = search(slice(i, i + 1))[0]
            assert (hyp.tokens, hyp.frames) == (alone.tokens, alone.frames)
            assert hyp.score == pytest.approx(alone.score, abs=1e-4)


def test_lm_fusion_picks_the_hypothesis_the_lm_prefers():
    # CTC: token 1 is slightly more likely than token 2 at the one frame.
    log_probs = torch.tensor([[[-3.0, -0.8, -0.9]]]).log_softmax(dim=-1)
    lengths = torch.tensor([1])
    assert ctc_beam_search(log_probs, lengths, 4)[0].tokens == [1]
    prefers_two = UnigramLM(torch.tensor([-1.0, -5.0, -0.5]))
    fused = ctc_beam_search(log_probs, lengths, 4, ShallowFusion(prefers_two, weight=0.5))
    assert fused[0].tokens == [2]

    # RNN-T: an LM that only likes one token missing from the acoustic best.
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(1, 10, 16)
    lengths = torch.tensor([10])
    plain = rnnt_beam_search(model, enc, lengths, 4)[0]
    missing = next(c for c in range(1, 8) if c not in plain.tokens)
    lm_log_probs = torch.full((8,), -30.0)
    lm_log_probs[[0, missing]] = -0.7
    fused = rnnt_beam_search(model, enc, lengths, 4,
                             ShallowFusion(UnigramLM(lm_log_probs), weight=1.0))[0]
    assert fused.tokens != plain.tokens
    assert set(fused.tokens) <= {missing}


def test_length_bonus_changes_hypothesis_length():
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(1, 10, 16)
    lengths = torch.tensor([10])
    plain = rnnt_beam_search(model, enc, lengths, 4)[0]
    shorter = rnnt_beam_search(model, enc, lengths, 4, ShallowFusion(length_bonus=-20.0))[0]
    assert len(plain.tokens) > len(shorter.tokens) == 0


def test_decode_dispatches_on_options():
    model = _tiny_transducer(vocab=8)
    enc = 3 * torch.randn(2, 6, 16)
    lengths = torch.tensor([6, 4])
    greedy = decode(model, enc, lengths, DecodingOptions())
    assert greedy == rnnt_greedy(model, enc, lengths)
    threshold = DecodingOptions().beam_threshold
    beam = decode(model, enc, lengths, DecodingOptions(beam_size=3))
    assert beam == rnnt_beam_search(model, enc, lengths, 3, threshold=threshold)
    narrow = decode(model, enc, lengths, DecodingOptions(beam_size=3, beam_threshold=0.5))
    assert narrow == rnnt_beam_search(model, enc, lengths, 3, threshold=0.5)
    lm = _tiny_lm(8)
    fused = decode(model, enc, lengths, DecodingOptions(beam_size=3, lm_weight=0.5), lm)
    assert fused == rnnt_beam_search(model, enc, lengths, 3, ShallowFusion(lm, 0.5),
                                     threshold)
    lexicon = Lexicon({"a"}, ["<blank>"] + [f"\u2581{c}" for c in "abcdefg"])
    penalised = decode(model, enc, lengths, DecodingOptions(oov_penalty=1.0), lexicon=lexicon)
    assert penalised == rnnt_beam_search(
        model, enc, lengths, 1, ShallowFusion(lexicon=lexicon, oov_penalty=1.0))
    assert decode(model, enc, lengths, DecodingOptions(), lexicon=lexicon) == greedy
    with pytest.raises(ValueError, match="beam_size"):
        DecodingOptions(beam_size=0)
    for value, message in ((0.0, "be > 0"), (-1.0, "be > 0"), (math.inf, "be a finite number"),
                           (float("nan"), "be a finite number"), (True, "be a number"),
                           ("8", "be a number")):
        with pytest.raises(ValueError, match=f"^beam_threshold: must {message}"):
            DecodingOptions(beam_threshold=value)
    for name in ("lm_weight", "length_bonus", "oov_penalty"):  # nan passed `< 0` unseen
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"^{name}: must be a finite number"):
                DecodingOptions(**{name: value})


def test_a_hybrid_model_decodes_with_the_head_asked_for():
    model = _tiny_transducer(vocab=8)  # ctc_weight 0 by default: no CTC head
    with pytest.raises(ValueError, match="^head ctc: the model has no CTC head"):
        decode(model, torch.randn(1, 6, 16), torch.tensor([6]), DecodingOptions(head="ctc"))
    torch.manual_seed(1)
    hybrid = ASRModel(dataclasses.replace(model.cfg, ctc_weight=0.3)).eval()
    enc, lengths = 3 * torch.randn(2, 6, 16), torch.tensor([6, 4])
    ctc = decode(hybrid, enc, lengths, DecodingOptions(head="ctc"))
    assert ctc == ctc_greedy(hybrid.ctc_log_probs(enc), lengths)
    assert ctc != rnnt_greedy(hybrid, enc, lengths)  # else the test shows nothing
    for head in ("auto", "transducer"):
        assert decode(hybrid, enc, lengths, DecodingOptions(head=head)) == rnnt_greedy(
            hybrid, enc, lengths)
    beam = decode(hybrid, enc, lengths, DecodingOptions(beam_size=3, head="ctc"))
    assert beam == ctc_beam_search(hybrid.ctc_log_probs(enc), lengths, 3)
    with pytest.raises(ValueError, match="^head: give one of auto, ctc, transducer"):
        DecodingOptions(head="attention")


PIECES = ["<blank>", "\u2581a", "b"]  # spell the words a, ab, abb, ... (and b, bb, ...)


def _unknown_words(labels: tuple[int, ...], known: set[str]) -> int:
    """Words outside ``known`` in the text the pieces spell, as SentencePiece joins them."""
    text = "".join(PIECES[i] for i in labels).replace("\u2581", " ")
    return sum(word not in known for word in text.split())


@pytest.mark.parametrize("seed", range(4))
def test_searches_with_a_lexicon_find_the_best_penalised_sequence(seed):
    penalty, known = 2.0, {"ab", "a"} if seed % 2 else {"ab"}
    fusion = ShallowFusion(lexicon=Lexicon(known, PIECES), oov_penalty=penalty)
    torch.manual_seed(seed)
    log_probs = (2 * torch.randn(5, 3)).log_softmax(dim=-1)
    model = _tiny_transducer(vocab=3, seed=seed)
    enc = 3 * torch.randn(5, 16)
    searches = [
        (ctc_beam_search(log_probs[None], torch.tensor([5]), 64, fusion)[0],
         lambda seq: _ctc_log_likelihood(log_probs, seq)),
        (rnnt_beam_search(model, enc[None], torch.tensor([5]), 64, fusion)[0],
         lambda seq: _one_token_per_frame_log_likelihood(model, enc, seq)),
    ]
    for hyp, log_likelihood in searches:  # > 63 sequences in the beam: exhaustive
        scores = {seq: log_likelihood(seq) - penalty * _unknown_words(seq, known)
                  for seq in _label_sequences(3, 5)}
        best = max(scores, key=scores.__getitem__)
        assert tuple(hyp.tokens) == best
        assert hyp.score == pytest.approx(scores[best], abs=1e-4)


def test_the_oov_penalty_turns_a_non_word_into_a_word():
    # Two frames: "a" (blank after it) beats "ab", but only "ab" is a word.
    probs = torch.tensor([[[0.05, 0.9, 0.05], [0.55, 0.05, 0.4]]])
    lengths = torch.tensor([2])
    assert ctc_beam_search(probs.log(), lengths, 4)[0].tokens == [1]
    fusion = ShallowFusion(lexicon=Lexicon({"ab"}, PIECES), oov_penalty=2.0)
    assert ctc_beam_search(probs.log(), lengths, 4, fusion)[0].tokens == [1, 2]
