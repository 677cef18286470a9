"""The word n-gram LM against a plain dictionary Kneser-Ney, and its normalisation."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from conformer_asr.decoding.ngram import END, START, WordNgramLM


def reference_log_prob(sentences: list[str], words: list[str], order: int,
                       discount: float) -> float:
    """Interpolated Kneser-Ney written out with dictionaries of word tuples."""
    padded = [["<s>"] * (order - 1) + s.split() + ["</s>"] for s in sentences]
    counts = [Counter() for _ in range(order + 1)]  # counts[n][n-gram]
    for s in padded:
        for i in range(order - 1, len(s)):
            counts[order][tuple(s[i - order + 1:i + 1])] += 1
    for n in range(order - 1, 0, -1):  # continuation counts
        for gram in counts[n + 1]:
            counts[n][gram[1:]] += 1
    vocabulary = {w for s in padded for w in s} - {"<s>"}

    def p(gram: tuple[str, ...]) -> float:
        if not gram:
            return 1.0 / (len(vocabulary) + 1)  # the words, the end and one unknown
        n, context = len(gram), gram[:-1]
        followers = {g: c for g, c in counts[n].items() if g[:-1] == context}
        lower = p(gram[1:])
        if not followers:
            return lower
        total = sum(followers.values())
        count = counts[n].get(gram, 0)
        return (max(count - discount, 0) + discount * len(followers) * lower) / total

    sentence = ["<s>"] * (order - 1) + words + ["</s>"]
    return sum(math.log(p(tuple(sentence[i - order + 1:i + 1])))
               for i in range(order - 1, len(sentence)))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_log_probs_match_a_plain_kneser_ney(order: int) -> None:
    rng = random.Random(order)
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "fast", "slow"]
    text = [" ".join(rng.choices(words, k=rng.randint(1, 7))) for _ in range(40)]
    lm = WordNgramLM(text, order=order, discount=0.6)
    queries = [s.split() for s in text[:5]] + [[], ["zebra"], ["the", "zebra", "sat"],
                                               rng.choices(words, k=9)]
    got = lm.log_probs(queries)
    expected = [reference_log_prob(text, q, order, 0.6) for q in queries]
    assert got == pytest.approx(expected, rel=1e-12)


def test_each_context_gives_a_distribution() -> None:
    lm = WordNgramLM(["the cat sat", "the dog sat", "a cat ran", "the cat ran fast"])
    ids = {**lm.ids, "<s>": START}
    followers = [*lm.ids.values(), END, lm.unknown]
    for u1, u2 in [("<s>", "<s>"), ("<s>", "the"), ("the", "cat"), ("cat", "ran"),
                   ("a", "dog"), ("fast", "the")]:
        keys = np.array([(ids[u1] << 2 * lm.bits) | (ids[u2] << lm.bits) | w for w in followers],
                        dtype=np.uint64)
        assert lm._probabilities(keys).sum() == pytest.approx(1.0, abs=1e-12)
    unknown_context = np.array([(lm.unknown << 2 * lm.bits) | (lm.unknown << lm.bits) | w
                                for w in followers], dtype=np.uint64)
    assert lm._probabilities(unknown_context).sum() == pytest.approx(1.0, abs=1e-12)


def test_known_phrases_score_above_reorderings() -> None:
    lm = WordNgramLM(["a baby bat fluffy and weightless", "a babel of inhuman noises"])
    known, shuffled = lm.log_probs([["a", "babel", "of", "inhuman", "noises"],
                                    ["a", "inhuman", "of", "babel", "noises"]])
    assert known > shuffled + 5
    assert lm.log_probs([]).shape == (0,)


@pytest.mark.parametrize(("order", "discount"), [(1, 0.5), (2.0, 0.5), (3, 0.0), (3, 1.0)])
def test_bad_settings_are_named(order: int, discount: float) -> None:
    with pytest.raises(ValueError, match="order|discount"):
        WordNgramLM(["a b"], order=order, discount=discount)


def test_an_ngram_text_that_cannot_be_read_is_named(tmp_path):
    from conformer_asr.inference.model_dir import ModelDirError, load_ngram

    with pytest.raises(ModelDirError, match="missing.txt: cannot read the n-gram text"):
        load_ngram(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ModelDirError, match="empty.txt: an n-gram text without words"):
        load_ngram(empty)
    text = tmp_path / "text.txt"
    text.write_text("a cat\n\nthe dog\n")
    first = load_ngram(text)
    assert set(first.ids) == {"a", "cat", "the", "dog"}
    assert load_ngram(text) is first  # counted once while the file is unchanged
    assert load_ngram(text, 2).order == 2 and load_ngram(text) is first
    big = tmp_path / "big.txt"
    big.write_text(" ".join(f"w{i}" for i in range(1 << 16)) + "\n")
    with pytest.raises(ModelDirError, match="big.txt: a word n-gram LM of order 4 holds at most"):
        load_ngram(big, 4)
    text.write_text("a cat\nthe dog ran\n")
    assert set(load_ngram(text).ids) == {"a", "cat", "the", "dog", "ran"}


def test_a_4gram_uses_every_bit_of_its_keys() -> None:
    most = (1 << 16) - 3  # 16 bits per word: the words, START, END and the unknown id
    words = [f"w{i}" for i in range(most)]
    tail = list(reversed(words[-5:]))
    lm = WordNgramLM([" ".join(words), " ".join(tail)], order=4)
    assert lm.bits == 16
    u = [lm.ids[w] for w in words[-3:]]  # ids near 2**16: keys with their top bit set
    followers = np.array([*lm.ids.values(), END, lm.unknown], dtype=np.uint64)
    context = (u[0] << 3 * lm.bits) | (u[1] << 2 * lm.bits) | (u[2] << lm.bits)
    assert lm._probabilities(np.uint64(context) | followers).sum() == pytest.approx(1.0, abs=1e-9)
    known, reordered = lm.log_probs([tail, [tail[0], tail[2], tail[1], tail[4], tail[3]]])
    assert known > reordered + 5
    with pytest.raises(ValueError, match="order 4 holds at most 65533 words; the text has 65534"):
        WordNgramLM([" ".join(words), "one"], order=4)
