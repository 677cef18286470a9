"""Audio loading: wav/flac/ogg/mp3/... at any rate and channel count -> 16 kHz mono.

libsndfile (through soundfile) reads what it can; other formats (m4a, mp4, webm, ...) and
chained OGG files are decoded by the ffmpeg program where it is installed (``audio.ffmpeg``)."""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..stderr import quiet_stderr
from .ffmpeg import FFmpegFile, missing_ffmpeg_hint, open_with_ffmpeg

SAMPLE_RATE = 16000
_LOAD_BLOCK = 1 << 20  # frames decoded at a time by load_audio
_SFE_BAD_FILE = 7  # libsndfile: "File does not exist or is not a regular file (possibly a pipe?)."
_NOT_RECOGNISED = "Format not recognised."  # libsndfile's reason for a format it does not read
_AudioFile = sf.SoundFile | FFmpegFile


class AudioError(Exception):
    """A file could not be used as audio; the message names the file and says why."""


class AudioWarning(UserWarning):
    """A file was read only in part (cut short or damaged), or beyond what its header
    gives (an unfinished WAV file); the message names the file."""


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) -> (N,) float32, channels averaged."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def samples_of(array: object, name: str) -> np.ndarray:
    """An in-memory recording -> (N,) float32 mono in [-1, 1], as ``load_audio`` reads files.

    ``array``: a NumPy array or a torch tensor, (N,) or 2-D with channels on its shorter
    axis ((N, C) as soundfile reads, (C, N) as torchaudio does); float samples in [-1, 1],
    or integers (int16, int32, uint8 PCM) scaled as in a WAV file. AudioError naming
    ``name`` for other shapes or types, or NaN and infinite samples.
    """
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # a torch tensor (a file has detach)
        tensor = array.detach().cpu()
        try:
            array = tensor.numpy()
        except TypeError:  # a dtype NumPy lacks (bfloat16)
            array = tensor.float().numpy()
    if not isinstance(array, np.ndarray):
        raise AudioError(f"{name}: not audio but a {type(array).__name__} (give a file path "
                         "as str or Path, or an array or tensor of samples)")
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: expected (samples,) or (samples, channels) audio, got "
                         f"shape {array.shape}")
    if array.size == 0:
        raise AudioError(f"{name}: no samples (an empty array of shape {array.shape})")
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T  # (C, N)
    if array.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.signedinteger):
        array = array.astype(np.float32) / -float(np.iinfo(array.dtype).min)
    elif array.dtype.kind in "USO":  # np.array(["a.wav", ...]), a table's column of paths
        raise AudioError(f"{name}: an array of {array.dtype}, not of samples (give file paths "
                         "as a list)")
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"{name}: expected float, signed integer or uint8 samples, got "
                         f"{array.dtype}")
    return finite(to_mono(array), name)


def finite(samples: np.ndarray, name: str) -> np.ndarray:
    """``samples`` unchanged; raises AudioError naming ``name`` if any is NaN or infinite
    (float files can hold them, and the features would turn them into garbage)."""
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: corrupt audio data (NaN or infinite samples)")
    return samples


def resample(samples: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling with soxr; (N,) float32 -> (M,) float32."""
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


# How the containers that libsndfile reads without libmpg123 begin: WAV, RF64, Wave64,
# FLAC, OGG, AIFF, CAF, AU. Other data may go to libmpg123, which prints notes on what it
# cannot decode: it is read inside quiet_stderr, which costs other threads their stderr.
_NOT_MP3_MAGIC = (b"RIFF", b"RF64", b"riff", b"fLaC", b"OggS", b"FORM", b"caff", b".snd")


def _not_a_file_because(name: str, path: Path) -> str | None:
    """Why ``path`` is not an audio file to open, or None if it is a non-empty regular file.
    Raises the OSError of a check that could not be made (a name too long, say)."""
    if path.is_file():
        return "empty file" if path.stat().st_size == 0 else None
    if path.is_dir():
        return "a folder, not an audio file"
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {os.readlink(path)})"
    if path.exists():
        return "not a regular file (a pipe, device or socket): give an audio file"
    if name == "-":
        return "no such file (audio is not read from standard input: give a file)"
    return "no such file"


def _open(path: str | Path) -> _AudioFile:
    if str(path) == "":
        raise AudioError("an empty string is not a file name")
    name, path = str(path), Path(path)  # the name as given: Path drops a leading "./"
    try:
        reason = _not_a_file_because(name, path)
        if reason is None:
            with path.open("rb") as f:
                maybe_mp3 = not f.read(4).startswith(_NOT_MP3_MAGIC)
    except OSError as error:  # not readable by this user, a name too long, ...
        raise AudioError(f"{name}: {error.strerror or error}") from None
    if reason is not None:
        raise AudioError(f"{name}: {reason}")
    try:
        with quiet_stderr(maybe_mp3):
            # as bytes: soundfile encodes a str name strictly as UTF-8, which a name that
            # is not UTF-8 (kept by Python as "surrogate escapes") cannot be
            f = sf.SoundFile(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        if getattr(error, "code", None) == _SFE_BAD_FILE:
            # what libsndfile's MP3 probe, tried last, says of data it cannot decode: the
            # file is known to be a regular one, so no format recognised it
            reason = _NOT_RECOGNISED
        else:
            reason = str(error).split(":")[-1].strip() or "unreadable"
        decoded = open_with_ffmpeg(path) if reason == _NOT_RECOGNISED else None
        if isinstance(decoded, FFmpegFile):
            return decoded
        if decoded is not None:  # a file ffmpeg reads, without audio
            raise AudioError(f"{name}: {decoded}") from None
        if reason == _NOT_RECOGNISED and _mp4_without_index(path):
            raise AudioError(f"{name}: not a readable audio file (an MP4 file without its "
                             "index, the moov box: a recording stopped before it was "
                             "finished, or a file cut short)") from None
        raise AudioError(f"{name}: not a readable audio file ({reason})"
                         f"{missing_ffmpeg_hint(path)}") from None
    if f.format in ("WAV", "WAVEX") and f.frames == 0:
        return _unfinished_wav(f, name, path)
    if f.format == "OGG" and _later_ogg_streams(path):
        # libsndfile reads a chained file's first stream alone; ffmpeg reads them all
        chained = open_with_ffmpeg(path, exact=True)
        if isinstance(chained, FFmpegFile):
            f.close()
            return chained
    return f


def _mp4_without_index(path: Path) -> bool:
    """Whether ``path`` is an MP4 (m4a, mov, ...) file with audio or video data (an
    ``mdat`` box) and no index to it (a ``moov`` box): a recorder writes the index last, so
    a recording stopped before it finished, or a file cut short, has none, and no program
    can tell where its samples are. Walks the top-level boxes (sizes and types)."""
    kinds = []
    try:
        with path.open("rb") as file:
            end = os.fstat(file.fileno()).st_size
            while (start := file.tell()) + 8 <= end:
                size, kind = struct.unpack(">I4s", file.read(8))
                if not _printable(kind):
                    return False
                kinds.append(kind)
                if size == 0:  # the box runs to the end of the file
                    break
                if size == 1:  # a 64-bit size follows the type
                    if len(large := file.read(8)) < 8:
                        break
                    size = struct.unpack(">Q", large)[0]
                if size < 8:
                    return False
                file.seek(start + size)
    except OSError:
        return False
    return kinds[:1] == [b"ftyp"] and b"mdat" in kinds and b"moov" not in kinds


def _unfinished_wav(f: sf.SoundFile, name: str, path: Path) -> sf.SoundFile:
    """``f`` again, or, where its data chunk's size is 0 and data follows it (a recorder
    stopped before it wrote the sizes: killed, or its disk full), the same file read as if
    its header gave the data's size, with an AudioWarning."""
    data_size_at, data_bytes = _wav_data_chunk(path)
    if data_size_at is None:
        return f
    whole = _ClosingSoundFile(_WavWithSizes(path, data_size_at, data_bytes))
    if whole.frames == 0:  # less than one frame of data
        whole.close()
        return f
    f.close()
    warnings.warn(AudioWarning(
        f"{name}: its header gives no samples, as a recording stopped before it was "
        f"finished leaves it; the {whole.frames / whole.samplerate:.1f} s of data after it "
        "are read"), stacklevel=3)
    return whole


def _wav_data_chunk(path: Path) -> tuple[int | None, int]:
    """(offset of the data chunk's size field, bytes after that field) for a RIFF WAVE file
    whose data chunk gives size 0 and is followed by data, not by other chunks (an empty
    recording with its metadata); (None, 0) otherwise."""
    with path.open("rb") as file:
        if file.read(12)[8:] != b"WAVE":
            return None, 0
        while (chunk := _next_chunk(file)) is not None:
            if chunk == (b"data", 0):
                at = file.tell() - 4
                if _only_chunks_follow(file):
                    return None, 0
                return at, path.stat().st_size - at - 4
            file.seek(chunk[1] + chunk[1] % 2, os.SEEK_CUR)  # chunks are padded to even sizes
    return None, 0


def _next_chunk(file: io.BufferedReader) -> tuple[bytes, int] | None:
    """The (id, size) of the RIFF chunk whose header starts at ``file``'s position."""
    header = file.read(8)
    return (header[:4], struct.unpack("<I", header[4:])[0]) if len(header) == 8 else None


def _only_chunks_follow(file: io.BufferedReader) -> bool:
    """Whether what follows ``file``'s position, to its end, is whole RIFF chunks with
    printable ids (and nothing else); restores the position."""
    start, end = file.tell(), os.fstat(file.fileno()).st_size
    try:
        while file.tell() < end:
            chunk = _next_chunk(file)
            if chunk is None or not _printable(chunk[0]):
                return False
            file.seek(chunk[1] + chunk[1] % 2, os.SEEK_CUR)
        return file.tell() in (end, end + 1)  # the last pad byte may be missing
    finally:
        file.seek(start)


def _printable(tag: bytes) -> bool:
    """Whether a RIFF chunk's or MP4 box's type is printable ASCII, as real ones are."""
    return all(32 <= c < 127 for c in tag)


class _ClosingSoundFile(sf.SoundFile):
    """A SoundFile over a file object, which it closes with itself."""

    def close(self) -> None:
        super().close()
        self.name.close()


class _WavWithSizes(io.FileIO):
    """A WAV file read as if its header gave the RIFF and data sizes that the file's length
    implies (libsndfile reads a data chunk of size 0 as holding no samples)."""

    def __init__(self, path: Path, data_size_at: int, data_bytes: int) -> None:
        super().__init__(path, "rb")
        self._sizes = {4: struct.pack("<I", data_size_at + data_bytes - 4),
                       data_size_at: struct.pack("<I", data_bytes)}

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        start = self.tell()
        n = super().readinto(buffer) or 0
        view = memoryview(buffer).cast("B")
        for offset, value in self._sizes.items():
            for i in range(max(offset, start), min(offset + 4, start + n)):
                view[i - start] = value[i - offset]
        return n


def _read(f: _AudioFile, frames: int) -> tuple[np.ndarray, str]:
    """Decode up to ``frames`` more frames: ((n, C) float32, why decoding failed, or "").

    n falls short where the data ends, which may be before the header's frame count (a
    file cut short), or where the decoder fails on damage (the reason says why). libsndfile
    is called directly: soundfile's ``blocks`` yields whole blocks after a short read (the
    tail uninitialised memory: NaN or noise), and its ``read`` raises on damage, losing the
    frames decoded before it, and seeks after every read, which fails in a cut FLAC file.
    """
    if isinstance(f, FFmpegFile):
        return f.read(frames)
    out = np.empty((frames, f.channels), dtype=np.float32)
    with quiet_stderr(f.format == "MPEG"):
        n = sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", out.ctypes.data), frames)
        error = sf._snd.sf_error(f._file)
    reason = sf.LibsndfileError(error).error_string.split(":")[-1].strip() if error else ""
    return out[:n], reason


def _frames(f: _AudioFile, path: str | Path, block: int) -> Iterator[np.ndarray]:
    """``f``'s (n, C) float32 frames, ``block`` at a time, up to the end of its data or the
    first damage (a FLAC or MP3 file cut short is read up to the cut, as a WAV file is);
    AudioError naming ``path`` if no frame decodes, an AudioWarning if they stop well
    before the header's frame count (more than 2% and 0.1 s short: an MP3 header's count
    can be an estimate)."""
    total, reason = 0, ""
    while not reason:
        chunk, reason = _read(f, block)
        if len(chunk) == 0:
            break
        total += len(chunk)
        yield chunk
    if total == 0:
        raise AudioError(f"{path}: corrupt audio data ({reason})" if reason
                         else f"{path}: contains no audio samples")
    missing = f.frames - total
    if missing > max(0.02 * f.frames, 0.1 * f.samplerate):
        warnings.warn(AudioWarning(
            f"{path}: only {total / f.samplerate:.1f} s of the {f.frames / f.samplerate:.1f} s "
            f"its header gives could be read{f' ({reason})' if reason else ''}; cut short or "
            "damaged? What was read is used"), stacklevel=2)
    if f.format == "OGG" and (later := _later_ogg_streams(path)):
        warnings.warn(AudioWarning(
            f"{path}: {later + 1} OGG streams one after another (chained), of which only the "
            f"first ({total / f.samplerate:.1f} s) can be read without the ffmpeg program; "
            "install it (apt-get install ffmpeg) or split the file to transcribe the rest"),
            stacklevel=2)


def _later_ogg_streams(path: str | Path) -> int:
    """How many streams of the OGG file ``path`` begin after one has ended: a chained file
    (``cat a.ogg b.ogg``), of which libsndfile reads the first alone. Walks the page headers
    (27 bytes and a segment table each) without reading the pages."""
    later, ended = 0, False
    try:
        with open(path, "rb") as file:
            while len(header := file.read(27)) == 27 and header.startswith(b"OggS"):
                flags, segments = header[5], file.read(header[26])
                later += bool(flags & 0x02 and ended)  # the first page of a stream
                ended = ended or bool(flags & 0x04)  # the last page of a stream
                file.seek(sum(segments), os.SEEK_CUR)
    except OSError:  # gone since it was read: what was read stands
        pass
    return later


@dataclass(frozen=True)
class AudioSlice:
    """``duration`` seconds of an audio file from ``start`` (a Lhotse cut of a long
    recording), of channel ``channel`` (its index in the file; None: all, averaged)."""

    path: str | Path
    start: float
    duration: float
    channel: int | None = None

    def __str__(self) -> str:
        return f"{self.path} ({self.start:.2f}-{self.start + self.duration:.2f} s)"


def _file_of(path: str | Path | AudioSlice) -> str | Path:
    return path.path if isinstance(path, AudioSlice) else path


def audio_duration(path: str | Path | AudioSlice) -> float:
    """Duration in seconds from the header, without reading the samples (a slice's own,
    once its file opens and holds its start and channel)."""
    with _open(_file_of(path)) as f:
        if isinstance(path, AudioSlice):
            _check_slice(path, f)
            return path.duration
        return f.frames / f.samplerate


def load_audio(path: str | Path | AudioSlice, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whole file (up to the end of its data or the first damage), or a slice of one, ->
    (N,) float32 mono at ``target_rate``. Raises AudioError."""
    with _open(_file_of(path)) as f:
        samples = np.concatenate(list(_samples(f, path, _LOAD_BLOCK)))
        rate = f.samplerate
    return resample(finite(to_mono(samples), str(path)), rate, target_rate)


def _samples(f: _AudioFile, path: str | Path | AudioSlice, block: int) -> Iterator[np.ndarray]:
    """The (n, C) frames of the file or slice ``path`` (opened as ``f``), ``block`` at a time."""
    if isinstance(path, AudioSlice):
        return _slice_frames(f, path, block)
    return _frames(f, path, block)


def _check_slice(part: AudioSlice, f: _AudioFile) -> int:
    """-> the frame ``part`` starts at in ``f``; AudioError unless ``f`` holds it."""
    first = round(part.start * f.samplerate)
    if not 0 <= first < f.frames:
        raise AudioError(f"{part}: starts outside the file ({f.frames / f.samplerate:.2f} s "
                         "long)")
    if part.channel is not None and not 0 <= part.channel < f.channels:
        raise AudioError(f"{part}: no channel {part.channel} (the file has {f.channels})")
    return first


def _slice_frames(f: _AudioFile, part: AudioSlice, block: int) -> Iterator[np.ndarray]:
    """``part``'s frames of ``f`` (of its channel alone where it names one), ``block`` at a
    time, up to its end, the file's, or the first damage; AudioError naming it if none
    decodes."""
    first = _check_slice(part, f)
    try:
        f.seek(first)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{part}: cannot seek to its start ({error})") from None
    left, total, reason = max(1, round(part.duration * f.samplerate)), 0, ""
    while left > 0 and not reason:
        chunk, reason = _read(f, min(block, left))
        if len(chunk) == 0:
            break
        left, total = left - len(chunk), total + len(chunk)
        yield chunk if part.channel is None else chunk[:, part.channel : part.channel + 1]
    if total == 0:
        raise AudioError(f"{part}: corrupt audio data{f' ({reason})' if reason else ''}")


def stream_audio(
    path: str | Path | AudioSlice, block_seconds: float = 30.0, target_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Yield consecutive (n,) float32 mono blocks at ``target_rate``, reading the file (or
    slice) block by block so memory stays bounded for hour-long recordings (up to the end
    of its data or the first damage, as ``load_audio``)."""
    with _open(_file_of(path)) as f:
        rate = f.samplerate
        resampler = None if rate == target_rate else soxr.ResampleStream(
            rate, target_rate, 1, dtype="float32", quality="HQ"
        )
        for chunk in _samples(f, path, max(1, int(block_seconds * rate))):
            mono = finite(to_mono(chunk), str(path))
            yield mono if resampler is None else resampler.resample_chunk(mono)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
