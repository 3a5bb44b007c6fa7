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
# regenerates them for every call. The chunked strategy (corp_kernels._chunked: W + sigma*eps in
# CHUNK_BYTES blocks, then the BLAS) is faster in two cases, measured on 2 x86-64 cores, fp32
# (benchmarks/results/cpu-*.md; time of materialize-then-GEMM over ours):
# - From CHUNKED_MIN_TOKENS tokens per member on, whatever W's size: at T = 256 the C++ kernel
#   1.24-1.98x, chunked 1.26-2.10x; at T = 512 the C++ kernel 0.78-1.45x, chunked 0.95-1.49x; at
#   T = 1024 the C++ kernel 0.68-1.03x, chunked 1.00-1.26x.
# - One member whose float32 W fits one chunk: one pass of the generator into a buffer of W's size
#   (4 MiB at most), then one GEMM, where the panel kernel makes many small products. It ties with
#   the panel kernel or beats it at every token count, and it never lost to materialize-then-GEMM
#   where the panel kernel did. Benchmark table (columns fused_ratio, chunked_ratio), two runs:
#   576 x 576 at T = 1-128, kernel 0.97-1.16x and 1.03-1.42x, chunked 1.09-1.25x and 1.18-1.39x;
#   at T = 1024 kernel 0.75-0.78x, chunked 1.01-1.05x; 1536 x 576 at T = 4-128, kernel 1.06-1.50x,
#   chunked 1.09-1.45x (1024 x 1024, measured apart: kernel 1.02-1.22x, chunked 1.11-1.30x). At
#   2048 x 576 (two chunks) the kernel wins below T = 512 (1.07-1.50x against 1.07-1.19x), so W
#   larger than a chunk stays fused, with no W-sized buffer. A population keeps the panel kernel:
#   P = 8, T = 16, 576 x 576 1.20-1.30x against chunked 1.16-1.18x, 2048 x 2048 2.01-2.08x against
#   1.66-1.78x.
CHUNKED_MIN_TOKENS = 512
CHUNK_BYTES = 4 << 20


def choose_strategy(tokens: int, weight_numel: int, members: int | None = None) -> str:
    """fused or chunked for `tokens` tokens per member, a W of `weight_numel` elements (computed
    in float32 whatever its dtype), and `members` members (None: perturbed_linear's one)."""
    forced = forced_strategy()
    if forced:
        return forced
    if tokens >= CHUNKED_MIN_TOKENS:
        return "chunked"
    if members is None and weight_numel * 4 <= CHUNK_BYTES:
        return "chunked"
    return "fused"


def _perturbed_copy(out, src, seed, sigma, offset):
    _ops().perturbed_copy_(out, src, seed, offset, sigma)  # one pass: read W, write the block


def _chunked(x, weight, bias, seeds, sigmas, offset, population):
    # float32 blocks and products, as in the C++ kernel: fp16/bf16 inputs are rounded once, at
    # the output, whichever strategy ran.
    return chunked_linear(x, weight, bias, seeds, sigmas, offset, _perturbed_copy, CHUNK_BYTES,
                          compute_dtype=torch.float32, population=population)


def perturbed_linear(x, weight, bias, seed, sigma, offset):
    K = weight.shape[1]
    if x.numel() and weight.numel() and \
            choose_strategy(x.numel() // K, weight.numel()) == "chunked":
        return _chunked(x, weight, bias, [seed], [sigma], offset, population=False)
    return _ops().perturbed_linear(x, weight, bias, seed, offset, sigma)


def population_linear(x, weight, bias, seeds, sigmas, offset):
    K = weight.shape[1]
    if x.numel() and weight.numel() and \
            choose_strategy(x.numel() // (K * x.shape[0]), weight.numel(),
                            x.shape[0]) == "chunked":
        return _chunked(x, weight, bias, seeds.tolist(), sigmas.tolist(), offset, population=True)
    return _ops().population_linear(x, weight, bias, seeds, sigmas, offset)


def noise_sketch(shape, seeds, weights, test_matrix, left, offset):
    rows, cols = shape
    return _ops().noise_sketch(rows, cols, seeds, weights, test_matrix, left, offset)


def noise_gram(numel, seeds, offset, device):
    return _ops().noise_gram(numel, seeds, offset)
