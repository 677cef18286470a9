"""Writing a file so that readers, and a run killed mid-write, never see half of it."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it into place:
    ``path`` holds either its old contents or all of ``data``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
