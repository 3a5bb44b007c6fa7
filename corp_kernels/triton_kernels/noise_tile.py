"""The noise of a 2-D tile of a row-major tensor, shared by every matmul-shaped kernel."""

import triton
import triton.language as tl


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
