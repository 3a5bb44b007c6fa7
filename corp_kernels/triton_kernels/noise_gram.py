"""Gram matrix of K seeded noises: G[i, j] = sum_e eps_i[e] * eps_j[e].

Program (bi, bj, s) generates the [BLOCK_K, BLOCK_E] noise tiles of seed blocks bi and bj for
every SPLITS-th chunk of positions, starting at chunk s, and accumulates their product in fp32.
The SPLITS partial Grams are summed in float64 by the launcher (deterministic: no atomics).
"""

import torch
import triton
import triton.language as tl

from .noise_tile import split_offset


@triton.jit
def _seed_block_noise(seeds_ptr, K, k_offs, e_start, n, counter_base, rem,
                      BLOCK_E: tl.constexpr):
    """float32 [BLOCK_K, BLOCK_E]: row k is noise(seeds[k], offset + e_start + arange(BLOCK_E)),
    zero outside k < K and e < n."""
    seeds = tl.load(seeds_ptr + k_offs, mask=k_offs < K, other=0)
    e = e_start + tl.arange(0, BLOCK_E).to(tl.int64)
    local = rem + e
    n0, n1, n2, n3 = tl.randn4x(seeds[:, None], (counter_base + (local >> 2))[None, :])
    lane = (local & 3)[None, :]
    z = tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))
    return tl.where((k_offs[:, None] < K) & (e[None, :] < n), z, 0.0)


@triton.jit
def _noise_gram_kernel(out_ptr,  # float32 [SPLITS, K, K]
                       seeds_ptr, K, n, counter_base, rem, n_chunks,
                       SPLITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr):
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    split = tl.program_id(2)
    ki = bi * BLOCK_K + tl.arange(0, BLOCK_K)
    kj = bj * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_K, BLOCK_K), tl.float32)
    for c in range(split, n_chunks, SPLITS):
        e_start = tl.cast(c, tl.int64) * BLOCK_E
        a = _seed_block_noise(seeds_ptr, K, ki, e_start, n, counter_base, rem, BLOCK_E)
        b = _seed_block_noise(seeds_ptr, K, kj, e_start, n, counter_base, rem, BLOCK_E)
        acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
    out = out_ptr + split.to(tl.int64) * K * K
    tl.store(out + ki[:, None] * K + kj[None, :], acc, mask=(ki[:, None] < K) & (kj[None, :] < K))


def noise_gram(numel: int, seeds: torch.Tensor, offset: int, device, block_k: int = 16,
               block_e: int = 64, max_splits: int = 64) -> torch.Tensor:
    K = seeds.numel()
    seeds = seeds.to(device)
    n_chunks = triton.cdiv(numel, block_e)
    splits = max(1, min(max_splits, n_chunks))
    partial = torch.zeros((splits, K, K), dtype=torch.float32, device=device)
    if n_chunks:
        counter_base, rem = split_offset(offset)
        grid = (triton.cdiv(K, block_k), triton.cdiv(K, block_k), splits)
        _noise_gram_kernel[grid](partial, seeds, K, numel, counter_base, rem, n_chunks,
                                 SPLITS=splits, BLOCK_K=block_k, BLOCK_E=block_e)
    return partial.to(torch.float64).sum(0)
