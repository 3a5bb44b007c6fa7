"""out = [src +] alpha * noise over a contiguous tensor (gaussian_noise, add_noise_, and the
perturbed copy W + sigma * eps that the chunked linear path multiplies)."""

import torch
import triton
import triton.language as tl

from .noise_tile import device_guard, split_offset


@triton.jit
def _noise_fill_kernel(out_ptr,  # contiguous tensor, any float dtype
                       src_ptr,  # read when ADD_SRC (out itself for add_noise_), else unused
                       n,  # element count
                       seed,  # int64 bits of the unsigned key
                       counter_base, rem,  # stream offset = 4 * counter_base + rem
                       alpha,  # scale of the noise
                       ADD_SRC: tl.constexpr,  # out = src + alpha * noise, rounded once
                       BLOCK: tl.constexpr):  # counters per program (4 * BLOCK normals)
    first = tl.program_id(0).to(tl.int64) * BLOCK
    n0, n1, n2, n3 = tl.randn4x(seed, counter_base + first + tl.arange(0, BLOCK))
    # Counter c holds normals 4c..4c+3: interleaved back into stream order, the block is one
    # contiguous run, so loads and stores are whole vectors instead of four stride-4 passes.
    normals = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    index = 4 * first - rem + tl.arange(0, 4 * BLOCK)
    mask = (index >= 0) & (index < n)
    value = alpha * normals
    if ADD_SRC:
        value += tl.load(src_ptr + index, mask=mask).to(tl.float32)
    tl.store(out_ptr + index, value.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
             mask=mask)


def noise_fill_(out: torch.Tensor, seed: int, offset: int, alpha: float, accumulate: bool,
                src: torch.Tensor | None = None, block: int = 512) -> torch.Tensor:
    """out = alpha * eps (+ out when `accumulate`, + src when `src` is given: both contiguous, of
    out's numel). eps at stream positions offset.. in out's row-major order."""
    n = out.numel()
    if n == 0:
        return out
    if accumulate:
        src = out
    counter_base, rem = split_offset(offset)
    grid = (triton.cdiv(rem + n, 4 * block),)
    with device_guard(out):
        _noise_fill_kernel[grid](out, src if src is not None else out, n, seed, counter_base, rem,
                                 alpha, ADD_SRC=src is not None, BLOCK=block)
    return out
