"""Sentences to synthesise: permissively licensed text sources, filtered and normalised.

Each source is a Debian package that ``scripts/install-system-deps.sh`` installs:

* ``wordnet-base`` (WordNet 3.0 licence, permissive): the quoted usage examples
  (``"he picked up the little girl"``) and the definitions (glosses) of every synset.
* ``fortunes`` (BSD-3-Clause, the fortune-mod collection): the non-offensive cookie
  files, split into sentences, attributions dropped.

``dict-gcide`` is deliberately not used: it is GPL-2+, and sentences drawn from it would
put the corpus text under the GPL, while WordNet alone already yields >100k sentences.

A raw sentence is kept when it is 3-25 words of plain English: no digits or symbols,
no acronyms, abbreviations or stray letters (the synthesisers would expand or spell
them, so the audio would not match the transcript), and every word in the CMU
pronouncing dictionary. The transcript is :func:`normalize_text` of the spoken text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...text.dictionary import dictionary_words
from ...text.normalize import normalize_text

MIN_WORDS = 3
MAX_WORDS = 25


@dataclass(frozen=True)
class TextSource:
    """A text source: where it lives, its licence, and how to read raw sentences from it."""

    name: str
    package: str
    licence: str
    root: Path
    read: Callable[[Path], Iterator[tuple[str, str]]]  # root -> (raw sentence, origin)

    @property
    def available(self) -> bool:
        return self.root.is_dir()


@dataclass(frozen=True)
class Sentence:
    """One usable sentence: what the synthesiser reads and what the transcript says."""

    spoken: str  # cleaned original casing and punctuation, fed to the synthesiser
    text: str  # normalised transcript: lowercase letters, apostrophes, single spaces
    source: str  # provenance, e.g. "wordnet/example" or "fortunes/science"
    licence: str


# --- cleaning and filtering ---------------------------------------------------------------

_ALLOWED = re.compile(r"[A-Za-z'\",.;:!?\- ]+")
_DASH = re.compile(r"\s*--+\s*|\s+-\s*|\s*-\s+")
_SPEAKER_LABEL = re.compile(r"(?:^|\s)[A-Z]:")
_MULTI_CAPS = re.compile(r"[A-Z][a-z']*[A-Z]")
_EDGE_PUNCT = " ,;:-"
# Words the CMU dictionary lists but synthesisers expand ("mr" -> "mister") or spell.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "mt", "inc", "ltd", "co", "corp",
    "lb", "lbs", "oz", "eg", "ie", "cf", "esp", "approx", "dept", "govt", "prof", "rev", "capt",
    "sgt", "lt", "gen", "col", "ave", "blvd", "rd", "hwy", "pp", "vol", "ca"})
SINGLE_LETTER_WORDS = frozenset({"a", "i"})


def clean_for_speech(raw: str) -> str | None:
    """The speakable form of a raw sentence, or None when it has digits or symbols.

    Double quotes go, dashes become commas, hyphens inside words become spaces, the
    whitespace is collapsed and a full stop is added when the sentence has no final
    punctuation, so every engine gets the same falling sentence-final prosody.
    """
    raw = " ".join(raw.split())
    if not raw or not _ALLOWED.fullmatch(raw):
        return None
    text = _DASH.sub(", ", raw.replace('"', "")).replace("-", " ")
    text = " ".join(text.split()).strip(_EDGE_PUNCT)
    if not text:
        return None
    return text if text[-1] in ".!?" else text + "."


def is_speakable(spoken: str) -> bool:
    """False for text whose audio would not match its transcript (acronyms, labels)."""
    return not (_MULTI_CAPS.search(spoken) or _SPEAKER_LABEL.search(spoken))


class SentenceFilter:
    """Turns raw text into :class:`Sentence` objects, or rejects it (returns None).

    The words allowed are those of ``vocabulary`` less the abbreviations and the
    single letters other than "a" and "i".
    """

    def __init__(self, vocabulary: Iterable[str]):
        self.allowed = frozenset(word for word in vocabulary if word not in ABBREVIATIONS
                                 and (len(word) > 1 or word in SINGLE_LETTER_WORDS))

    def __call__(self, raw: str, source: str, licence: str) -> Sentence | None:
        spoken = clean_for_speech(raw)
        if spoken is None or not is_speakable(spoken):
            return None
        text = normalize_text(spoken)
        words = text.split()
        if MIN_WORDS <= len(words) <= MAX_WORDS and self.allowed.issuperset(words):
            return Sentence(spoken=spoken, text=text, source=source, licence=licence)
        return None


# --- readers ------------------------------------------------------------------------------

_QUOTED = re.compile(r'"([^"]*)"')
_PARENTHESISED = re.compile(r"\([^()]*\)")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def read_wordnet(root: Path) -> Iterator[tuple[str, str]]:
    """Usage examples (origin ``example``) and definition clauses (``gloss``) of WordNet.

    A data line ends in ``| gloss; "example one"; "example two"``; parenthesised usage
    notes in the definition are dropped and each ``;``-separated clause is a sentence.
    """
    for name in WORDNET_FILES:
        with open(root / name, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("  ") or "|" not in line:  # licence header
                    continue
                gloss = line.split("|", 1)[1]
                for example in _QUOTED.findall(gloss):
                    yield example.strip(), "example"
                definition = _PARENTHESISED.sub(" ", _QUOTED.sub(" ", gloss))
                for clause in definition.split(";"):
                    if clause.strip():
                        yield clause.strip(), "gloss"


FORTUNE_EXCLUDED = frozenset({"ascii-art"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ATTRIBUTION = re.compile(r"^\s*(--|-\s)")


def read_fortunes(root: Path) -> Iterator[tuple[str, str]]:
    """Sentences of every fortune in the plain cookie files (origin: the file's name).

    Only the files directly in ``root`` are read, so the offensive ``off/`` section
    (a separate package) never is; attribution lines (``-- Mark Twain``) are dropped.
    """
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix in (".dat", ".u8") or path.name in FORTUNE_EXCLUDED:
            continue
        for fortune in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            body = " ".join(line for line in fortune.splitlines() if not _ATTRIBUTION.match(line))
            for sentence in _SENTENCE_END.split(" ".join(body.split())):
                if sentence:
                    yield sentence, path.name


SOURCES: dict[str, TextSource] = {
    source.name: source
    for source in (
        TextSource("wordnet", "wordnet-base", "WordNet-3.0", Path("/usr/share/wordnet"),
                   read_wordnet),
        TextSource("fortunes", "fortunes", "BSD-3-Clause", Path("/usr/share/games/fortunes"),
                   read_fortunes),
    )
}


def load_sentences(sources: Iterable[str] = tuple(SOURCES)) -> list[Sentence]:
    """Every usable sentence of the named sources, deduplicated, sorted by transcript.

    A transcript found in several places keeps the provenance of the first source
    named. Raises ``FileNotFoundError`` naming the Debian package of a missing source.
    """
    return list(_load_sentences(tuple(sources)))


@functools.cache
def _load_sentences(sources: tuple[str, ...]) -> tuple[Sentence, ...]:
    accept = SentenceFilter(dictionary_words())
    found: dict[str, Sentence] = {}
    for name in sources:
        source = SOURCES[name]
        if not source.available:
            raise FileNotFoundError(f"text source {name!r} needs the Debian package "
                                    f"{source.package} ({source.root} is missing)")
        for raw, origin in source.read(source.root):
            sentence = accept(raw, f"{name}/{origin}", source.licence)
            if sentence is not None and sentence.text not in found:
                found[sentence.text] = sentence
    return tuple(sorted(found.values(), key=lambda s: s.text))
