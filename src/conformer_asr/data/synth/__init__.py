"""Synthetic multi-voice speech corpus: ``conformer-asr synth`` (see ``build`` for the layout)."""

from .build import SynthConfig, build, build_corpus
from .command import add_synth_arguments, run_synth
from .store import SynthError

__all__ = ["SynthConfig", "SynthError", "add_synth_arguments", "build", "build_corpus",
           "run_synth"]
