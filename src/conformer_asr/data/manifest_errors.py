"""What reading a manifest raises or warns about. Apart from ``manifest`` and
``inference.evaluate`` so that the command line can catch them without importing Lhotse,
which took 0.2 s of every ``conformer-asr transcribe``."""


class ManifestError(Exception):
    """A manifest cannot be read or written at all; the message names the file."""


class ReferenceWarning(UserWarning):
    """A manifest's reference text that is not scored as it is written."""
