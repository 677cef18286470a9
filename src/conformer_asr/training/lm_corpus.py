"""Text for language-model training: read it, drop sentences of evaluation sets, hold out a slice.

An LM that has read the test transcripts makes test WER meaningless, so every
training sentence that equals (after ``normalize_text``) the text of an
utterance in an excluded manifest is removed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..files import read_text
from ..text.normalize import normalize_text


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return read_text(path).split("\n")


def read_sentences(paths: Iterable[str | Path]) -> list[str]:
    """One sentence per line (``.gz`` too), normalised; empty lines dropped."""
    sentences = []
    for path in paths:
        sentences.extend(text for line in _lines(Path(path)) if (text := normalize_text(line)))
    return sentences


def _manifest_lines(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(_lines(path), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON line") from None


def manifest_texts(paths: Iterable[str | Path]) -> set[str]:
    """Normalised transcripts of JSONL manifests: plain lines ``{"text": ...}`` or Lhotse
    cuts (``supervisions[].text``). A line without text is an error, not a silent gap."""
    texts = set()
    for path in paths:
        for number, record in _manifest_lines(Path(path)):
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                text = record["text"]
            elif isinstance(record, dict) and isinstance(record.get("supervisions"), list):
                text = " ".join(s.get("text") or "" for s in record["supervisions"])
            else:
                raise ValueError(f"{path}:{number}: no transcript (\"text\") to exclude")
            texts.add(normalize_text(text))
    texts.discard("")
    return texts


def drop_excluded(sentences: list[str], excluded: set[str]) -> tuple[list[str], int]:
    """-> (sentences not in ``excluded``, how many were removed)."""
    kept = [s for s in sentences if s not in excluded]
    return kept, len(sentences) - len(kept)


def split_heldout(
    sentences: list[str], fraction: float, limit: int, seed: int
) -> tuple[list[str], list[str]]:
    """Shuffle (seeded) and hold out ``fraction`` of the sentences, at least one and at
    most ``limit`` -> (train, held-out)."""
    shuffled = list(sentences)
    random.Random(seed).shuffle(shuffled)
    count = max(1, min(limit, round(fraction * len(shuffled))))
    return shuffled[count:], shuffled[:count]
