"""(sum_k w_k eps_k) @ Omega  or  Psi @ (sum_k w_k eps_k), the sum built tile by tile.

Right sketch: one program per row block of the [m, n] sum; it walks the columns, builds each
tile of the sum from all K seeds in registers and multiplies it into Omega. Left sketch: one
program per column block, walking the rows. Memory is the inputs and the output only.
"""

import torch
import triton
import triton.language as tl

from .noise_tile import noise_tile, split_offset


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
def _sketch_right_kernel(out_ptr,  # [m, r] float32
                         omega_ptr,  # [n, r] float32
                         seeds_ptr, weights_ptr, K, m, n, r, counter_base, rem,
                         ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_R: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_offs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        delta = _delta_tile(seeds_ptr, weights_ptr, K, counter_base, rem, rows, c0, n,
                            BLOCK_M, BLOCK_N, ALIGNED)
        delta = tl.where(cols[None, :] < n, delta, 0.0)
        omega = tl.load(omega_ptr + cols[:, None] * r + r_offs[None, :],
                        mask=(cols[:, None] < n) & (r_offs[None, :] < r), other=0.0)
        acc = tl.dot(delta, omega, acc, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * r + r_offs[None, :], acc,
             mask=(rows[:, None] < m) & (r_offs[None, :] < r))


@triton.jit
def _sketch_left_kernel(out_ptr,  # [r, n] float32
                        psi_ptr,  # [r, m] float32
                        seeds_ptr, weights_ptr, K, m, n, r, counter_base, rem,
                        ALIGNED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr):
    c0 = tl.program_id(0) * BLOCK_N
    cols = c0 + tl.arange(0, BLOCK_N)
    r_offs = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    for m0 in range(0, m, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        delta = _delta_tile(seeds_ptr, weights_ptr, K, counter_base, rem, rows, c0, n,
                            BLOCK_M, BLOCK_N, ALIGNED)
        delta = tl.where(rows[:, None] < m, delta, 0.0)
        psi = tl.load(psi_ptr + r_offs[:, None] * m + rows[None, :],
                      mask=(r_offs[:, None] < r) & (rows[None, :] < m), other=0.0)
        acc = tl.dot(psi, delta, acc, input_precision="ieee")
    tl.store(out_ptr + r_offs[:, None] * n + cols[None, :], acc,
             mask=(r_offs[:, None] < r) & (cols[None, :] < n))


def noise_sketch(shape, seeds: torch.Tensor, weights: torch.Tensor, test_matrix: torch.Tensor,
                 left: bool, offset: int, block_m: int = 32, block_n: int = 32) -> torch.Tensor:
    m, n = shape
    device = test_matrix.device
    tm = test_matrix.to(torch.float32).contiguous()
    r = tm.shape[0] if left else tm.shape[1]
    block_r = max(16, triton.next_power_of_2(r))
    seeds = seeds.to(device)
    weights = weights.to(device=device, dtype=torch.float32)
    counter_base, rem = split_offset(offset)
    aligned = rem == 0 and n % 4 == 0
    args = (seeds, weights, seeds.numel(), m, n, r, counter_base, rem)
    meta = dict(ALIGNED=aligned, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r)
    if left:
        out = torch.empty((r, n), dtype=torch.float32, device=device)
        _sketch_left_kernel[(triton.cdiv(n, block_n),)](out, tm, *args, **meta)
    else:
        out = torch.empty((m, r), dtype=torch.float32, device=device)
        _sketch_right_kernel[(triton.cdiv(m, block_m),)](out, tm, *args, **meta)
    return out
