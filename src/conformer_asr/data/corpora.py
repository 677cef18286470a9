"""Prepare public corpora with Lhotse's recipes into our manifests, one pair per split.

For each split ``<part>`` of a corpus this writes to ``out_dir``:

- ``<part>.cuts.jsonl.gz``: Lhotse cuts (what ``load_cuts`` and Lhotse tools read);
- ``<part>.jsonl``: the plain ``{"id", "audio", "text", "speaker", "source", "licence"}``
  format, when every utterance is a whole audio file (LibriSpeech, LibriTTS, ...).
  Corpora whose utterances are segments of long recordings (TED-LIUM, AMI, ...)
  get only the cuts file.

Texts are normalised with ``normalize_text``; duplicate ids, empty texts and missing
files are skipped and counted. Lhotse's recipe does the corpus-specific parsing.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhotse import CutSet
from lhotse.utils import fastcopy

from ..files import read_text, replacing
from .manifest import DataIssues, clean_cuts, has_plain_form, save_jsonl

LICENCES = {"librispeech": "CC BY 4.0"}  # https://www.openslr.org/12
LIBRISPEECH_PARTS = ("train-clean-100", "train-clean-360", "train-other-500",
                     "dev-clean", "dev-other", "test-clean", "test-other")
MINI_LIBRISPEECH_PARTS = ("dev-clean-2", "train-clean-5")  # Lhotse finds and downloads these too


@dataclass(frozen=True)
class PreparedPart:
    """One prepared split: its manifests and size."""

    name: str
    cuts_path: Path
    jsonl_path: Path | None  # None when utterances are segments of longer recordings
    utterances: int
    hours: float


def prepare_librispeech(corpus_dir: str | Path, out_dir: str | Path, *,
                        parts: Sequence[str] | None = None, download: bool = False,
                        num_jobs: int = 1, issues: DataIssues | None = None,
                        ) -> list[PreparedPart]:
    """LibriSpeech from ``corpus_dir`` laid out as the official release
    (``<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` + ``*.trans.txt``).

    ``parts``: e.g. ``["train-clean-100", "dev-clean"]``; None: every part present.
    ``download``: first fetch the missing parts (None: all seven) from openslr.org
    into ``corpus_dir``, which must then be named ``LibriSpeech`` (~60 GB for all).
    """
    corpus_dir = Path(corpus_dir)
    issues = issues if issues is not None else DataIssues()
    known = LIBRISPEECH_PARTS + MINI_LIBRISPEECH_PARTS
    unknown = [part for part in parts or () if part not in known]
    if unknown:
        raise ValueError(f"{unknown[0]}: not a LibriSpeech part (there are {', '.join(known)})")
    if download:
        if corpus_dir.name != "LibriSpeech":
            raise ValueError(f"{corpus_dir}: to download, give a folder named LibriSpeech "
                             "(the archives unpack into <parent>/LibriSpeech)")
        from lhotse.recipes.librispeech import download_librispeech

        # Lhotse fetches again, and replaces, any part folder without its own ".completed"
        # mark, which a copy unpacked by hand lacks: only absent parts are its to fetch
        absent = [p for p in parts or LIBRISPEECH_PARTS if not (corpus_dir / p).is_dir()]
        if absent:
            download_librispeech(corpus_dir.parent, dataset_parts=absent)
    _check_librispeech(corpus_dir, parts, issues)
    return prepare_corpus("librispeech", corpus_dir, out_dir, parts=parts, num_jobs=num_jobs,
                          issues=issues)


def _check_librispeech(corpus_dir: Path, parts: Sequence[str] | None, issues: DataIssues) -> None:
    """Before any audio is read, an error naming the path where Lhotse's recipe would end in
    a traceback or an error without one: a requested part not there, a part without
    transcripts or without any of the audio they name, a transcript line that is not
    ``ID TEXT``. Lines naming a missing audio file are counted in ``issues`` (Lhotse skips
    them)."""
    _check_corpus_dir(corpus_dir)
    present = [p for p in LIBRISPEECH_PARTS + MINI_LIBRISPEECH_PARTS if (corpus_dir / p).is_dir()]
    if not (parts or present):
        raise FileNotFoundError(f"{corpus_dir}: no LibriSpeech parts in it (folders such as "
                                f"{LIBRISPEECH_PARTS[0]})")
    for part in parts or present:
        part_dir = corpus_dir / part
        if not part_dir.is_dir():
            raise FileNotFoundError(f"{part_dir}: not found (parts present: "
                                    f"{', '.join(present) or 'none'})")
        audio = _librispeech_audio(part_dir)
        if not audio:
            raise FileNotFoundError(f"{part_dir}: no transcript lines (*.trans.txt) in it")
        missing = [path for path in audio if not path.is_file()]
        if len(missing) == len(audio):
            raise FileNotFoundError(f"{part_dir}: none of the audio files named in its "
                                    f"transcripts exists (e.g. {missing[0]})")
        for path in missing:
            issues.add("missing audio", str(path))


def _librispeech_audio(part_dir: Path) -> list[Path]:
    """The audio file that each line of ``part_dir``'s ``*.trans.txt`` files names; a
    ValueError naming the file and line for a line that is not ``ID TEXT``, or that gives an
    id again (Lhotse's recipe stops at either, naming neither)."""
    audio = []
    first_given: dict[str, str] = {}
    for transcript in sorted(part_dir.rglob("*.trans.txt")):
        for number, line in enumerate(read_text(transcript).splitlines(), start=1):
            fields = line.split(maxsplit=1)
            if len(fields) < 2:
                raise ValueError(f'{transcript} line {number}: expected "ID TEXT", got '
                                 f"{line.strip()!r}")
            utterance = fields[0]  # <speaker>-<chapter>-<n>, in <speaker>/<chapter>/
            if utterance in first_given:
                raise ValueError(f"{transcript} line {number}: {utterance} again (first in "
                                 f"{first_given[utterance]}); each id once")
            first_given[utterance] = f"{transcript.name} line {number}"
            audio.append(part_dir / Path(utterance.replace("-", "/")).parent
                         / f"{utterance}.flac")
    return audio


def _check_corpus_dir(corpus_dir: Path) -> None:
    if not corpus_dir.is_dir():
        problem = "not a folder" if corpus_dir.exists() else "no such corpus folder"
        raise FileNotFoundError(f"{corpus_dir}: {problem}")


def _make_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``, or raise an OSError naming it if it cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        why = "a file, not a folder" if out_dir.is_file() else error.strerror
        raise OSError(f"{out_dir}: cannot create the output folder ({why})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"{out_dir}: the output folder is not writable")


def prepare_corpus(recipe: str, corpus_dir: str | Path, out_dir: str | Path, *,
                   parts: Sequence[str] | None = None, num_jobs: int = 1,
                   issues: DataIssues | None = None) -> list[PreparedPart]:
    """Run Lhotse's ``prepare_<recipe>`` on a local copy of the corpus and write our
    manifests for each split it returns. ``parts`` is passed as the recipe's
    ``dataset_parts`` (ValueError if it has none)."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    _check_corpus_dir(corpus_dir)
    _make_out_dir(out_dir)  # before the recipe reads the corpus
    prepare = _lhotse_recipe(recipe)
    options = inspect.signature(prepare).parameters
    kwargs: dict[str, Any] = {}
    if parts is not None:
        if "dataset_parts" not in options:
            raise ValueError(f"{recipe}: Lhotse's recipe does not choose parts; omit parts")
        kwargs["dataset_parts"] = list(parts)
    if "num_jobs" in options:
        kwargs["num_jobs"] = num_jobs
    manifests = prepare(corpus_dir, **kwargs)
    if "recordings" in manifests:  # single-split recipes return one pair
        manifests = {recipe: manifests}
    issues = issues if issues is not None else DataIssues()
    return [_write_part(recipe, name, split["recordings"], split["supervisions"], out_dir, issues)
            for name, split in sorted(manifests.items())]


def _lhotse_recipe(recipe: str) -> Any:
    try:
        module = importlib.import_module(f"lhotse.recipes.{recipe}")
        return getattr(module, f"prepare_{recipe}")
    except (ImportError, AttributeError):
        raise ValueError(f"{recipe}: no such Lhotse recipe (see lhotse.recipes)") from None


def _write_part(recipe: str, name: str, recordings: Any, supervisions: Any, out_dir: Path,
                issues: DataIssues) -> PreparedPart:
    """One cut per supervision (id = supervision id), cleaned, written as cuts and, if
    every cut is a whole file, as plain JSONL."""
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    whole_files = all(has_plain_form(c) for c in cuts)
    custom = {"source": f"{recipe}/{name}"}
    if recipe in LICENCES:
        custom["licence"] = LICENCES[recipe]
    cuts = CutSet.from_cuts(fastcopy(c, custom={**(c.custom or {}), **custom})
                            for c in clean_cuts(cuts, issues))
    cuts_path = out_dir / f"{name}.cuts.jsonl.gz"
    _atomic_to_file(cuts, cuts_path)
    jsonl_path = out_dir / f"{name}.jsonl" if whole_files else None
    if jsonl_path is not None:
        save_jsonl(cuts, jsonl_path)
    return PreparedPart(name, cuts_path, jsonl_path, len(cuts),
                        sum(c.duration for c in cuts) / 3600.0)


def _atomic_to_file(cuts: CutSet, path: Path) -> None:
    with replacing(path) as temp:  # the name keeps ".jsonl" and ".gz": Lhotse reads them
        cuts.to_file(temp)
