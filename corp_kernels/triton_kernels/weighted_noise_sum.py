"""sum_k w_k * noise(seed_k) over a contiguous tensor; each program keeps its block in registers
while it regenerates every seed's noise for it, so memory is the output only."""

import torch
import triton
import triton.language as tl

from .noise_tile import split_offset


@triton.jit
def _weighted_noise_sum_kernel(out_ptr,  # float32, contiguous, n elements
                               n,
                               seeds_ptr,  # int64 [K] seed bits
                               weights_ptr,  # float32 [K]
                               K,
                               counter_base, rem,  # stream offset = 4 * counter_base + rem
                               BLOCK: tl.constexpr):  # counters per program
    local = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    counters = counter_base + local
    acc0 = tl.zeros((BLOCK,), tl.float32)
    acc1 = tl.zeros((BLOCK,), tl.float32)
    acc2 = tl.zeros((BLOCK,), tl.float32)
    acc3 = tl.zeros((BLOCK,), tl.float32)
    for k in range(K):
        seed = tl.load(seeds_ptr + k)
        w = tl.load(weights_ptr + k)
        n0, n1, n2, n3 = tl.randn4x(seed, counters)
        acc0 += w * n0
        acc1 += w * n1
        acc2 += w * n2
        acc3 += w * n3
    index0 = 4 * local - rem
    tl.store(out_ptr + index0, acc0, mask=(index0 >= 0) & (index0 < n))
    tl.store(out_ptr + index0 + 1, acc1, mask=(index0 + 1 >= 0) & (index0 + 1 < n))
    tl.store(out_ptr + index0 + 2, acc2, mask=(index0 + 2 >= 0) & (index0 + 2 < n))
    tl.store(out_ptr + index0 + 3, acc3, mask=(index0 + 3 >= 0) & (index0 + 3 < n))


def weighted_noise_sum(shape, seeds: torch.Tensor, weights: torch.Tensor, offset: int,
                       device, block: int = 256) -> torch.Tensor:
    out = torch.empty(shape, dtype=torch.float32, device=device)
    n = out.numel()
    if n == 0:
        return out
    seeds = seeds.to(device)
    weights = weights.to(device=device, dtype=torch.float32)
    counter_base, rem = split_offset(offset)
    grid = (triton.cdiv(rem + n, 4 * block),)
    _weighted_noise_sum_kernel[grid](out, n, seeds, weights, seeds.numel(), counter_base, rem,
                                     BLOCK=block)
    return out
