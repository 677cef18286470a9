"""Silencing what C libraries print on the process's stderr, past ``sys.stderr``."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()


@contextmanager
def quiet_stderr(needed: bool = True) -> Iterator[None]:
    """File descriptor 2 goes to the null device inside, if ``needed``: C code (libmpg123's
    notes on damaged data, the torch profiler's start and stop lines) writes there, past
    ``sys.stderr``. Restored on leaving, error or not. One thread at a time, as fd 2 is the
    process's: what other threads write to stderr meanwhile is lost, so keep it short."""
    if not needed:
        yield
        return
    with _LOCK, open(os.devnull, "wb") as null:
        if sys.stderr is not None:
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # fd 2 closed (a daemon's): nothing to silence
            saved = -1
        if saved < 0:
            yield
            return
        try:
            os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
