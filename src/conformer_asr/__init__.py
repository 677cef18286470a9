"""conformer-asr: Conformer speech recognition.

    >>> import conformer_asr
    >>> conformer_asr.load_model().transcribe(["examples/weather.wav"])  # doctest: +SKIP
"""

from .inference.transcriber import Transcriber, load_model

__version__ = "0.1.0"
__all__ = ["Transcriber", "load_model", "__version__"]
