"""Build a synthetic multi-voice corpus: the plan, the splits, resuming, the summary.

The plan is a pure function of the seed, the sentence pool and the voice inventory, and
it is prefix-stable: utterance ``i`` is the same whatever ``--utterances`` says, so a
larger count extends an existing corpus instead of rebuilding it.

* Utterance ``i`` says sentence ``i`` of a seeded shuffle of the pool, so no sentence is
  said twice and the splits never share a sentence.
* Its split is fixed by ``i``'s slot in a cycle of 40: slots 0 and 20 are dev, 1 is
  test_seen, 2 is test_unseen, the rest train (90 / 5 / 2.5 / 2.5 %). Any prefix of
  the plan, even 3 utterances, has every split in proportion, so ``--hours`` can stop
  the build anywhere.
* Its voice comes from a round robin over a seeded shuffle of its split's voices, each
  repeated ``weight`` times: held-out voices for test_unseen, the others for the rest.

The output layout::

    OUT/audio/<split>/<id>.flac   16 kHz mono 16-bit FLAC
    OUT/<split>.jsonl             {"id", "audio", "text", "duration", "voice", "engine",
                                   "source", "licence"}, audio relative to OUT
    OUT/summary.json              hours, utterances, words and voices per split, build rate
    OUT/LICENSES.md               licences of the text sources and the synthesisers
    OUT/sentences.txt             the whole normalised sentence pool, one per line: text for
                                  ``train-lm``, whose ``--exclude`` drops the dev/test lines
    OUT/build.json                the seed and a fingerprint of the plan, checked on resume
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import random
import resource
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm import tqdm

from ...files import claimed, holds_more_than, write_atomically
from .store import (
    SPLITS,
    SynthError,
    append_record,
    manifest_path,
    read_records,
    remove_partial_files,
    write_records,
)
from .text import SOURCES, Sentence, load_sentences
from .voices import ENGINE_LICENCES, ENGINES, Voice, all_voices, missing_engines
from .worker import Job, Result, init_worker, run_batch

SPLIT_CYCLE = 40
EVAL_SLOTS = {0: "dev", 1: "test_seen", 2: "test_unseen", 20: "dev"}
PLAN_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """What to build and how. At least one of ``utterances`` and ``hours`` is needed."""

    out_dir: Path
    utterances: int | None = None  # None: as many as there are sentences
    hours: float | None = None  # stop once the corpus holds this much audio
    jobs: int = 2
    seed: int = 0
    engines: tuple[str, ...] = ENGINES
    sources: tuple[str, ...] = tuple(SOURCES)
    progress: bool = True
    batch_size: int = 8  # utterances per task sent to a worker


@dataclass(frozen=True)
class Utterance:
    """One planned utterance."""

    id: str
    split: str
    sentence: Sentence
    voice: Voice

    @property
    def audio(self) -> str:
        return f"audio/{self.split}/{self.id}.flac"

    def job(self, out_dir: Path) -> Job:
        """What a worker needs to synthesise it."""
        return Job(self.id, self.voice, self.sentence.spoken, out_dir / self.audio)

    def record(self, duration: float) -> dict[str, Any]:
        """Its manifest line."""
        return {"id": self.id, "audio": self.audio, "text": self.sentence.text,
                "duration": round(duration, 3), "voice": self.voice.id,
                "engine": self.voice.engine, "source": self.sentence.source,
                "licence": self.sentence.licence}


@dataclass
class RunStats:
    """What one run of the builder did."""

    skipped: int = 0
    synthesised: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0
    synthesis_seconds: float = 0.0  # wall clock
    worker_cpu_seconds: float = 0.0  # workers and their festival processes


# --- the plan -----------------------------------------------------------------------------


def split_of(index: int) -> str:
    """The split of utterance ``index`` (see the module doc)."""
    return EVAL_SLOTS.get(index % SPLIT_CYCLE, "train")


def voice_wheel(voices: list[Voice], seed: int, split: str) -> list[Voice]:
    """The split's voices, each ``weight`` times, in a seeded order."""
    wheel = [voice for voice in voices for _ in range(voice.weight)]
    random.Random(f"{seed}/{split}").shuffle(wheel)
    return wheel


def plan_corpus(sentences: list[Sentence], voices: list[Voice], count: int,
                seed: int) -> list[Utterance]:
    """The first ``count`` utterances of the plan for this seed (see the module doc)."""
    if count > len(sentences):
        raise SynthError(f"{count} utterances asked for, but the text sources give only "
                         f"{len(sentences)} distinct sentences")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    seen = [voice for voice in voices if not voice.unseen]
    unseen = [voice for voice in voices if voice.unseen]
    if not seen or not unseen:
        raise SynthError("the engines chosen leave no training voice or no held-out voice")
    wheels = {split: voice_wheel(unseen if split == "test_unseen" else seen, seed, split)
              for split in SPLITS}
    used: Counter[str] = Counter()
    plan = []
    for i in range(count):
        split = split_of(i)
        wheel = wheels[split]
        plan.append(Utterance(f"synth{seed}-{i:07d}", split, sentences[order[i]],
                              wheel[used[split] % len(wheel)]))
        used[split] += 1
    return plan


def plan_fingerprint(sentences: list[Sentence], voices: list[Voice], seed: int) -> str:
    """Changes whenever the plan for some utterance would: sources, voices, seed, rules."""
    digest = hashlib.sha256(f"{PLAN_VERSION}|{seed}|{SPLIT_CYCLE}|{EVAL_SLOTS}".encode())
    for voice in voices:
        digest.update(f"|{voice.id}:{voice.weight}:{voice.unseen}".encode())
    for sentence in sentences:
        digest.update(f"|{sentence.spoken}:{sentence.source}".encode())
    return digest.hexdigest()


# --- resuming -----------------------------------------------------------------------------


def _check_build_file(out_dir: Path, seed: int, fingerprint: str) -> None:
    path = out_dir / "build.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise SynthError(f"{out_dir} holds a build with other settings (seed "
                             f"{previous.get('seed')}, or other text sources or voices); "
                             "choose a new --out")
    else:
        write_atomically(path, json.dumps({"seed": seed, "fingerprint": fingerprint}) + "\n")


def recover(out_dir: Path, plan: list[Utterance]) -> dict[str, dict[str, Any]]:
    """id -> manifest record of every planned utterance whose audio is already written.

    Audio written by a run killed before it reached the manifest is measured again.
    """
    planned = {utterance.id: utterance for utterance in plan}
    durations = {}
    for split in SPLITS:
        for record in read_records(manifest_path(out_dir, split)):
            if record["id"] in planned:
                durations[record["id"]] = float(record["duration"])
    records = {}
    for utterance in plan:
        path = out_dir / utterance.audio
        if not path.exists():
            continue
        duration = durations.get(utterance.id)
        records[utterance.id] = utterance.record(duration if duration is not None
                                                 else sf.info(path).duration)
    return records


def write_manifests(out_dir: Path, plan: list[Utterance],
                    records: dict[str, dict[str, Any]]) -> None:
    """Rewrite every split's manifest, in plan order, from the good records."""
    for split in SPLITS:
        write_records(manifest_path(out_dir, split),
                      (records[u.id] for u in plan if u.split == split and u.id in records))


# --- synthesis ----------------------------------------------------------------------------


def _batches(utterances: list[Utterance], size: int) -> deque[list[Utterance]]:
    return deque(utterances[start:start + size] for start in range(0, len(utterances), size))


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children (and theirs): the pool's workers."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _keep(result: Result, utterance: Utterance, records: dict[str, dict[str, Any]],
          stats: RunStats, out_dir: Path) -> float:
    """Record a finished utterance (or count its failure); returns the seconds added."""
    if result.error is not None:
        stats.failed += 1
        stats.errors.append(result.error)
        return 0.0
    records[utterance.id] = utterance.record(result.duration)
    append_record(out_dir, utterance.split, records[utterance.id])
    stats.synthesised += 1
    stats.audio_seconds += result.duration
    return result.duration


def _expected_seconds(in_flight: dict[Any, dict[str, Utterance]], total: float,
                      done: int) -> float:
    """A guess at the audio the batches in flight will add: the mean so far (or 3 s) each."""
    mean = total / done if done else 3.0
    return mean * sum(len(batch) for batch in in_flight.values())


def _progress_bar(config: SynthConfig, utterances: int, seconds_left: float) -> tqdm:
    """Counts utterances; or seconds of audio, when ``hours`` caps the build."""
    if config.hours is None:
        return tqdm(total=utterances, unit="utt", desc="synth", disable=not config.progress)
    return tqdm(total=max(0, round(seconds_left)), desc="synth", disable=not config.progress,
                bar_format="{l_bar}{bar}| {n:.0f}/{total} s of audio [{elapsed}<{remaining}]")


def synthesise(config: SynthConfig, pending: list[Utterance],
               records: dict[str, dict[str, Any]], stats: RunStats) -> None:
    """Synthesise ``pending`` in order on ``config.jobs`` workers, adding to ``records``.

    At most two batches per worker are in flight, so ``--hours`` stops the build soon
    after the corpus reaches it. Failures are counted, not recorded: a re-run retries them.
    The progress bar counts utterances, or seconds of audio when ``hours`` caps the build.
    """
    out_dir = config.out_dir
    cap = config.hours * 3600 if config.hours is not None else math.inf
    total = sum(record["duration"] for record in records.values())
    batches = _batches(pending, config.batch_size)
    in_flight: dict[Future[list[Result]], dict[str, Utterance]] = {}
    bar = _progress_bar(config, len(pending), cap - total)
    started = time.monotonic()
    cpu_before = _children_cpu_seconds()
    try:
        with ProcessPoolExecutor(config.jobs, mp_context=multiprocessing.get_context("fork"),
                                 initializer=init_worker, initargs=(os.getpid(),)) as pool, bar:
            while batches or in_flight:
                while (batches and len(in_flight) < 2 * config.jobs
                       and total + _expected_seconds(in_flight, total, len(records)) < cap):
                    batch = batches.popleft()
                    jobs = [u.job(out_dir) for u in batch]
                    in_flight[pool.submit(run_batch, jobs)] = {u.id: u for u in batch}
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    batch = in_flight.pop(future)
                    for result in future.result():
                        seconds = _keep(result, batch[result.id], records, stats, out_dir)
                        total += seconds
                        bar.update(1 if config.hours is None else min(seconds,
                                                                      bar.total - bar.n))
    except BrokenProcessPool as error:
        raise SynthError("a synthesiser worker died (a crash inside an engine library?); "
                         "re-run the same command to resume") from error
    finally:
        stats.synthesis_seconds = time.monotonic() - started
        stats.worker_cpu_seconds = _children_cpu_seconds() - cpu_before


# --- summary and licences -----------------------------------------------------------------


def _tally(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"utterances": len(records),
            "hours": round(sum(r["duration"] for r in records) / 3600, 4),
            "words": sum(len(r["text"].split()) for r in records)}


def _ratio(audio_seconds: float, seconds: float) -> float:
    return round(audio_seconds / seconds, 1) if seconds else 0.0


def summarise(config: SynthConfig, plan: list[Utterance], records: dict[str, dict[str, Any]],
              sentences: list[Sentence], voices: list[Voice], stats: RunStats,
              wall_seconds: float) -> dict[str, Any]:
    """Everything ``summary.json`` says about the corpus and about this run."""
    by_split = {split: [records[u.id] for u in plan if u.split == split and u.id in records]
                for split in SPLITS}
    built = [record for split in SPLITS for record in by_split[split]]
    splits = {}
    for split, in_split in by_split.items():
        used_voices = sorted({r["voice"] for r in in_split})
        splits[split] = _tally(in_split) | {"voices": len(used_voices), "voice_ids": used_voices}
    engines = {engine: _tally([r for r in built if r["engine"] == engine])
               for engine in config.engines}
    available = Counter(sentence.source.split("/")[0] for sentence in sentences)
    sources = {name: _tally([r for r in built if r["source"].split("/")[0] == name])
               | {"licence": SOURCES[name].licence, "sentences_available": available[name]}
               for name in config.sources}
    return {
        "seed": config.seed,
        "utterances_planned": len(plan),
        "hours_cap": config.hours,
        **_tally(built),
        "splits": splits,
        "voices": {"train": [v.id for v in voices if not v.unseen],
                   "unseen": [v.id for v in voices if v.unseen]},
        "engines": engines,
        "sources": sources,
        "run": {"jobs": config.jobs, "skipped": stats.skipped,
                "synthesised": stats.synthesised, "failed": stats.failed,
                "errors": stats.errors[:10],
                "audio_seconds": round(stats.audio_seconds, 1),
                "synthesis_seconds": round(stats.synthesis_seconds, 1),
                "worker_cpu_seconds": round(stats.worker_cpu_seconds, 1),
                "wall_seconds": round(wall_seconds, 1),
                "realtime_factor": _ratio(stats.audio_seconds, stats.synthesis_seconds),
                "audio_seconds_per_cpu_second": _ratio(stats.audio_seconds,
                                                       stats.worker_cpu_seconds)},
    }


def licences_markdown(summary: dict[str, Any]) -> str:
    """``LICENSES.md``: per-source and per-engine tables, then the licence notices."""
    lines = ["# Licences", "",
             "Built by `conformer-asr synth`. Each manifest line names the `source` and "
             "`licence` of its text and the `voice` and `engine` that spoke it.", "",
             "## Text sources", "",
             "| source | Debian package | licence | sentences available | utterances |",
             "| --- | --- | --- | --- | --- |"]
    for name, tally in summary["sources"].items():
        source = SOURCES[name]
        lines.append(f"| {name} | {source.package} | {source.licence} | "
                     f"{tally['sentences_available']} | {tally['utterances']} |")
    lines += ["", "## Synthesisers", "", "| engine | Debian packages | licence | utterances |",
              "| --- | --- | --- | --- |"]
    for engine, tally in summary["engines"].items():
        packages, licence = ENGINE_LICENCES[engine]
        lines.append(f"| {engine} | {packages} | {licence} | {tally['utterances']} |")
    notices = resources.files("conformer_asr.data").joinpath("resources/synth_licences.md")
    return "\n".join(lines) + "\n\n" + notices.read_text(encoding="utf-8")


# --- the whole build ----------------------------------------------------------------------


def build(config: SynthConfig) -> dict[str, Any]:
    """Build (or resume, or extend) the corpus described by ``config``; returns the summary."""
    if config.utterances is None and config.hours is None:
        raise SynthError("give a number of utterances, a number of hours, or both")
    if config.jobs < 1:
        raise SynthError("jobs must be at least 1")
    if config.utterances is not None and config.utterances < 1:
        raise SynthError(f"utterances must be at least 1, got {config.utterances}")
    if config.hours is not None and not 0 < config.hours < math.inf:
        raise SynthError(f"hours must be a positive number, got {config.hours}")
    out_dir = config.out_dir
    # a build's folder has its build.json (written before any audio), or only hidden files
    # (the lock); the manifests, LICENSES.md, ... of a folder with other things were
    # written over
    if holds_more_than(out_dir) and not (out_dir / "build.json").is_file():
        raise SynthError(f"{out_dir} is not empty and holds no corpus build (no build.json); "
                         "choose a new --out")
    with claimed(out_dir, "--out"):  # first: a bad --out is named on any machine
        missing = missing_engines(config.engines)
        if missing:
            raise SynthError("; ".join(f"{engine}: {why}" for engine, why in missing.items()))
        started = time.monotonic()
        try:
            sentences = load_sentences(config.sources)
        except FileNotFoundError as error:
            raise SynthError(str(error)) from error
        voices = all_voices(config.engines)
        count = len(sentences) if config.utterances is None else config.utterances
        plan = plan_corpus(sentences, voices, count, config.seed)
        _check_build_file(out_dir, config.seed, plan_fingerprint(sentences, voices, config.seed))
        for split in SPLITS:
            (out_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
        remove_partial_files(out_dir)
        records = recover(out_dir, plan)
        write_manifests(out_dir, plan, records)
        stats = RunStats(skipped=len(records))
        synthesise(config, [u for u in plan if u.id not in records], records, stats)
        write_manifests(out_dir, plan, records)
        summary = summarise(config, plan, records, sentences, voices, stats,
                            time.monotonic() - started)
        write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_atomically(out_dir / "LICENSES.md", licences_markdown(summary))
        write_atomically(out_dir / "sentences.txt", "".join(f"{s.text}\n" for s in sentences))
    return summary


def build_corpus(out_dir: str | Path, utterances: int | None = None, hours: float | None = None,
                 jobs: int = 2, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Build ``utterances`` utterances (or ``hours`` of audio) into ``out_dir``; see ``build``.

    ``options`` are the other :class:`SynthConfig` fields (``engines``, ``sources``,
    ``progress``, ``batch_size``). Re-running the same call skips finished utterances.
    """
    return build(SynthConfig(Path(out_dir), utterances, hours, jobs, seed, **options))
