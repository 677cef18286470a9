"""A word n-gram LM with interpolated Kneser-Ney smoothing, to rescore finished sentences.

The LSTM LMs (``models.lm``) are small next to the text they learn from, and they keep its
general shape; a word n-gram keeps every phrase of it, however rare, by its count. In
rescoring (``rescore.py``) it takes a share of the LSTM LM's score: on the synthetic
corpus it gains much from the phrases seen once (recipes/synthetic/README.md, step 4l).

The counts are made when the LM is built, from its sentences, with numpy: each n-gram is
one uint64 key (``bits`` per word id, as few as the vocabulary needs), and every table is a
sorted array of keys with its values beside it. Smoothing is the interpolated Kneser-Ney of
Chen and Goodman ("An Empirical Study of Smoothing Techniques for Language Modeling", 1998)
with one discount:

    p_n(w | u) = (max(c_n(u w) - D, 0) + D * N_n(u) * p_{n-1}(w | u')) / c_n(u)

where u' is u without its first word, c_N counts the n-grams of the text at the highest
order, c_n (n < N) counts the distinct words seen before an n-gram (its continuation count),
c_n(u) sums c_n(u w) over w, N_n(u) counts the distinct w, and p_{n-1} is used alone where u
was never seen. p_0 is uniform over the words of the text, its end symbol and one unknown
word. Sentences begin with N - 1 start symbols and end with the end symbol.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from .lexicon import WORD_START

KEY_BITS = 64  # an n-gram's word ids, ``bits`` each, in one uint64 key
START, END = 0, 1  # ids of the start and end symbols; words follow


class _Table:
    """Sorted uint64 keys with an int64 value each; ``get`` gives 0 where a key is absent."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        self.keys, self.values = keys, values

    @classmethod
    def summed(cls, keys: np.ndarray, weights: np.ndarray | None = None) -> _Table:
        """Each distinct key with the sum of its int64 ``weights`` (1 each if None), from a
        sort and its runs of equal keys (quick where the keys come sorted, as a table's
        keys shifted right do)."""
        if weights is None:
            keys = np.sort(keys, kind="stable")
        else:
            order = np.argsort(keys, kind="stable")
            keys, weights = keys[order], weights[order]
        if not len(keys):
            return cls(keys, np.zeros(0, dtype=np.int64))
        first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))  # of each key
        if weights is None:
            sums = np.diff(np.append(first, len(keys)))
        else:
            sums = np.add.reduceat(weights, first)
        return cls(keys[first], sums.astype(np.int64))

    def get(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(keys), dtype=np.int64)
        at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.values[at], 0)


def key_bits(order: int, words: int) -> int:
    """Bits per word id in the one-key n-grams of an LM of ``order`` over ``words`` distinct
    words; ValueError where the order is no whole number >= 2 or its ids do not fit a key."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 2:
        raise ValueError(f"order: a whole number >= 2; got {order!r}")
    bits = (words + 2).bit_length()  # ids run from START to the unknown word's, words + 2
    if order * bits > KEY_BITS:
        most = (1 << (KEY_BITS // order)) - 3
        raise ValueError(f"a word n-gram LM of order {order} holds at most {most} words; "
                         f"the text has {words}")
    return bits


class WordNgramLM:
    """Interpolated Kneser-Ney word n-gram LM (module docstring) of ``sentences``, each a
    string of space-separated words; ``order`` >= 2, as far as the n-gram's word ids fit
    in one key: a 4-gram of up to 65,533 words, a trigram of up to 2 million."""

    def __init__(self, sentences: Iterable[str], order: int = 3, discount: float = 0.75) -> None:
        if not 0 < discount < 1:
            raise ValueError(f"discount: must be in (0, 1); got {discount}")
        sentences = list(sentences)
        # the words from one split of the whole text, and each sentence's length from a split
        # dropped at once: a list kept per sentence (148,000 of the bundled text's) set off
        # the garbage collector again and again, doubling the count's time
        words = " ".join(sentences).split()
        lengths = np.fromiter((len(sentence.split()) for sentence in sentences),
                              dtype=np.int64, count=len(sentences))
        self.ids = {word: i for i, word in enumerate(dict.fromkeys(words), start=END + 1)}
        self.bits = key_bits(order, len(self.ids))
        self.order, self.discount = int(order), discount
        self.unknown = len(self.ids) + 2  # an id no table holds
        self.uniform = 1.0 / (len(self.ids) + 2)  # the words, the end symbol, one unknown
        ids = np.fromiter(map(self.ids.__getitem__, words), dtype=np.uint64, count=len(words))
        keys = self._keys(ids, lengths)
        grams = _Table.summed(keys)  # every n-gram of the text, at the highest order
        self.grams: list[_Table] = [grams]  # highest order first
        self.contexts: list[tuple[_Table, _Table]] = []  # (c_n(u), N_n(u)), the same order
        for n in range(self.order, 0, -1):
            context_keys = grams.keys >> self.bits
            self.contexts.append((_Table.summed(context_keys, grams.values),
                                  _Table.summed(context_keys)))
            if n > 1:  # continuation counts: each distinct n-gram counts once for its suffix
                grams = _Table.summed(grams.keys & self._mask(n - 1))
                self.grams.append(grams)

    def _keys(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The word ids of sentences one after another (N,) and their lengths (B,) -> the
        uint64 key of every n-gram of the highest order, (N + B,), each sentence padded with
        ``order - 1`` START before and END after."""
        pad = self.order - 1
        starts = np.cumsum(lengths + pad + 1) - lengths - 1  # in flat, of each first word
        shift = starts - (np.cumsum(lengths) - lengths)  # from a word's index in ids to flat
        flat = np.full(len(ids) + len(lengths) * (pad + 1), START, dtype=np.uint64)
        flat[np.arange(len(ids)) + np.repeat(shift, lengths)] = ids
        flat[starts + lengths] = END
        ends = np.flatnonzero(flat != START)  # where each n-gram ends: a word or END
        keys = np.zeros(len(ends), dtype=np.uint64)
        for back in range(self.order - 1, -1, -1):
            keys = (keys << self.bits) | flat[ends - back]
        return keys

    def _mask(self, n: int) -> int:
        """Keeps the last ``n`` word ids of a key."""
        return (1 << (self.bits * n)) - 1

    def log_probs(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """Sentences as word lists -> (B,) float64: each one's natural-log probability,
        its end included."""
        if not sentences:
            return np.zeros(0)
        ids = np.array([self.ids.get(word, self.unknown) for words in sentences
                        for word in words], dtype=np.uint64)
        lengths = np.array([len(words) for words in sentences], dtype=np.int64)
        probability = self._probabilities(self._keys(ids, lengths))
        return np.add.reduceat(np.log(probability), np.cumsum(lengths + 1) - lengths - 1)

    def _probabilities(self, keys: np.ndarray) -> np.ndarray:
        """(P,) keys of n-grams of the highest order -> (P,) p(last word | the others)."""
        probability = np.full(len(keys), self.uniform)
        for n in range(1, self.order + 1):  # lowest order first
            depth = self.order - n  # index into the tables, highest order first
            gram = keys & self._mask(n)
            total, types = (table.get(gram >> self.bits) for table in self.contexts[depth])
            count = self.grams[depth].get(gram)
            smoothed = (np.maximum(count - self.discount, 0.0)
                        + self.discount * types * probability) / np.maximum(total, 1)
            probability = np.where(total > 0, smoothed, probability)
        return probability


class SpelledNgram:
    """A word n-gram LM that reads token ids: ``pieces[i]`` is token i's SentencePiece
    piece, and a piece that starts with ``▁`` starts a word."""

    def __init__(self, lm: WordNgramLM, pieces: Sequence[str]) -> None:
        self.lm, self.pieces = lm, list(pieces)

    def words(self, tokens: Sequence[int]) -> list[str]:
        return "".join(self.pieces[token] for token in tokens).replace(WORD_START, " ").split()

    def sentence_log_probs(self, sentences: Sequence[Sequence[int]]) -> np.ndarray:
        """Token-id lists -> (B,) each one's natural-log probability as words."""
        return self.lm.log_probs([self.words(tokens) for tokens in sentences])
