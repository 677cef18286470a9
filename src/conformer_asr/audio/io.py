"""Audio loading: wav/flac/ogg/mp3/... at any rate and channel count -> 16 kHz mono."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000


class AudioError(Exception):
    """A file could not be used as audio; the message names the file and says why."""


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
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise AudioError(f"{name}: not audio: {type(array).__name__}")
    if array.ndim not in (1, 2) or array.size == 0:
        raise AudioError(f"{name}: expected (samples,) or (samples, channels) audio, got "
                         f"shape {array.shape}")
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T  # (C, N)
    if array.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        array = (array.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(array.dtype, np.signedinteger):
        array = array.astype(np.float32) / -float(np.iinfo(array.dtype).min)
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


def _open(path: str | Path) -> sf.SoundFile:
    path = Path(path)
    if not path.is_file():
        reason = "a folder, not an audio file" if path.is_dir() else "no such file"
        raise AudioError(f"{path}: {reason}")
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        reason = str(error).split(":")[-1].strip() or "unreadable"
        raise AudioError(f"{path}: not a readable audio file ({reason})") from None


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header, without reading the samples."""
    with _open(path) as f:
        return f.frames / f.samplerate


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whole file -> (N,) float32 mono at ``target_rate``. Raises AudioError."""
    with _open(path) as f:
        try:
            samples = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{path}: corrupt audio data ({error})") from None
        rate = f.samplerate
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    return resample(finite(to_mono(samples), str(path)), rate, target_rate)


def stream_audio(
    path: str | Path, block_seconds: float = 30.0, target_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Yield consecutive (n,) float32 mono blocks at ``target_rate``, reading the file
    block by block so memory stays bounded for hour-long recordings."""
    with _open(path) as f:
        if f.frames == 0:
            raise AudioError(f"{path}: contains no audio samples")
        rate = f.samplerate
        resampler = None if rate == target_rate else soxr.ResampleStream(
            rate, target_rate, 1, dtype="float32", quality="HQ"
        )
        block = max(1, int(block_seconds * rate))
        try:
            for chunk in f.blocks(blocksize=block, dtype="float32", always_2d=True):
                mono = finite(to_mono(chunk), str(path))
                yield mono if resampler is None else resampler.resample_chunk(mono)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{path}: corrupt audio data ({error})") from None
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
