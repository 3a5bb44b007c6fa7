"""Measuring what an op allocates, for the no-W-sized-buffer tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch


def allocation_profile(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak live bytes, largest single allocation) of the CPU allocations fn makes, from the
    profiler's memory events in time order (tensors alive before fn are not counted).

    Runs fn with one thread: the profiler records allocations of the calling thread only, so a
    parallel kernel's per-thread buffers are all visible only when its loop runs inline.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            fn()
    finally:
        torch.set_num_threads(threads)
    # self_ sizes: an op's event also carries its children's allocations.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0),
                    key=lambda e: e.time_range.start)
    live = peak = largest = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
        largest = max(largest, e.self_cpu_memory_usage)
    return peak, largest
