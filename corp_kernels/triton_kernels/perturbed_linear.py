"""y[p] = x[p] @ (W + sigma_p * eps(seed_p)).T + b for a population of P members sharing W.

One kernel serves perturbed_linear (P = 1) and population_linear. The noise tile is generated in
registers next to the W tile it perturbs; no W-sized tensor exists. The member index is the
fastest-varying program id, so the P programs that read the same W tile run side by side and W
comes from DRAM about once.
"""

import os

import torch
import triton
import triton.language as tl

from .noise_tile import noise_tile, split_offset


@triton.jit
def _perturbed_linear_kernel(
        x_ptr,  # [P, T, K] activations, contiguous
        w_ptr,  # [N, K] weight, contiguous
        b_ptr,  # [N] bias (unused without HAS_BIAS)
        y_ptr,  # [P, T, N] output
        seeds_ptr,  # int64 [P] seed bits
        sigmas_ptr,  # float32 [P]
        T, N, K,
        counter_base, rem,  # W's stream offset = 4 * counter_base + rem
        HAS_BIAS: tl.constexpr,
        ALIGNED: tl.constexpr,  # rem == 0 and K % 4 == 0: see noise_tile
        LOW_PRECISION_DOT: tl.constexpr,  # x is fp16/bf16: round W + sigma*eps to it for the dot
        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    p = tl.program_id(0)
    t_offs = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    n_offs = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    seed = tl.load(seeds_ptr + p)
    sigma = tl.load(sigmas_ptr + p)
    x_base = x_ptr + p.to(tl.int64) * T * K
    acc = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_base + t_offs[:, None] * K + k_offs[None, :],
                    mask=(t_offs[:, None] < T) & (k_offs[None, :] < K), other=0.0)
        w = tl.load(w_ptr + n_offs[:, None].to(tl.int64) * K + k_offs[None, :],
                    mask=(n_offs[:, None] < N) & (k_offs[None, :] < K), other=0.0)
        eps = noise_tile(seed, counter_base, rem, n_offs, k0, K, BLOCK_K, ALIGNED)
        w_eff = w.to(tl.float32) + sigma * eps
        if LOW_PRECISION_DOT:
            acc = tl.dot(x, tl.trans(w_eff.to(x.dtype, fp_downcast_rounding="rtne")), acc)
        else:
            acc = tl.dot(x.to(tl.float32), tl.trans(w_eff), acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + n_offs, mask=n_offs < N, other=0.0).to(tl.float32)[None, :]
    y_base = y_ptr + p.to(tl.int64) * T * N
    y = acc.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(y_base + t_offs[:, None] * N + n_offs[None, :], y,
             mask=(t_offs[:, None] < T) & (n_offs[None, :] < N))


def _interpreted() -> bool:
    # Triton's interpreter keeps bf16 as raw uint16 and its dot on them is not faithful, so there
    # the dot runs in fp32 (which the kernel's fp32 path computes exactly as on a GPU).
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(tokens: int) -> tuple[int, int, int]:
    """Tile sizes by token count: decode-sized inputs get short, wide tiles."""
    if tokens <= 16:
        return 16, 64, 64
    if tokens <= 64:
        return 64, 64, 64
    return 128, 128, 32


def population_linear(x: torch.Tensor, weight: torch.Tensor, bias, seeds: torch.Tensor,
                      sigmas: torch.Tensor, offset: int) -> torch.Tensor:
    """x: [P, ..., K] -> [P, ..., N]."""
    P, K, N = x.shape[0], weight.shape[1], weight.shape[0]
    x3 = x.reshape(P, -1, K).contiguous()
    T = x3.shape[1]
    y = torch.empty((P, T, N), dtype=x.dtype, device=x.device)
    seeds = seeds.to(x.device)
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    counter_base, rem = split_offset(offset)
    block_t, block_n, block_k = _blocks(T)
    grid = (P, triton.cdiv(T, block_t), triton.cdiv(N, block_n))
    _perturbed_linear_kernel[grid](
        x3, weight, bias if bias is not None else weight, y, seeds, sigmas, T, N, K,
        counter_base, rem, HAS_BIAS=bias is not None, ALIGNED=(rem == 0 and K % 4 == 0),
        LOW_PRECISION_DOT=x.dtype != torch.float32 and not _interpreted(),
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k)
    return y.reshape(*x.shape[:-1], N)


def perturbed_linear(x, weight, bias, seed: int, sigma: float, offset: int) -> torch.Tensor:
    seeds = torch.tensor([seed], dtype=torch.int64)
    sigmas = torch.tensor([sigma], dtype=torch.float32)
    return population_linear(x.unsqueeze(0), weight, bias, seeds, sigmas, offset).squeeze(0)
