"""Raw Philox4x32-10 words from Triton's own implementation, for the known-answer tests."""

import torch
import triton
import triton.language as tl


@triton.jit
def _philox_kernel(counters_ptr,  # int64 [n, 4], uint32 values
                   keys_ptr,  # int64 [n, 2], uint32 values
                   out_ptr,  # int64 [n, 4]
                   n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    c0 = tl.load(counters_ptr + 4 * i, mask=mask).to(tl.uint32)
    c1 = tl.load(counters_ptr + 4 * i + 1, mask=mask).to(tl.uint32)
    c2 = tl.load(counters_ptr + 4 * i + 2, mask=mask).to(tl.uint32)
    c3 = tl.load(counters_ptr + 4 * i + 3, mask=mask).to(tl.uint32)
    k0 = tl.load(keys_ptr + 2 * i, mask=mask).to(tl.uint32)
    k1 = tl.load(keys_ptr + 2 * i + 1, mask=mask).to(tl.uint32)
    x0, x1, x2, x3 = tl.philox_impl(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * i, x0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 1, x1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 2, x2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 3, x3.to(tl.int64), mask=mask)


def philox4x32_10(counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    counters = counters.to(torch.int64).contiguous()
    keys = keys.to(device=counters.device, dtype=torch.int64).contiguous()
    out = torch.empty_like(counters)
    n = counters.shape[0]
    block = 64
    _philox_kernel[(triton.cdiv(n, block),)](counters, keys, out, n, BLOCK=block)
    return out
