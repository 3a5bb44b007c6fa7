"""y[p] = x[p] @ (W + sigma_p * eps(seed_p)).T + b for a population of P members sharing W.

Two strategies, one answer (both round W + sigma*eps to x's dtype before the product):

- "fused": the noise tile is generated in registers next to the W tile it perturbs; no W-sized
  tensor exists. Each program regenerates its W tile's noise for its own block of tokens, so the
  noise cost grows with the number of token blocks: this wins only for few tokens per member
  (decode). With few programs (one member, a narrow layer) the reduction over K is split across
  programs (split-K) so that every SM has work; the partial sums go to a float32 workspace that the
  launcher adds up in a fixed order (deterministic: no atomics).
- "chunked": W + sigma*eps is materialized a block of rows at a time (CHUNK_BYTES at most, never
  W-sized unless W is that small), each block handed to cuBLAS. The noise is generated once per
  call, whatever the token count.

`choose_strategy` is the measured rule between them (benchmarks/results/gpu-*.md).
The member index is the fastest-varying program id of the fused kernel, so the P programs that
read the same W tile run side by side and W comes from DRAM about once.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .._chunked import chunked_linear, forced_strategy
from .gaussian_noise import noise_fill_
from .noise_tile import device_guard, noise_tile, sm_count, split_offset

# Largest block of perturbed rows the chunked strategy materializes at once. Each chunk costs
# two launches and their host work (about 80 us per chunk in eager mode on an H200), so chunks are
# tens of MiB: bounded, yet a 7B projection (11008 x 4096 bf16, 86 MiB) takes 3.
CHUNK_BYTES = 32 << 20
# Chunks are whole multiples of this many rows: a product block whose row count is not a multiple
# of 8 gives cuBLAS an unaligned leading dimension and a slow kernel (4864 x 896, T = 2048, split
# at row 4681: 297 us against 52 us for the whole weight).
CHUNK_ROW_ALIGN = 64
# Tokens per member up to which the fused kernel is used (see choose_strategy).
FUSED_MAX_TOKENS = 64


@triton.jit
def _perturbed_linear_kernel(
        x_ptr,  # [P, T, K] activations, contiguous
        w_ptr,  # [N, K] weight, contiguous
        b_ptr,  # [N] bias (unused without HAS_BIAS)
        y_ptr,  # [P, T, N] output, or float32 [SPLITS, P, T, N] partial sums when SPLIT
        seeds_ptr,  # int64 [P] seed bits (unused when ONE_MEMBER)
        sigmas_ptr,  # float32 [P] (unused when ONE_MEMBER)
        seed0, sigma0,  # the member's seed bits and sigma when ONE_MEMBER: no device copy needed
        P, T, N, K,
        k_per_split,  # K columns per split, a multiple of BLOCK_K
        counter_base, rem,  # W's stream offset = 4 * counter_base + rem
        ONE_MEMBER: tl.constexpr,
        SPLIT: tl.constexpr,  # write float32 partial sums of this split's K range, no bias
        HAS_BIAS: tl.constexpr,
        ALIGNED: tl.constexpr,  # rem == 0 and K % 4 == 0: see noise_tile
        LOW_PRECISION_DOT: tl.constexpr,  # x is fp16/bf16: round W + sigma*eps to it for the dot
        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    member_split = tl.program_id(0)
    p = member_split % P
    split = member_split // P
    t_offs = (tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    n_offs = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    if ONE_MEMBER:
        seed = seed0
        sigma = sigma0
    else:
        seed = tl.load(seeds_ptr + p)
        sigma = tl.load(sigmas_ptr + p)
    x_base = x_ptr + p.to(tl.int64) * T * K
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k_offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_base + t_offs[:, None] * K + k_offs[None, :],
                    mask=(t_offs[:, None] < T) & (k_offs[None, :] < k_end), other=0.0)
        w = tl.load(w_ptr + n_offs[:, None].to(tl.int64) * K + k_offs[None, :],
                    mask=(n_offs[:, None] < N) & (k_offs[None, :] < k_end), other=0.0)
        eps = noise_tile(seed, counter_base, rem, n_offs, k0, K, BLOCK_K, ALIGNED)
        w_eff = w.to(tl.float32) + sigma * eps
        if LOW_PRECISION_DOT:
            acc = tl.dot(x, tl.trans(w_eff.to(x.dtype, fp_downcast_rounding="rtne")), acc)
        else:
            acc = tl.dot(x.to(tl.float32), tl.trans(w_eff), acc, input_precision="ieee")
    out_mask = (t_offs[:, None] < T) & (n_offs[None, :] < N)
    if SPLIT:
        y_base = y_ptr + (split.to(tl.int64) * P + p) * T * N
        tl.store(y_base + t_offs[:, None] * N + n_offs[None, :], acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + n_offs, mask=n_offs < N, other=0.0).to(tl.float32)[None, :]
        y_base = y_ptr + p.to(tl.int64) * T * N
        y = acc.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(y_base + t_offs[:, None] * N + n_offs[None, :], y, mask=out_mask)


def _interpreted() -> bool:
    # Triton's interpreter keeps bf16 as raw uint16 and its dot on them is not faithful, so there
    # the dot runs in fp32 (which the kernel's fp32 path computes exactly as on a GPU).
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _tiles(tokens: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_N, BLOCK_K, num_warps) by tokens per member.

    Up to 64 tokens one 64 x 32 x 32 tile with 8 warps. The work is the W tile's noise, not the
    dot, and resident warps hide the generator's latency. Evidence so far, suggestive only: on an
    H200 (run 2) a 4096 x 4096 layer took 106 us at T = 1 with a 16 x 64 x 64 / 4-warp tile
    (156-162 registers as its JIT compiled it, 12 warps per SM) and 75 us at T = 64 with
    64 x 64 x 64 / 8 warps (109-124 registers, 16 warps). Compiled for a model layer's sizes,
    64 x 64 x 64 spills on sm_80 (16 bytes stored, 8 loaded per thread, one member); this tile
    takes 38-48 registers on sm_90 (40-48 warps per SM) and 59-64 on sm_80 (32 warps), 101-119
    (16 warps) with odd sizes, spill-free in every row (benchmarks/results/aot.md,
    aot-fused-tiles.md). Its speed is unmeasured: gpu_check.sh times it against 64 x 64 x 64 and
    the other DECODE_TILE_CANDIDATES. Beyond 64 tokens (forced fused only) 128 x 128 x 32 with 8
    warps."""
    if tokens <= 64:
        return 64, 32, 32, 8
    return 128, 128, 32, 8


# Fused tiles for up to FUSED_MAX_TOKENS tokens per member, (BLOCK_T, BLOCK_N, BLOCK_K, warps),
# timed against each other on a GPU (benchmarks/gpu_fused_tiles.py, run by scripts/gpu_check.sh)
# before _tiles changes again. Compiled as the JIT specializes a 4096 x 4096 layer, each is
# spill-free on sm_90 and sm_80 except 64 x 64 x 64 (the tile before, measured on an H200; on sm_80
# it spills 16 bytes stored, 8 loaded), with 8-40 warps resident per SM
# (benchmarks/results/aot-fused-tiles.md).
# Not autotuned at run time: tiles sum K in different orders, and a pick that followed timing noise
# would change results between runs.
DECODE_TILE_CANDIDATES = ((64, 32, 32, 8), (64, 64, 64, 8), (64, 64, 32, 8), (32, 64, 32, 8),
                          (16, 64, 32, 8))


def split_count(programs: int, K: int, block_k: int, sms: int) -> int:
    """K splits that give about 4 programs per SM when the output alone gives fewer."""
    target = 4 * sms
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(K, block_k)))


# Device copies of population seeds/sigmas, so that a decode step does not copy them from the host
# in every layer (a sync point, and what keeps a step out of a CUDA graph).
_MEMBER_CACHE: OrderedDict = OrderedDict()
_MEMBER_CACHE_SIZE = 4096


def _member_tensors(seeds: torch.Tensor, sigmas: torch.Tensor, device: torch.device):
    key = (device, seeds.cpu().numpy().tobytes(), sigmas.cpu().numpy().tobytes())
    hit = _MEMBER_CACHE.get(key)
    if hit is None:
        hit = (seeds.to(device=device, dtype=torch.int64),
               sigmas.to(device=device, dtype=torch.float32))
        _MEMBER_CACHE[key] = hit
        if len(_MEMBER_CACHE) > _MEMBER_CACHE_SIZE:
            _MEMBER_CACHE.popitem(last=False)
    else:
        _MEMBER_CACHE.move_to_end(key)
    return hit


def choose_strategy(tokens: int, aligned: bool) -> str:
    """fused or chunked for `tokens` tokens per member; `aligned`: W's stream offset and row length
    are multiples of 4, so each Philox call of the fused kernel yields four usable normals (else it
    keeps one of four, and its tiles spill registers on sm_90). CORP_KERNELS_LINEAR_STRATEGY forces
    a strategy.

    Measured on an H200, bf16 (benchmarks/results/gpu-NVIDIA-H200.md): up to 64 tokens per member
    both strategies generate W's noise once per member, and fused saves the perturbed weight's
    round trip through memory and the launches (population P = 16 search on a 0.44B Llama, decode
    at 64 tokens per member: 3.35 members/s fused against 0.90 chunked; population_linear P = 4-16
    at T <= 64: fused fastest in every row). Beyond, fused regenerates the noise once per block of
    tokens: 4096 x 4096, T = 2048: 1.34 ms fused against 0.17 ms chunked."""
    forced = forced_strategy()
    if forced:
        return forced
    return "fused" if aligned and tokens <= FUSED_MAX_TOKENS else "chunked"


def dispatched_tiles() -> set[tuple[int, int, int, int]]:
    """The fused tiles choose_strategy can launch (what the AOT check holds to no spills)."""
    return {_tiles(t) for t in range(1, FUSED_MAX_TOKENS + 1)}


def _fused(x, weight, bias, seeds, sigmas, offset, population, splits=None, tiles=None):
    """x: [P, ..., K] (population) or one member's [..., K]; returns [..., N] of x's leading
    shape, written by the kernel in place (never a view: a view returned through the op would be
    copied). `tiles` (BLOCK_T, BLOCK_N, BLOCK_K, warps) replaces _tiles' choice (benchmarks)."""
    K, N = weight.shape[1], weight.shape[0]
    P = x.shape[0] if population else 1
    x3 = x.reshape(P, -1, K).contiguous()
    T = x3.shape[1]
    out = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    block_t, block_n, block_k, warps = _tiles(T) if tiles is None else tiles
    programs = P * triton.cdiv(T, block_t) * triton.cdiv(N, block_n)
    if splits is None:
        splits = split_count(programs, K, block_k, sm_count(x.device))
    k_per_split = triton.cdiv(triton.cdiv(K, splits), block_k) * block_k
    splits = triton.cdiv(K, k_per_split)
    if P == 1:
        seed_arg, sigma_arg = int(seeds[0]), float(sigmas[0])
        seeds_dev = sigmas_dev = weight  # unused by the kernel
    else:
        seed_arg, sigma_arg = 0, 0.0
        seeds_dev, sigmas_dev = _member_tensors(seeds, sigmas, x.device)
    split = splits > 1
    # With split-K the kernel writes float32 partial sums, added up below in a fixed order.
    y = torch.empty((splits, P, T, N), dtype=torch.float32, device=x.device) if split else out
    counter_base, rem = split_offset(offset)
    grid = (P * splits, triton.cdiv(T, block_t), triton.cdiv(N, block_n))
    _perturbed_linear_kernel[grid](
        x3, weight, bias if bias is not None else weight, y, seeds_dev, sigmas_dev,
        seed_arg, sigma_arg, P, T, N, K, k_per_split, counter_base, rem,
        ONE_MEMBER=P == 1, SPLIT=split, HAS_BIAS=bias is not None,
        ALIGNED=(rem == 0 and K % 4 == 0),
        LOW_PRECISION_DOT=x.dtype != torch.float32 and not _interpreted(),
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    if split:
        total = y.sum(0)  # a fixed order: the same bits on every call
        if bias is not None:
            total += bias.float()
        out.view(P, T, N).copy_(total)  # rounds to x's dtype once
    return out


def _perturbed_copy(out, src, seed, sigma, offset):
    noise_fill_(out, seed, offset, sigma, False, src=src)


def _chunked(x, weight, bias, seeds, sigmas, offset, population, chunk_bytes=None):
    return chunked_linear(x, weight, bias, seeds, sigmas, offset, _perturbed_copy,
                          CHUNK_BYTES if chunk_bytes is None else chunk_bytes, CHUNK_ROW_ALIGN,
                          population=population)


def _linear(x, weight, bias, seeds, sigmas, offset, population, strategy, options):
    K, N = weight.shape[1], weight.shape[0]
    if x.numel() == 0 or N == 0:
        out = torch.zeros((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
        return out + bias if bias is not None else out
    tokens = x.numel() // K // (x.shape[0] if population else 1)
    strategy = strategy or choose_strategy(tokens, aligned=offset % 4 == 0 and K % 4 == 0)
    run = {"fused": _fused, "chunked": _chunked}[strategy]
    with device_guard(x):
        return run(x, weight, bias, seeds, sigmas, offset, population, **options)


def population_linear(x: torch.Tensor, weight: torch.Tensor, bias, seeds: torch.Tensor,
                      sigmas: torch.Tensor, offset: int, strategy: str | None = None,
                      **options) -> torch.Tensor:
    """x: [P, ..., K] -> [P, ..., N]. seeds: int64 seed bits, sigmas: floats, both [P] on the host.
    `strategy` forces one ("fused" or "chunked"); `options` reach it (splits= and tiles= for
    fused, chunk_bytes= for chunked)."""
    return _linear(x, weight, bias, seeds, sigmas, offset, True, strategy, options)


def perturbed_linear(x, weight, bias, seed: int, sigma: float, offset: int,
                     strategy: str | None = None, **options) -> torch.Tensor:
    """x: [..., K] -> [..., N] for one member."""
    return _linear(x, weight, bias, [seed], [sigma], offset, False, strategy, options)
