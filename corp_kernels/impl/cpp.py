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
# CHUNK_BYTES blocks, then the BLAS) generates W's noise once per call into a block and makes one
# product per block. Which is faster, measured on 2 x86-64 cores in fp32 with paired intervals
# (benchmarks/results/linear-rule-cpu-*.md: time of the other strategy over the pick; two runs,
# ranges over both; near-ties of a few percent flip from one run to the next):
# - From CHUNKED_MIN_TOKENS tokens per member on, chunked, whatever W's size (512 tokens:
#   0.96-1.40x; the panel kernel regenerates the noise for every block of tokens).
# - One member, float32 W of SMALL_WEIGHT_BYTES or less (576 x 576 and smaller): chunked at every
#   token count, one generator pass into a W-sized buffer and one GEMM instead of many small
#   panel products. 192 x 576: 1.06-1.40x. 576 x 576: 0.89-1.01x below 64 tokens (a tie in one
#   run, the panel kernel up to 11% faster at 1-4 tokens in the other), 1.03-1.23x from 64; but
#   chunked stays 1.09x or more faster than materialize-then-GEMM there, where the panel kernel
#   was measured at 0.90x (T = 64, before its ATen calls left autograd) and 1.03-1.33x after.
# - One member, float32 W up to one chunk (1536 x 576, 576 x 1536, 1024 x 1024): the panel
#   kernel below ONE_CHUNK_MIN_TOKENS (0.98-1.13x over chunked), chunked from there (0.98-1.09x
#   at 128-256 tokens, 1.15-1.29x at 512).
# - Anything larger, and populations, keep the panel kernel below CHUNKED_MIN_TOKENS: it needs no
#   W-sized buffer and wins or ties there (2048 x 576 and 2048 x 2048: 1.00-1.58x; population
#   P = 8, T = 16: 576 x 576 1.20-1.30x and 2048 x 2048 2.01-2.08x over materializing each member,
#   chunked 1.07-1.18x and 1.66-1.78x; benchmarks/results/cpu-*.md).
CHUNKED_MIN_TOKENS = 512
CHUNK_BYTES = 4 << 20
SMALL_WEIGHT_BYTES = 3 << 19  # 1.5 MiB
ONE_CHUNK_MIN_TOKENS = 128


def choose_strategy(tokens: int, weight_numel: int, members: int | None = None) -> str:
    """fused or chunked for `tokens` tokens per member, a W of `weight_numel` elements (computed
    in float32 whatever its dtype), and `members` members (None: perturbed_linear's one)."""
    forced = forced_strategy()
    if forced:
        return forced
    if tokens >= CHUNKED_MIN_TOKENS:
        return "chunked"
    if members is None:
        w_bytes = weight_numel * 4
        if w_bytes <= SMALL_WEIGHT_BYTES or (w_bytes <= CHUNK_BYTES
                                             and tokens >= ONE_CHUNK_MIN_TOKENS):
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
