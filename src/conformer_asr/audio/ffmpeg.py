"""Formats libsndfile does not read (m4a, mp4, aac, webm, wma, ...), and chained OGG files
(of which it reads the first stream alone), decoded by the ffmpeg program where it is
installed (``apt-get install ffmpeg``); nothing else needs it.

``open_with_ffmpeg`` probes a file with ffprobe and returns an ``FFmpegFile``, which
offers what ``audio.io``'s readers use of a ``soundfile.SoundFile``: the sample rate,
channel count and length, frames read block by block from ffmpeg's output (memory stays
bounded, as for any file), and seeking (ffmpeg starts again at that time). It decodes the
first audio stream at its own rate and channel count, as 32-bit floats; ``audio.io``
then mixes down and resamples as for any file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

# containers that ffmpeg reads and libsndfile does not: named in the error without ffmpeg
FFMPEG_EXTENSIONS = frozenset({".3gp", ".aac", ".amr", ".avi", ".m4a", ".m4b", ".mka",
                               ".mkv", ".mov", ".mp4", ".webm", ".wma", ".wmv"})
_PROBE_SECONDS = 60.0


def ffmpeg_installed() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def missing_ffmpeg_hint(path: Path) -> str:
    """What to add to "not a readable audio file" for ``path``: how to read it, where
    ffmpeg would and is not installed; empty otherwise."""
    if path.suffix.lower() in FFMPEG_EXTENSIONS and not ffmpeg_installed():
        return (f"; {path.suffix.lower()} files are read through the ffmpeg program, which is "
                "not installed (apt-get install ffmpeg)")
    return ""


def _input(path: Path) -> bytes:
    # "file:" keeps a name that starts with "-" or holds ":" a file name to ffmpeg
    return b"file:" + os.fsencode(path)


def open_with_ffmpeg(path: Path, exact: bool = False) -> FFmpegFile | str | None:
    """``path``'s first audio stream, open for reading; why not, where ffprobe reads the
    file and finds no audio stream in it (a video alone); None where ffmpeg is not
    installed or cannot read the file. ``exact``: count the frames by decoding the file
    once, not from the container's duration, and seek by decoding up to the frame, not with
    ffmpeg's ``-ss``: a chained OGG file's durations and timestamps mislead both."""
    if not ffmpeg_installed():
        return None
    try:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries",
             "stream=codec_type,sample_rate,channels,duration:format=duration,format_name",
             "-of", "json", _input(path)],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_SECONDS)
        info = json.loads(probe.stdout or b"{}")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    container = info.get("format", {})
    streams = info.get("streams", [])
    audio = [stream for stream in streams if stream.get("codec_type") == "audio"]
    if not audio:
        if not container:
            return None
        kinds = sorted({str(stream.get("codec_type", "unknown")) for stream in streams})
        return f"no audio in it ({' and '.join(kinds) + ' only' if kinds else 'no streams'})"
    try:
        rate, channels = int(audio[0]["sample_rate"]), int(audio[0]["channels"])
    except (KeyError, ValueError):
        return None
    if rate <= 0 or channels <= 0:
        return None
    duration = audio[0].get("duration", container.get("duration"))
    try:
        frames = None if exact else round(float(duration) * rate)
    except (TypeError, ValueError):  # not given (a browser's webm recording): count them
        frames = None
    return FFmpegFile(path, container.get("format_name", "ffmpeg"), rate, channels, frames,
                      seek_by_decoding=exact)


class FFmpegFile:
    """A file decoded by ffmpeg, read as ``audio.io`` reads a SoundFile: ``samplerate``,
    ``channels``, ``frames`` (the container's length, or counted by decoding the file once
    where it gives none), ``format``, ``seek(frame)``, ``read(frames)`` and ``close()``.
    ``seek_by_decoding``: seek by decoding from the start and dropping what precedes the
    frame (exact, and slower), not with ffmpeg's ``-ss``."""

    def __init__(self, path: Path, format_name: str, samplerate: int, channels: int,
                 frames: int | None, seek_by_decoding: bool = False) -> None:
        self.path, self.format = path, format_name
        self.samplerate, self.channels = samplerate, channels
        self._seek_by_decoding = seek_by_decoding
        self._process: subprocess.Popen[bytes] | None = None
        self._errors: IO[bytes] | None = None
        if frames is None:
            self.seek(0)
            frames = 0
            while len(block := self.read(1 << 20)[0]):
                frames += len(block)
        self.frames = frames
        self.seek(0)

    def seek(self, frame: int) -> None:
        """Read from ``frame`` on: ffmpeg starts again there (it decodes from the packet
        before and drops what precedes the time), or at the start, and the frames before
        ``frame`` are read and dropped (``seek_by_decoding``)."""
        self.close()
        if self._seek_by_decoding:
            start, skip = [], frame
        else:
            start, skip = (["-ss", f"{frame / self.samplerate:.6f}"] if frame else []), 0
        # ffmpeg's messages go to a file (closed by close()): a pipe that nobody reads until
        # the end could fill and stop it mid-stream
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", *start, "-i", _input(self.path),
             "-map", "0:a:0", "-ac", str(self.channels), "-ar", str(self.samplerate),
             "-f", "f32le", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._errors)
        while skip > 0 and len(dropped := self.read(min(skip, 1 << 20))[0]):
            skip -= len(dropped)

    def read(self, frames: int) -> tuple[np.ndarray, str]:
        """Up to ``frames`` more frames: ((n, C) float32, why decoding stopped, or "").

        n falls short only at the end of the output, where ffmpeg has finished: the reason
        is its last message if it failed (damaged data)."""
        assert self._process is not None and self._process.stdout is not None
        frame_bytes = 4 * self.channels
        data = self._process.stdout.read(frames * frame_bytes)
        n = len(data) // frame_bytes
        samples = np.frombuffer(data, dtype="<f4", count=n * self.channels)
        reason = ""
        if n < frames and self._process.wait() != 0 and self._errors is not None:
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
            reason = lines[-1].strip() if lines else f"exit status {self._process.returncode}"
        return samples.reshape(n, self.channels).astype(np.float32), reason

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._errors is not None:
            self._errors.close()
            self._errors = None

    def __enter__(self) -> FFmpegFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
