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
    """One sentence per line (``.gz`` and ``.xz`` too), normalised; empty lines dropped. A
    manifest (JSON lines, such as a corpus's ``train.jsonl``) gives its transcripts instead:
    read as lines of text, the LM learnt its ids and audio paths."""
    sentences = []
    for path in map(Path, paths):
        lines = _lines(path)
        if _is_manifest(lines):
            texts: Iterable[str] = (normalize_text(t) for t in _transcripts(path, lines))
        else:
            texts = map(normalize_text, lines)
        sentences.extend(text for text in texts if text)
    return sentences


def _is_manifest(lines: list[str]) -> bool:
    first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first) if first.lstrip().startswith("{") else None
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and ("text" in record or "supervisions" in record)


def _manifest_lines(path: Path, lines: list[str]) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number}: not a JSON line") from None


def manifest_texts(paths: Iterable[str | Path]) -> set[str]:
    """Normalised transcripts of JSONL manifests, as a set (see ``_transcripts``)."""
    texts = {normalize_text(text) for path in map(Path, paths)
             for text in _transcripts(path, _lines(path))}
    texts.discard("")
    return texts


def _transcripts(path: Path, lines: list[str]) -> Iterator[str]:
    """The transcript of each of the ``lines`` of the JSONL manifest ``path``: plain lines
    ``{"text": ...}`` or Lhotse cuts (``supervisions[].text``). A line without text is an
    error, not a silent gap."""
    for number, record in _manifest_lines(path, lines):
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            yield record["text"]
        elif isinstance(record, dict) and isinstance(record.get("supervisions"), list):
            yield " ".join(s.get("text") or "" for s in record["supervisions"])
        else:
            raise ValueError(f"{path}:{number}: no transcript (\"text\")")


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
