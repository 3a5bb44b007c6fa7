"""The noise of a 2-D tile of a row-major tensor, shared by every matmul-shaped kernel."""

import contextlib

import torch
import triton
import triton.language as tl


def device_guard(tensor: torch.Tensor):
    """Launch on the tensor's GPU: Triton launches on the current device, which need not be the
    one the tensors live on (a model split over GPUs)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


_SM_COUNTS: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (a stand-in of 4 under the CPU interpreter, so that
    the multi-program paths are exercised there too)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def split_offset(offset: int) -> tuple[int, int]:
    """(first counter, position within it) of an unsigned stream offset.

    Kernels take the counter base (< 2**62, fits int64) instead of the raw 64-bit offset so that no
    kernel does unsigned 64-bit arithmetic.
    """
    return offset >> 2, offset & 3


@triton.jit
def noise_tile(seed, counter_base, rem, rows, col_start, n_cols,
               BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """float32 [len(rows), BLOCK_C]: noise at (rows, col_start + arange(BLOCK_C)) of a tensor with
    n_cols columns whose stream starts at 4 * counter_base + rem.

    ALIGNED (rem == 0, n_cols % 4 == 0, col_start % 4 == 0): each row of the tile is a run of whole
    counters, so one randn4x call yields four useful normals, interleaved back into place.
    Otherwise every element computes its own counter and keeps one lane of four.
    """
    rows = rows.to(tl.int64)
    if ALIGNED:
        first = (rows[:, None] * n_cols + col_start) // 4
        counters = counter_base + first + tl.arange(0, BLOCK_C // 4)[None, :]
        n0, n1, n2, n3 = tl.randn4x(seed, counters)
        return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
    else:
        local = rem + rows[:, None] * n_cols + col_start + tl.arange(0, BLOCK_C)[None, :]
        n0, n1, n2, n3 = tl.randn4x(seed, counter_base + (local >> 2))
        lane = local & 3
        return tl.where(lane == 0, n0, tl.where(lane == 1, n1, tl.where(lane == 2, n2, n3)))
