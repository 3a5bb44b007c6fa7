"""Input checks at the public boundary. Every message names the argument and what is wrong.

Seeds and stream positions are unsigned 64-bit integers. Internally they travel as int64 holding
the same bits (`to_signed_bits`), because torch ops and Triton arguments are signed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

U64_LIMIT = 1 << 64
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def to_signed_bits(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned `value`."""
    return value - U64_LIMIT if value >= (1 << 63) else value


def from_signed_bits(value: int) -> int:
    return value + U64_LIMIT if value < 0 else value


def _as_python_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got a bool ({value!r})")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex():
            raise ValueError(f"{name} must be an integer, got a tensor of dtype {value.dtype} "
                             f"and shape {tuple(value.shape)}")
        return int(value.item())
    if isinstance(value, numbers.Integral):
        return int(value)
    raise ValueError(f"{name} must be an integer in [0, 2**64), got {type(value).__name__} "
                     f"{value!r}")


def check_seed(seed, name: str = "seed") -> int:
    """A seed as a Python int in [0, 2**64)."""
    value = _as_python_int(seed, name)
    if value < 0:
        raise ValueError(f"{name} must be non-negative (seeds are unsigned 64-bit), got {value}")
    if value >= U64_LIMIT:
        raise ValueError(f"{name} must be < 2**64 (seeds are unsigned 64-bit), got {value}")
    return value


def check_offset(offset, numel: int, name: str = "offset") -> int:
    """A base stream position such that positions offset .. offset + numel - 1 fit in 64 bits."""
    value = _as_python_int(offset, name)
    if value < 0:
        raise ValueError(f"{name} must be non-negative (stream positions are unsigned), got {value}")
    if value + numel > U64_LIMIT:
        raise ValueError(f"{name}={value} with {numel} elements would run past stream position "
                         f"2**64 - 1")
    return value


def check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, Sequence) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"{name} must be a sequence of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{name} must not have negative sizes, got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def check_seeds(seeds, name: str = "seeds") -> torch.Tensor:
    """Seeds as a CPU int64 tensor of signed bits; a clear error for anything else."""
    if isinstance(seeds, torch.Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got a tensor of dtype {seeds.dtype}")
        if seeds.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(seeds.shape)}")
        values = seeds.tolist()
    elif isinstance(seeds, Sequence) and not isinstance(seeds, (str, bytes)):
        values = list(seeds)
    else:
        raise ValueError(f"{name} must be a sequence or 1-D tensor of integers, got "
                         f"{type(seeds).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} is empty: need at least one seed")
    bits = [to_signed_bits(check_seed(v, f"{name}[{i}]")) for i, v in enumerate(values)]
    return torch.tensor(bits, dtype=torch.int64)


def check_coefficients(values, count: int, name: str, count_name: str = "seeds") -> torch.Tensor:
    """Per-seed float coefficients (weights, sigmas): right length, all finite; float64 CPU.

    Checked on Python floats: torch.isfinite and friends on a handful of values cost ~30 us,
    a large share of a small population_linear call."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [float(values)] * count
    tensor = None
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        tensor = values.detach().to("cpu", torch.float64)
        floats = tensor.tolist()
    else:
        try:
            floats = [_as_float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of floats: {exc}") from None
    if len(floats) != count:
        raise ValueError(f"{name} has {len(floats)} entries but {count_name} has {count}")
    bad = [i for i, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name} must be finite: {name}[{bad[0]}] = {floats[bad[0]]} "
                         f"({len(bad)} non-finite entries)")
    return tensor if tensor is not None else torch.tensor(floats, dtype=torch.float64)


def _as_float(value) -> float:
    if isinstance(value, (str, bytes)):  # float("1.5") would accept text
        raise TypeError(f"got text {value!r}")
    return float(value)


def check_scalar(value, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_dtype(dtype, name: str) -> torch.dtype:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be one of float32, float16, bfloat16; got {dtype}")
    return dtype


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 x_name: str = "x") -> None:
    """Shapes, dtypes, devices and layout of a (perturbed) linear layer's inputs."""
    for name, t in ((x_name, x), ("weight", weight), ("bias", bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape "
                         f"{tuple(weight.shape)}")
    check_dtype(weight.dtype, "weight.dtype")
    check_dtype(x.dtype, f"{x_name}.dtype")
    if x.dtype != weight.dtype:
        raise ValueError(f"{x_name}.dtype ({x.dtype}) must equal weight.dtype ({weight.dtype})")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{x_name} has shape {tuple(x.shape)}: its last dimension must equal "
                         f"weight's in_features ({weight.shape[1]})")
    if x.device != weight.device:
        raise ValueError(f"{x_name} is on {x.device} but weight is on {weight.device}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous: its noise is indexed by row-major position, "
                         "so a strided view would be ambiguous (call .contiguous() first)")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype:
            raise ValueError(f"bias.dtype ({bias.dtype}) must equal weight.dtype ({weight.dtype})")
        if bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")
