"""The "chunked" strategy of perturbed_linear / population_linear, shared by the backends.

W + sigma * eps is materialized a block of rows at a time into one reused buffer, and each block
goes to the vendor GEMM (cuBLAS, or the CPU BLAS) that writes its columns of y in place. The noise
is generated once per member and call, whatever the token count, where a fused kernel regenerates
it for every block of tokens: with many tokens per member this is the faster way on every device
measured (benchmarks/results/). Memory: one buffer of at most `chunk_bytes`, never W-sized unless
W is that small.

Each backend supplies `perturbed_copy(out, src, seed, sigma, offset)`: out = src + sigma * eps(seed)
at stream positions offset.., rounded once to out's dtype.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import torch

STRATEGIES = ("fused", "chunked")
STRATEGY_ENV = "CORP_KERNELS_LINEAR_STRATEGY"


def forced_strategy() -> str | None:
    """The strategy CORP_KERNELS_LINEAR_STRATEGY forces, if any (read per call, so benchmarks and
    tests can switch it)."""
    forced = os.environ.get(STRATEGY_ENV)
    if not forced:
        return None
    if forced not in STRATEGIES:
        raise ValueError(f"{STRATEGY_ENV} must be one of {STRATEGIES}, got {forced!r}")
    return forced


@contextlib.contextmanager
def strategy_forced(strategy: str | None):
    """Run a block under CORP_KERNELS_LINEAR_STRATEGY=strategy (None: the dispatchers' own rules),
    then restore whatever was set before: for benchmarks that compare the strategies."""
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be None or one of {STRATEGIES}, got {strategy!r}")
    saved = os.environ.pop(STRATEGY_ENV, None)
    if strategy is not None:
        os.environ[STRATEGY_ENV] = strategy
    try:
        yield
    finally:
        os.environ.pop(STRATEGY_ENV, None)
        if saved is not None:
            os.environ[STRATEGY_ENV] = saved


def chunk_rows(n_rows: int, n_cols: int, element_size: int, chunk_bytes: int, align: int) -> int:
    """Rows per chunk: as many as fit in chunk_bytes, rounded down to a multiple of `align` (an
    unaligned leading dimension sends cuBLAS to slow kernels), at least 1, at most n_rows."""
    rows = chunk_bytes // max(1, n_cols * element_size)
    if rows >= align:
        rows -= rows % align
    return max(1, min(n_rows, rows))


def chunked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   seeds: Sequence[int], sigmas: Sequence[float], offset: int,
                   perturbed_copy: Callable, chunk_bytes: int, align: int = 1,
                   compute_dtype: torch.dtype | None = None,
                   population: bool = True) -> torch.Tensor:
    """y[p] = x[p] @ (W + sigmas[p] * eps(seeds[p])).T + bias for x [P, ..., K] -> [P, ..., N];
    with population=False, x is one member's [..., K] (seeds and sigmas of length 1).

    compute_dtype: the dtype of the perturbed blocks and the product (default: x's). The CPU
    backend computes in float32, as its fused kernel does, so that both strategies agree.
    A single member's output is a fresh tensor, never a view: a view returned through the op
    costs a copy (0.1 ms for 1024 x 576 floats on 2 CPU cores)."""
    K, N = weight.shape[1], weight.shape[0]
    out_dtype = x.dtype
    dtype = compute_dtype or x.dtype
    if dtype != x.dtype:
        x = x.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    rows = chunk_rows(N, K, torch.finfo(dtype).bits // 8, chunk_bytes, align)
    buffer = torch.empty((rows, K), dtype=dtype, device=weight.device)
    if rows == N and not population:
        # One chunk, one member: F.linear, whose CPU path (oneDNN) beat torch.mm into a view
        # by 5-8% at 1024 x 576 x 576.
        perturbed_copy(buffer, weight, int(seeds[0]), float(sigmas[0]), offset)
        y = torch.nn.functional.linear(x, buffer, bias)
        return y if y.dtype == out_dtype else y.to(out_dtype)
    members = x.shape[0] if population else 1
    y = torch.empty((*x.shape[:-1], N), dtype=dtype, device=x.device)
    for p in range(members):
        seed, sigma = int(seeds[p]), float(sigmas[p])
        x2 = (x[p] if population else x).reshape(-1, K)
        y2 = (y[p] if population else y).view(-1, N)
        for n0 in range(0, N, rows):
            n1 = min(N, n0 + rows)
            block = buffer[:n1 - n0]
            perturbed_copy(block, weight[n0:n1], seed, sigma, offset + n0 * K)
            # Written straight into y's columns n0:n1: a strided view whose row stride the BLAS
            # takes as its leading dimension (no copy of the product).
            out = y2[:, n0:n1]
            if bias is None:
                torch.mm(x2, block.t(), out=out)
            else:
                torch.addmm(bias[n0:n1], x2, block.t(), out=out)
    return y if y.dtype == out_dtype else y.to(out_dtype)
