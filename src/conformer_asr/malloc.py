"""Keep freed memory in the process for the next tensor, instead of handing it back.

glibc's malloc gives every block above its mmap threshold (128 KiB at start, raised as
such blocks are freed, at most 32 MiB) pages of its own, returned to the system when the
block is freed, and hands back the top of the heap when more than its trim threshold is
free there. A forward pass allocates and frees tensors of megabytes by the hundred, so
the next one touches fresh pages again, each a page fault: 167,000 of them in one
int8 forward of the M encoder at batch 8 (10 s), a fifth of its CPU time in the kernel.
With the mmap threshold fixed at its maximum and a trim threshold of 1 GiB, freed
blocks stay in the heap and the next tensors reuse them: 9,500 faults, and the forward
took 754 against 1030 ms, and the float32 one 1144 against 1279 ms (one run each, an AMD
EPYC VM, 2 threads, 2026-12-04; the benchmarks give more). The process keeps the memory
its largest step used, as torch's CUDA allocator keeps its cache.

Called by the command line for every command and by the benchmarks; an application that
embeds the package calls ``conformer_asr.keep_freed_memory()`` once itself. No-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Sets glibc's mmap and trim thresholds as above, once per process; True where it
    could (glibc), False elsewhere (musl, macOS, Windows), which changes nothing."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
