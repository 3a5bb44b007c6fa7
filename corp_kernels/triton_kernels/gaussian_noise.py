"""out = alpha * noise or out += alpha * noise over a contiguous tensor (gaussian_noise, add_noise_)."""

import torch
import triton
import triton.language as tl

from .noise_tile import split_offset


@triton.jit
def _noise_fill_kernel(out_ptr,  # contiguous tensor, any float dtype
                       n,  # its element count
                       seed,  # int64 bits of the unsigned key
                       counter_base, rem,  # stream offset = 4 * counter_base + rem
                       alpha,  # scale of the noise
                       ACCUMULATE: tl.constexpr,  # out += ... instead of out = ...
                       BLOCK: tl.constexpr):  # counters per program (4 * BLOCK normals)
    local = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    normals = tl.randn4x(seed, counter_base + local)
    for lane in tl.static_range(4):
        index = 4 * local + lane - rem
        mask = (index >= 0) & (index < n)
        value = alpha * normals[lane]
        if ACCUMULATE:
            value += tl.load(out_ptr + index, mask=mask).to(tl.float32)
        tl.store(out_ptr + index, value.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
                 mask=mask)


def noise_fill_(out: torch.Tensor, seed: int, offset: int, alpha: float, accumulate: bool,
                block: int = 1024) -> torch.Tensor:
    n = out.numel()
    if n == 0:
        return out
    counter_base, rem = split_offset(offset)
    grid = (triton.cdiv(rem + n, 4 * block),)
    _noise_fill_kernel[grid](out, n, seed, counter_base, rem, alpha,
                             ACCUMULATE=accumulate, BLOCK=block)
    return out
