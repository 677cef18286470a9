"""conformer-asr: Conformer speech recognition.

    >>> import conformer_asr
    >>> conformer_asr.load_model().transcribe(["examples/weather.wav"])  # doctest: +SKIP
"""

from .audio.io import AudioError
from .decoding.search import DecodingOptions
from .inference.transcriber import Transcriber, Transcript, Word, load_model
from .malloc import keep_freed_memory

__version__ = "0.1.0"
__all__ = ["AudioError", "DecodingOptions", "Transcriber", "Transcript", "Word",
           "keep_freed_memory", "load_model", "__version__"]
