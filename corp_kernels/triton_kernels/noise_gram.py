"""Gram matrix of K seeded noises: G[i, j] = sum_e eps_i[e] * eps_j[e].

A Gram is a sum over positions, so the order of positions inside a chunk does not matter: each
Philox counter gives four normals (lanes) and the kernel multiplies lane by lane, A_l @ B_l^T for
l = 0..3, using every normal it generates and never interleaving them back into place.

Program (bi, bj, s), bi <= bj, takes the seed blocks bi and bj (BLOCK_S seeds each) and every
SPLITS-th chunk of BLOCK_C counters starting at chunk s; when one block holds all seeds, A is B and
its noise is generated once. The SPLITS partial Grams (upper block triangle) are summed in float64
by the launcher in a fixed order (deterministic: no atomics), then mirrored.
"""

import torch
import triton
import triton.language as tl

from .noise_tile import device_guard, sm_count, split_offset


@triton.jit
def _lane(z, k_valid, pos, n):
    """One lane of noise, zero for padded seeds and positions outside [0, n)."""
    return tl.where(k_valid[:, None] & (pos >= 0)[None, :] & (pos < n)[None, :], z, 0.0)


@triton.jit
def _noise_gram_kernel(out_ptr,  # float32 [SPLITS, K, K]
                       seeds_ptr, K, n, counter_base, rem, n_chunks,
                       SPLITS: tl.constexpr, ONE_BLOCK: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    bi = tl.program_id(0)
    bj = tl.program_id(1)
    split = tl.program_id(2)
    if bj < bi:
        return  # the lower block triangle is the mirror of the upper one
    ki = bi * BLOCK_S + tl.arange(0, BLOCK_S)
    kj = bj * BLOCK_S + tl.arange(0, BLOCK_S)
    seeds_i = tl.load(seeds_ptr + ki, mask=ki < K, other=0)
    seeds_j = tl.load(seeds_ptr + kj, mask=kj < K, other=0)
    acc = tl.zeros((BLOCK_S, BLOCK_S), tl.float32)
    for c in range(split, n_chunks, SPLITS):
        local = tl.cast(c, tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
        pos = 4 * local - rem  # position of lane 0 of each counter
        a0, a1, a2, a3 = tl.randn4x(seeds_i[:, None], (counter_base + local)[None, :])
        a0 = _lane(a0, ki < K, pos, n)
        a1 = _lane(a1, ki < K, pos + 1, n)
        a2 = _lane(a2, ki < K, pos + 2, n)
        a3 = _lane(a3, ki < K, pos + 3, n)
        if ONE_BLOCK:
            b0, b1, b2, b3 = a0, a1, a2, a3
        else:
            b0, b1, b2, b3 = tl.randn4x(seeds_j[:, None], (counter_base + local)[None, :])
            b0 = _lane(b0, kj < K, pos, n)
            b1 = _lane(b1, kj < K, pos + 1, n)
            b2 = _lane(b2, kj < K, pos + 2, n)
            b3 = _lane(b3, kj < K, pos + 3, n)
        acc = tl.dot(a0, tl.trans(b0), acc, input_precision="ieee")
        acc = tl.dot(a1, tl.trans(b1), acc, input_precision="ieee")
        acc = tl.dot(a2, tl.trans(b2), acc, input_precision="ieee")
        acc = tl.dot(a3, tl.trans(b3), acc, input_precision="ieee")
    out = out_ptr + split.to(tl.int64) * K * K
    tl.store(out + ki[:, None] * K + kj[None, :], acc, mask=(ki[:, None] < K) & (kj[None, :] < K))


def noise_gram(numel: int, seeds: torch.Tensor, offset: int, device, block_c: int | None = None,
               splits: int | None = None) -> torch.Tensor:
    device = torch.device(device)
    K = seeds.numel()
    block_s = max(16, min(64, triton.next_power_of_2(K)))
    blocks = triton.cdiv(K, block_s)
    if block_c is None:
        # Two blocks of noise live at once off the diagonal: with 32 counters they spilled 1.2 KB
        # per thread on an H200 (K = 200: 6.7e9 useful normals/s against 4.9e10 at K = 64).
        block_c = 32 if blocks == 1 else 16
    counter_base, rem = split_offset(offset)
    n_chunks = triton.cdiv(rem + numel, 4 * block_c)
    if splits is None:  # about 4 programs per SM over the upper block triangle
        pairs = blocks * (blocks + 1) // 2
        splits = triton.cdiv(4 * sm_count(device), pairs)
    splits = max(1, min(splits, n_chunks))
    partial = torch.zeros((splits, K, K), dtype=torch.float32, device=device)
    if n_chunks:
        seeds = seeds.to(device)
        with device_guard(partial):
            _noise_gram_kernel[(blocks, blocks, splits)](
                partial, seeds, K, numel, counter_base, rem, n_chunks, SPLITS=splits,
                ONE_BLOCK=blocks == 1, BLOCK_S=block_s, BLOCK_C=block_c,
                num_warps=8 if block_s == 64 else 4)
    upper = partial.to(torch.float64).sum(0)
    # Blocks below the diagonal were skipped; within diagonal blocks both halves were computed.
    block_index = torch.arange(K, device=device) // block_s
    lower = block_index[:, None] > block_index[None, :]
    return torch.where(lower, upper.T, upper)
