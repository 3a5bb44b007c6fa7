"""Timing and memory helpers: medians of interleaved runs, peak bytes from the torch profiler."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, run round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def allocation_profile(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak live bytes, largest single allocation) of the CPU allocations fn makes, from the
    profiler's memory events in time order (tensors alive before fn are not counted). Run with one
    thread: the profiler sees allocations of the calling thread only."""
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
