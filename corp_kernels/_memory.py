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
    # self_ sizes: an op's event also carries its children's allocations. A buffer a child op
    # allocates and its parent frees shows up as the parent's negative self size: placed at the
    # parent's start it would cancel the allocation before it happened (an op's 1.3 MB buffer
    # read as a 2 KB peak), so net allocations count at an event's start and net frees at its end.
    changes = sorted((e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
                      e.self_cpu_memory_usage)
                     for e in prof.events() if e.self_cpu_memory_usage != 0)
    live = peak = largest = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
        largest = max(largest, change)
    return peak, largest


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (or since reset_peak_rss()).

    Reads VmHWM, the high-water mark of this process's own address space. Not ru_maxrss: Linux
    carries the forking parent's resident size into a child's ru_maxrss across exec, so a small
    worker started by a big parent reports the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Restart the high-water mark at the current resident size (Linux >= 4.0); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
