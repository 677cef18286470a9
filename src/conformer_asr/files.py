"""Writing a file so that readers, and a run killed mid-write, never see half of it."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it into place:
    ``path`` holds either its old contents or all of ``data``. Each call's temporary file
    has a name of its own, so processes writing the same file at once (DDP ranks) do not
    collide: the last rename wins. An error names ``path``, not the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise type(error)(error.errno, error.strerror, str(path)) from None
