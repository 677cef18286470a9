"""Long-lived synthesisers: one set per worker process, loaded once, reused for every line.

* espeak-ng: the shared library through ctypes, synchronous mode with a callback that
  collects the samples (about 500x real time).
* flite: the shared library through ctypes, ``flite_text_to_wave`` on voices registered
  once (diphone voices ~400-900x, clustergen ~40x real time). Before each call a voice's
  ``f0_shift`` and ``stretch`` set flite's ``f0_shift`` and scale the flite voice's own
  ``duration_stretch`` (1.1 for kal, 1 for the others).
* festival: one ``festival --pipe`` process per voice, fed Scheme commands on stdin;
  each command writes the wave to stdout and then prints a marker, so the reply is read
  up to the marker (diphone ~150x, HTS ~15x real time). A process that dies or hangs is
  restarted on the next utterance.

Every engine returns ``(samples, sample_rate)``: float32 mono in [-1, 1] at the engine's
own rate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import select
import subprocess
import time
from typing import Any

import numpy as np
import soundfile as sf

from .voices import FESTIVAL_VOICES, Voice, espeak_name


class EngineError(RuntimeError):
    """A synthesiser failed; the message says which and why."""


def _load_library(name: str) -> ctypes.CDLL:
    path = ctypes.util.find_library(name)
    if path is None:
        raise EngineError(f"shared library lib{name} not found")
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


class EspeakEngine:
    """libespeak-ng in synchronous mode; voices are switched per call (cheap)."""

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    RATE, PITCH = 1, 3  # espeak_PARAMETER values
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.c_void_p)

    def __init__(self) -> None:
        self._lib = lib = _load_library("espeak-ng")
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                                 self.INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EngineError("espeak-ng failed to initialise (espeak-ng-data missing?)")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples: Any, count: int, _events: int | None) -> int:
        """espeak-ng's synth callback: keep a copy of each chunk of 16-bit samples."""
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # continue

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        lib = self._lib
        name = espeak_name(voice)
        if lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise EngineError(f"espeak-ng has no voice {name!r}")
        lib.espeak_SetParameter(self.RATE, voice.rate, 0)
        lib.espeak_SetParameter(self.PITCH, voice.pitch, 0)
        self._chunks.clear()
        data = text.encode()
        if lib.espeak_Synth(data, len(data) + 1, 0, self.POS_CHARACTER, 0, self.CHARS_UTF8,
                            None, None) != 0:
            raise EngineError(f"espeak-ng failed on {text!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768, self.sample_rate


class _FliteWave(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int),
                ("num_samples", ctypes.c_int), ("num_channels", ctypes.c_int),
                ("samples", ctypes.POINTER(ctypes.c_short))]


class FliteEngine:
    """libflite; each voice's library is loaded and registered on first use."""

    def __init__(self) -> None:
        self._lib = lib = _load_library("flite")
        lib.flite_init()
        lib.flite_text_to_wave.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        lib.flite_text_to_wave.restype = ctypes.POINTER(_FliteWave)
        lib.delete_wave.argtypes = [ctypes.POINTER(_FliteWave)]
        lib.flite_feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.get_param_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        lib.get_param_float.restype = ctypes.c_float
        self._voices: dict[str, int] = {}  # name -> cst_voice pointer
        self._stretch: dict[str, float] = {}  # name -> the voice's own duration_stretch

    @staticmethod
    def _features(handle: int) -> ctypes.c_void_p:
        """The voice's cst_features (cst_voice is {name, features, ...})."""
        return ctypes.c_void_p.from_address(handle + ctypes.sizeof(ctypes.c_void_p))

    def _voice(self, name: str) -> int:
        if name not in self._voices:
            register = getattr(_load_library(f"flite_cmu_us_{name}"), f"register_cmu_us_{name}")
            register.argtypes = [ctypes.c_char_p]
            register.restype = ctypes.c_void_p
            handle = register(None)
            if not handle:
                raise EngineError(f"flite could not register voice {name!r}")
            self._voices[name] = handle
            self._stretch[name] = self._lib.get_param_float(self._features(handle),
                                                            b"duration_stretch", 1.0)
        return self._voices[name]

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        handle = self._voice(voice.name)
        features = self._features(handle)
        self._lib.flite_feat_set_float(features, b"f0_shift", voice.f0_shift)  # 1 when unset
        self._lib.flite_feat_set_float(features, b"duration_stretch",
                                       self._stretch[voice.name] * voice.stretch)
        wave = self._lib.flite_text_to_wave(text.encode(), handle)
        if not wave:
            raise EngineError(f"flite failed on {text!r}")
        try:
            w = wave.contents
            count = w.num_samples * w.num_channels
            samples = np.ctypeslib.as_array(w.samples, shape=(count,)) if count else np.zeros(0)
            samples = samples.reshape(-1, w.num_channels).mean(axis=1)
            return (samples / 32768).astype(np.float32), w.sample_rate
        finally:
            self._lib.delete_wave(wave)


class FestivalProcess:
    """One ``festival --pipe`` process speaking with one voice, started on first use.

    Each utterance's RIFF wave comes back on festival's stdout, followed by a marker line.
    """

    MARKER = "@@synth-done@@"  # printed on a line of its own after each reply
    REPLY_END = MARKER.encode() + b"\n"
    STARTUP_TIMEOUT = 60.0
    TIMEOUT = 60.0  # per utterance; HTS takes ~0.1 s per word

    def __init__(self, voice_name: str):
        self.command = FESTIVAL_VOICES[voice_name][0]
        self._process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen(["festival", "--pipe"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._process = process
        self._run(f"({self.command})", self.STARTUP_TIMEOUT)
        return process

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _run(self, scheme: str, timeout: float) -> bytes:
        """Send one command; return what festival printed before the marker."""
        process = self._process or self._start()
        try:
            process.stdin.write(f'{scheme}\n(format t "{self.MARKER}\\n")\n(fflush nil)\n'
                                .encode())
            process.stdin.flush()
            return self._read_reply(process, time.monotonic() + timeout)
        except (OSError, EngineError) as error:
            self.close()
            raise EngineError(f"festival ({self.command}): {error}") from error

    def _read_reply(self, process: subprocess.Popen, deadline: float) -> bytes:
        """Read stdout until it ends with the marker (festival then waits for input)."""
        fd = process.stdout.fileno()
        output = b""
        while not output.endswith(self.REPLY_END):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise EngineError("timed out")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EngineError(f"exited: {output.decode(errors='replace')[-500:]}")
            output += chunk
        return output[: -len(self.REPLY_END)]

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        output = self._run(f'(utt.save.wave (utt.synth (Utterance Text "{escaped}")) "-" '
                           "'riff)", self.TIMEOUT)
        start = output.find(b"RIFF")
        if start < 0:
            raise EngineError(f"festival ({self.command}) failed on {text!r}: "
                              f"{output.decode(errors='replace')[-300:]}")
        size = 8 + int.from_bytes(output[start + 4:start + 8], "little")
        samples, rate = sf.read(io.BytesIO(output[start:start + size]), dtype="float32",
                                always_2d=True)
        return samples.mean(axis=1), rate


class Synthesiser:
    """All engines of one worker, each created on first use and kept until ``close``."""

    def __init__(self) -> None:
        self._espeak: EspeakEngine | None = None
        self._flite: FliteEngine | None = None
        self._festival: dict[str, FestivalProcess] = {}

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """``(samples, sample_rate)`` of ``text`` spoken by ``voice``."""
        if voice.engine == "espeak":
            self._espeak = self._espeak or EspeakEngine()
            return self._espeak.synthesize(voice, text)
        if voice.engine == "flite":
            self._flite = self._flite or FliteEngine()
            return self._flite.synthesize(voice, text)
        if voice.engine == "festival":
            festival = self._festival.setdefault(voice.name, FestivalProcess(voice.name))
            return festival.synthesize(text)
        raise EngineError(f"unknown engine {voice.engine!r}")

    def close(self) -> None:
        """Stop the festival processes."""
        for process in self._festival.values():
            process.close()
        self._festival.clear()
