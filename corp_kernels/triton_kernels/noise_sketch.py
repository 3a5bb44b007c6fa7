"""(sum_k w_k eps_k) @ Omega  or  Psi @ (sum_k w_k eps_k), the sum built tile by tile.

Right sketch: program (i, s) owns row block i of the [m, n] sum and walks the column blocks
s, s + SPLITS, s + 2 * SPLITS, ...; it builds each tile of the sum from all K seeds in registers
and multiplies it into Omega. Left sketch: the same with columns and rows exchanged. Each split
writes its own partial product and the launcher adds the SPLITS partials in a fixed order (the
result does not depend on scheduling). Splitting the walked dimension is what fills a GPU: a
4096-row layer has 128 row blocks of 32, fewer than one per SM on a 132-SM H100, and each would
walk the whole row alone. Memory is the inputs, the output and SPLITS partials of its size.
"""

import torch
import triton
import triton.language as tl

from .noise_tile import noise_tile, sm_count, split_offset


@triton.jit
def _delta_tile(seeds_ptr, weights_ptr, K, counter_base, rem, rows, col_start, n_cols,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for k in range(K):
        seed = tl.load(seeds_ptr + k)
        w = tl.load(weights_ptr + k)
        acc += w * noise_tile(seed, counter_base, rem, rows, col_start, n_cols, BLOCK_C, ALIGNED)
    return acc


@triton.jit
def _sketch_right_kernel(out_ptr,  # [SPLITS, m, r] float32
                         omega_ptr,  # [n, r] float32
                         seeds_ptr, weights_ptr, K, m, n, r, counter_base, rem, splits,
                         ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    r_offs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for c0 in range(split * BLOCK_N, n, splits * BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        delta = _delta_tile(seeds_ptr, weights_ptr, K, counter_base, rem, rows, c0, n,
                            BLOCK_M, BLOCK_N, ALIGNED)
        delta = tl.where(cols[None, :] < n, delta, 0.0)
        omega = tl.load(omega_ptr + cols[:, None].to(tl.int64) * r + r_offs[None, :],
                        mask=(cols[:, None] < n) & (r_offs[None, :] < r), other=0.0)
        acc = tl.dot(delta, omega, acc, input_precision="ieee")
    out = out_ptr + split.to(tl.int64) * m * r
    tl.store(out + rows[:, None].to(tl.int64) * r + r_offs[None, :], acc,
             mask=(rows[:, None] < m) & (r_offs[None, :] < r))


@triton.jit
def _sketch_left_kernel(out_ptr,  # [SPLITS, r, n] float32
                        psi_ptr,  # [r, m] float32
                        seeds_ptr, weights_ptr, K, m, n, r, counter_base, rem, splits,
                        ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr):
    c0 = tl.program_id(0) * BLOCK_N
    split = tl.program_id(1)
    cols = c0 + tl.arange(0, BLOCK_N)
    r_offs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    for m0 in range(split * BLOCK_M, m, splits * BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        delta = _delta_tile(seeds_ptr, weights_ptr, K, counter_base, rem, rows, c0, n,
                            BLOCK_M, BLOCK_N, ALIGNED)
        delta = tl.where(rows[:, None] < m, delta, 0.0)
        psi = tl.load(psi_ptr + r_offs[:, None].to(tl.int64) * m + rows[None, :],
                      mask=(r_offs[:, None] < r) & (rows[None, :] < m), other=0.0)
        acc = tl.dot(psi, delta, acc, input_precision="ieee")
    out = out_ptr + split.to(tl.int64) * r * n
    tl.store(out + r_offs[:, None].to(tl.int64) * n + cols[None, :], acc,
             mask=(r_offs[:, None] < r) & (cols[None, :] < n))


def sketch_splits(owned_blocks: int, walked_blocks: int, device: torch.device) -> int:
    """How many ways to split the walked dimension: about 4 programs per SM in all, never more
    splits than there are blocks to walk."""
    return max(1, min(walked_blocks, triton.cdiv(4 * sm_count(device), max(owned_blocks, 1))))


def noise_sketch(shape, seeds: torch.Tensor, weights: torch.Tensor, test_matrix: torch.Tensor,
                 left: bool, offset: int, block_m: int = 32, block_n: int = 32,
                 splits: int | None = None) -> torch.Tensor:
    m, n = shape
    device = test_matrix.device
    tm = test_matrix.to(torch.float32).contiguous()
    r = tm.shape[0] if left else tm.shape[1]
    block_r = max(16, triton.next_power_of_2(r))
    seeds = seeds.to(device)
    weights = weights.to(device=device, dtype=torch.float32)
    counter_base, rem = split_offset(offset)
    aligned = rem == 0 and n % 4 == 0
    row_blocks, col_blocks = triton.cdiv(m, block_m), triton.cdiv(n, block_n)
    owned, walked = (col_blocks, row_blocks) if left else (row_blocks, col_blocks)
    if splits is None:
        splits = sketch_splits(owned, walked, device)
    splits = max(1, min(splits, max(walked, 1)))
    partial = torch.zeros((splits, r, n) if left else (splits, m, r), dtype=torch.float32,
                          device=device)
    if owned and walked:
        args = (seeds, weights, seeds.numel(), m, n, r, counter_base, rem, splits)
        meta = dict(ALIGNED=aligned, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r)
        kernel = _sketch_left_kernel if left else _sketch_right_kernel
        kernel[(owned, splits)](partial, tm, *args, **meta)  # the caller guards the device
    return partial[0] if splits == 1 else partial.sum(0)
