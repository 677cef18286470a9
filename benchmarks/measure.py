"""How things are measured: interleaved wall-clock medians, peak tensor memory, FLOPs,
and the machine's matmul peak (the denominator of MFU).

Everything runs on torch's default device (``torch.set_default_device``): the CPU, or a
GPU, where times wait for the GPU to finish and memory is read from CUDA's allocator."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch._C._profiler import _EventType, _ProfilerEvent
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from conformer_asr.stderr import quiet_stderr

Call = Callable[[], object]


def no_reset() -> None:
    """The default ``reset``: nothing to undo between calls."""


def on_gpu() -> bool:
    """Whether the benchmarks run on a CUDA device (the default device)."""
    return torch.get_default_device().type == "cuda"


def _synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def wall_seconds(call: Call) -> float:
    """Wall-clock seconds of one ``call()``, until the device has finished it."""
    _synchronize()
    start = time.perf_counter()
    call()
    _synchronize()
    return time.perf_counter() - start


def interleaved_medians(
    fast: Call, baseline: Call, repeats: int, reset: Call = no_reset
) -> tuple[float, float]:
    """Median wall-clock seconds of ``fast()`` and ``baseline()``.

    After one untimed warm-up call of each, the two run alternately (fast first
    on even repeats, baseline first on odd ones), so that a change in machine
    load during the run slows both alike. ``reset()`` runs, untimed, before
    every call (e.g. to drop gradients of the previous call).
    """
    calls = (fast, baseline)
    times: tuple[list[float], list[float]] = ([], [])
    for call in calls:
        reset()
        call()
    for repeat in range(repeats):
        for which in ((0, 1) if repeat % 2 == 0 else (1, 0)):
            reset()
            times[which].append(wall_seconds(calls[which]))
    return statistics.median(times[0]), statistics.median(times[1])


def _walk(events: list[_ProfilerEvent]) -> Iterator[_ProfilerEvent]:
    for event in events:
        yield event
        yield from _walk(event.children)


def peak_bytes(call: Call) -> int:
    """Peak bytes of tensor memory held during ``call()`` beyond what was held before it.

    Tensors that exist before the call (inputs, weights) are not counted; everything the
    call allocates (activations, saved tensors, gradients, outputs) is. On a GPU this is
    CUDA's allocator's peak. On the CPU, the profiler (``profile_memory=True``) records
    every allocation and free that goes through PyTorch's allocator, with its size
    (negative for frees); the peak is the largest running sum of those sizes in time
    order. Memory that libraries allocate behind PyTorch's back (oneDNN or BLAS scratch
    space) is not seen. The allocation records are read from the profiler's event tree, a
    private but long-standing part of ``torch.profiler``.
    """
    if on_gpu():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # quiet: the profiler's C++ side prints a line on stderr as it starts and stops
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = prof.profiler.kineto_results.experimental_event_tree()
    allocations = sorted(
        (e for e in _walk(events) if e.tag == _EventType.Allocation),
        key=lambda e: e.start_time_ns,
    )
    running = peak = 0
    for event in allocations:
        running += event.extra_fields.alloc_size
        peak = max(peak, running)
    return peak


def count_flops(call: Call) -> int:
    """Floating-point operations of ``call()`` (2 per multiply-add) in matmuls and
    convolutions, counted by ``torch.utils.flop_counter.FlopCounterMode``; forward and,
    if ``call`` runs it, backward."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def matmul_peak_flops(size: int, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """The device's FLOP/s for a (size, size) @ (size, size) ``torch.mm`` in ``dtype``,
    best of ``repeats`` after a warm-up, with the current thread count."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = min(wall_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best
