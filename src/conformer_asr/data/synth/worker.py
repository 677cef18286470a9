"""Worker side: synthesise a batch of utterances, condition the audio, write it atomically.

Each worker process keeps one :class:`Synthesiser` for its whole life, so libraries are
loaded and festival processes started once per worker, not once per utterance.
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing.util
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ...audio.io import SAMPLE_RATE, resample
from ...files import write_atomically
from .engines import EngineError, Synthesiser
from .voices import Voice

PEAK = 10 ** (-3 / 20)  # -3 dBFS: loud, with headroom for later augmentation
SILENCE_DB = -45.0  # frames this far below the loudest frame count as silence
KEEP_SILENCE = 0.15  # seconds of silence left before the first and after the last sound
FRAME = SAMPLE_RATE // 100  # 10 ms


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise into ``path``."""

    id: str
    voice: Voice
    spoken: str
    path: Path


@dataclass(frozen=True)
class Result:
    """What became of a job: its duration in seconds, or the error that stopped it."""

    id: str
    duration: float = 0.0
    error: str | None = None


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence down to ``KEEP_SILENCE`` seconds each."""
    frames = len(audio) // FRAME
    if frames == 0:
        return audio
    energy = np.square(audio[: frames * FRAME].reshape(frames, FRAME)).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (SILENCE_DB / 10))
    if len(loud) == 0:  # digital silence
        return audio[:0]
    keep = int(KEEP_SILENCE * SAMPLE_RATE)
    start = max(0, loud[0] * FRAME - keep)
    end = min(len(audio), (loud[-1] + 1) * FRAME + keep)
    return audio[start:end]


def condition(samples: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz, trimmed, peak-normalised to ``PEAK``; raises EngineError on silent output."""
    audio = trim_silence(resample(np.asarray(samples, dtype=np.float32), rate))
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak < 1e-4:
        raise EngineError("the synthesiser produced no sound")
    return audio * (PEAK / peak)


def write_flac(path: Path, audio: np.ndarray) -> None:
    """Conditioned 16 kHz ``audio`` as 16-bit FLAC, whole or not at all. It is encoded in
    memory, then written by Python, whose OSError names the file."""
    flac = io.BytesIO()
    sf.write(flac, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    write_atomically(path, flac.getvalue())


PR_SET_PDEATHSIG = 1


def init_worker(builder_pid: int) -> None:
    """Pool initializer: make the worker die with the builder (Linux ``prctl``), and leave
    Ctrl-C to the builder.

    Without this a killed build leaves its workers blocked forever on the task queue. A
    terminal's Ctrl-C reaches every process of the group: each worker printed a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != builder_pid:  # the builder died before prctl took effect
        os._exit(1)


_synthesiser: Synthesiser | None = None


def _worker_synthesiser() -> Synthesiser:
    """This worker's synthesiser, created on first use and closed when the worker exits."""
    global _synthesiser
    if _synthesiser is None:
        _synthesiser = Synthesiser()
        multiprocessing.util.Finalize(_synthesiser, _synthesiser.close, exitpriority=10)
    return _synthesiser


def run_batch(jobs: list[Job]) -> list[Result]:
    """Synthesise each job; a synthesiser's failure is reported in its Result and stops
    nothing else. An OSError writing the audio (a full disk) is raised: it would fail every
    other job too, and a build counting them would never reach its ``--hours``."""
    synthesiser = _worker_synthesiser()
    results = []
    for job in jobs:
        try:
            audio = condition(*synthesiser.synthesize(job.voice, job.spoken))
        except (EngineError, OSError, sf.LibsndfileError) as error:
            results.append(Result(job.id, error=f"{job.voice.id}: {error}"))
            continue
        write_flac(job.path, audio)
        results.append(Result(job.id, len(audio) / SAMPLE_RATE))
    return results
