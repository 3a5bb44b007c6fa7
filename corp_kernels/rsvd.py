"""Randomized SVD of a weighted noise sum (Halko, Martinsson, Tropp 2011).

Streaming (the default): the [m, n] sum Delta = sum_i w_i eps_i is never materialized; each pass
over it is one noise_sketch call, which regenerates every member's noise tile by tile. The cost is
2 + 2 * power_iters passes over K noises; memory is O((m + n) * (rank + oversample)).

With `memory_budget_bytes` at least Delta's fp32 size, Delta is built once (one streaming
weighted_noise_sum pass) and the passes become plain matmuls: about (2 + 2 * power_iters) times less
noise generation for m * n * 4 bytes of memory. One layer's Delta is often small enough for that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _validation as V
from .ops import gaussian_noise, noise_sketch, weighted_noise_sum

# Key of the Gaussian test matrix Omega when the caller does not give one. Any fixed value works;
# it only has to be reproducible.
DEFAULT_SKETCH_SEED = 0x5EED_5C37C4


def randomized_svd_noise(shape: Sequence[int], seeds, weights, rank: int, *, oversample: int = 10,
                         power_iters: int = 2, offset: int = 0,
                         sketch_seed: int = DEFAULT_SKETCH_SEED, device="cpu",
                         backend: str | None = None, memory_budget_bytes: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` factors (U [m, rank], S [rank], V [n, rank]) of sum_i weights[i] * eps(seeds[i]).

    Delta ~= U @ diag(S) @ V.T. `power_iters` subspace iterations sharpen the range estimate when
    the spectrum is flat (as it is for the isotropic part of a noise sum).
    """
    shape = V.check_shape(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be 2-D [rows, cols], got {shape}")
    m, n = shape
    for name, value, low in (("rank", rank, 1), ("oversample", oversample, 0),
                             ("power_iters", power_iters, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if rank > min(m, n):
        raise ValueError(f"rank={rank} exceeds min(rows, cols) = {min(m, n)} for shape {shape}")
    width = min(rank + oversample, m, n)
    kwargs = dict(offset=offset, backend=backend)

    if memory_budget_bytes is not None and m * n * 4 <= memory_budget_bytes:
        delta = weighted_noise_sum(shape, seeds, weights, device=device, **kwargs)

        def times_delta(matrix):
            return delta @ matrix

        def delta_t_times(matrix):
            return delta.T @ matrix
    else:
        def times_delta(matrix):  # Delta @ matrix, matrix [n, width]
            return noise_sketch(shape, seeds, weights, matrix, side="right", **kwargs)

        def delta_t_times(matrix):  # Delta.T @ matrix, matrix [m, width], via (matrix.T @ Delta).T
            return noise_sketch(shape, seeds, weights, matrix.T.contiguous(), side="left",
                                **kwargs).T

    omega = gaussian_noise((n, width), sketch_seed, device=device)
    q = torch.linalg.qr(times_delta(omega)).Q
    for _ in range(power_iters):
        z = torch.linalg.qr(delta_t_times(q)).Q
        q = torch.linalg.qr(times_delta(z)).Q
    b = delta_t_times(q).T  # [width, n] = Q.T @ Delta
    u_b, s, vh = torch.linalg.svd(b, full_matrices=False)
    return (q @ u_b)[:, :rank], s[:rank], vh[:rank].T
