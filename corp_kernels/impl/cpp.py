"""C++ (OpenMP) CPU backend: thin calls into the `corp_cpu` torch ops of csrc/cpu/noise_ops.cpp."""

from __future__ import annotations

import torch

from .._chunked import chunked_linear, forced_strategy


def _ops():
    return torch.ops.corp_cpu


def philox4x32_10(counters, keys):
    return _ops().philox4x32_10(counters, keys)


def gaussian_noise(shape, seed, offset, dtype, device):
    out = torch.empty(shape, dtype=dtype, device=device)
    _ops().noise_fill_(out, seed, offset, 1.0, False)
    return out


def add_noise_(tensor, seed, alpha, offset):
    _ops().noise_fill_(tensor, seed, offset, alpha, True)


def weighted_noise_sum(shape, seeds, weights, offset, device):
    return _ops().weighted_noise_sum(list(shape), seeds, weights, offset)


# perturbed_linear / population_linear: the C++ kernel perturbs cache-sized panels of W and
# regenerates them for every call; from CHUNKED_MIN_TOKENS tokens per member on, the chunked
# strategy (corp_kernels._chunked: W + sigma*eps in CHUNK_BYTES blocks, then the BLAS) is faster.
# Measured on 2 x86-64 cores, fp32 (benchmarks/results/cpu-*.md), time of materialize-then-GEMM
# over ours: at T = 256 the C++ kernel 1.24-1.98x, chunked 1.26-2.10x; at T = 512 the C++ kernel
# 0.78-1.45x, chunked 0.95-1.49x; at T = 1024 the C++ kernel 0.68-1.03x, chunked 1.00-1.26x.
CHUNKED_MIN_TOKENS = 512
CHUNK_BYTES = 4 << 20


def choose_strategy(tokens: int) -> str:
    return forced_strategy() or ("chunked" if tokens >= CHUNKED_MIN_TOKENS else "fused")


def _perturbed_copy(out, src, seed, sigma, offset):
    _ops().perturbed_copy_(out, src, seed, offset, sigma)  # one pass: read W, write the block


def _chunked(x, weight, bias, seeds, sigmas, offset, population):
    # float32 blocks and products, as in the C++ kernel: fp16/bf16 inputs are rounded once, at
    # the output, whichever strategy ran.
    return chunked_linear(x, weight, bias, seeds, sigmas, offset, _perturbed_copy, CHUNK_BYTES,
                          compute_dtype=torch.float32, population=population)


def perturbed_linear(x, weight, bias, seed, sigma, offset):
    K = weight.shape[1]
    if x.numel() and weight.numel() and choose_strategy(x.numel() // K) == "chunked":
        return _chunked(x, weight, bias, [seed], [sigma], offset, population=False)
    return _ops().perturbed_linear(x, weight, bias, seed, offset, sigma)


def population_linear(x, weight, bias, seeds, sigmas, offset):
    K = weight.shape[1]
    if x.numel() and weight.numel() and \
            choose_strategy(x.numel() // (K * x.shape[0])) == "chunked":
        return _chunked(x, weight, bias, seeds.tolist(), sigmas.tolist(), offset, population=True)
    return _ops().population_linear(x, weight, bias, seeds, sigmas, offset)


def noise_sketch(shape, seeds, weights, test_matrix, left, offset):
    rows, cols = shape
    return _ops().noise_sketch(rows, cols, seeds, weights, test_matrix, left, offset)


def noise_gram(numel, seeds, offset, device):
    return _ops().noise_gram(numel, seeds, offset)
