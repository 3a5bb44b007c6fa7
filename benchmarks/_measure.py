"""Timing helpers: interleaved runs, their medians, and paired ratios with an interval.
(Memory: corp_kernels._memory.)

On a shared 2-core machine two calls of the same code, timed side by side, differ by up to 10-15%
from one median to the next; a ratio of 0.97 between two ways of doing the same work is then a tie,
not a loss. paired_ratio_interval says which: it bootstraps the median of the per-round ratios.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                      warmup: int = 3, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of each call of each fn, `repeats` rounds. Every round runs each fn once, in an
    order shuffled per round (seeded), so machine noise and the state one call leaves for the
    next (caches, the allocator's heap) fall on all fns alike rather than on a fixed neighbour."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    order = list(fns)
    shuffle = random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                        warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each fn (see interleaved_times)."""
    return medians(interleaved_times(fns, repeats, device, warmup))


def paired_ratio_interval(numerator: Sequence[float], denominator: Sequence[float],
                          level: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of numerator[i] / denominator[i] over rounds
    (the two timed in the same round). An interval containing 1 means no difference shown."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"numerator and denominator must be non-empty and of equal length, got "
                         f"{len(numerator)} and {len(denominator)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    cut = int((1 - level) / 2 * resamples)  # draws left out below lo and above hi alike
    return boot[cut], boot[resamples - 1 - cut]


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-round ratios: the point paired_ratio_interval brackets."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))
