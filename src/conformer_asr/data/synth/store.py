"""The output folder on disk: manifests written so that a killed run never corrupts them.

During a build each finished utterance is appended to ``OUT/<split>.jsonl`` as one
complete line (one ``write`` call). On every start and at the end the manifests
are rewritten from the records known to be good (``files.write_atomically``), which
drops a line cut short by a kill. The audio files are the ground truth: a record whose
audio is missing is dropped, and half-written audio (``files.remove_leftovers``) is
deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...files import naming, remove_leftovers, write_atomically

SPLITS = ("train", "dev", "test_seen", "test_unseen")
RECORD_KEYS = ("id", "audio", "text", "duration", "voice", "engine", "source", "licence")


class SynthError(Exception):
    """The corpus cannot be built as asked; the message says why and what to do."""


def manifest_path(out_dir: Path, split: str) -> Path:
    return out_dir / f"{split}.jsonl"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a manifest; unreadable or partial lines are skipped."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and all(key in record for key in RECORD_KEYS):
                records.append(record)
    return records


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a manifest atomically with the given records."""
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in records))


def remove_partial_files(out_dir: Path) -> None:
    """Delete what killed runs left half-written."""
    for folder in (out_dir, *out_dir.glob("audio/*/")):
        remove_leftovers(folder)


def append_record(out_dir: Path, split: str, record: dict[str, Any]) -> None:
    """Append one record to its split's manifest as a single whole line."""
    path = manifest_path(out_dir, split)
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
    except OSError as error:  # raised by the close, for a full disk: name the file
        raise naming(error, path) from None
