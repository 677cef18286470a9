"""conformer-asr: Conformer speech recognition.

    >>> import conformer_asr
    >>> conformer_asr.load_model().transcribe(["examples/weather.wav"])  # doctest: +SKIP

The names below are imported when first used, so that importing the package (as the
command line does before it reads its arguments) does not import torch: ``conformer-asr
--help`` answers at once, and Ctrl-C while torch loads ends the command quietly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audio.io import AudioError
    from .decoding.search import DecodingOptions
    from .inference.transcriber import Transcriber, Transcript, Word, load_model
    from .malloc import keep_freed_memory

__version__ = "0.1.0"
_MODULE_OF = {
    "AudioError": ".audio.io",
    "DecodingOptions": ".decoding.search",
    "Transcriber": ".inference.transcriber",
    "Transcript": ".inference.transcriber",
    "Word": ".inference.transcriber",
    "load_model": ".inference.transcriber",
    "keep_freed_memory": ".malloc",
}
__all__ = ["AudioError", "DecodingOptions", "Transcriber", "Transcript", "Word",
           "keep_freed_memory", "load_model", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
