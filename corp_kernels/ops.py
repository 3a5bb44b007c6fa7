"""The public ops of corp_kernels.

Each op is declared once as a `torch.library` op (namespace `corp_kernels`) with a fake
implementation, so it traces under torch.compile; its body dispatches to the backend chosen by
`dispatch.resolve`. The public functions validate their arguments, then call the op.

Noise contract: normal g of key `seed` is lane g % 4 of Triton's tl.randn4x(seed, g // 4)
(Philox4x32-10 + Box-Muller, float32). A tensor's noise at base position `offset` puts normal
offset + i at its row-major flat index i. See shared/noise-contract.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _validation as V
from .dispatch import implementation, resolve

_DEVICE_LIKE = torch.device | str


# --- op declarations ------------------------------------------------------------------------------
# Seeds and offsets are passed as int64 bits of the unsigned values; seed lists as int64 tensors and
# per-seed coefficients as float64 tensors, on the CPU.
#
# Declared with torch.library.Library rather than torch.library.custom_op: custom_op wraps every
# kernel in torch._disable_dynamo, whose first call imports torch._dynamo and, through it, triton:
# ~1.4 s and ~145 MiB of resident memory in every process that only wants CPU noise (it was half
# of the streaming consolidation's peak). The schema is still inferred from the annotations.

_LIBRARY = torch.library.Library("corp_kernels", "DEF")
_BODIES: dict = {}  # op -> the Python function registered as its kernel


def _op(name: str, mutates_args: tuple[str, ...] = ()):
    """Declare the decorated function as the op corp_kernels::`name`; returns the op."""
    def declare(fn):
        _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=mutates_args))
        _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        op = getattr(torch.ops.corp_kernels, name).default
        _BODIES[op] = fn
        if not mutates_args:  # forward runs without grad; backward says why it cannot
            torch.library.register_autograd(f"corp_kernels::{name}", _no_gradient(name),
                                            lib=_LIBRARY)
        return op
    return declare


def _no_gradient(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"corp_kernels.{name} has no gradient: the noise ops serve gradient-free "
                           f"search; detach the inputs or run it under torch.no_grad()")
    return backward


def _fake(name: str):
    return torch.library.register_fake(f"corp_kernels::{name}", lib=_LIBRARY)


@_op("philox4x32_10")
def _philox_op(counters: torch.Tensor, keys: torch.Tensor, backend: str) -> torch.Tensor:
    return implementation(backend).philox4x32_10(counters, keys)


@_fake("philox4x32_10")
def _(counters, keys, backend):
    return torch.empty_like(counters, dtype=torch.int64)


@_op("gaussian_noise")
def _gaussian_noise_op(shape: list[int], seed: int, offset: int, dtype: torch.dtype,
                       device: torch.device, backend: str) -> torch.Tensor:
    return implementation(backend).gaussian_noise(tuple(shape), seed, offset, dtype, device)


@_fake("gaussian_noise")
def _(shape, seed, offset, dtype, device, backend):
    return torch.empty(shape, dtype=dtype, device=device)


@_op("add_noise_", mutates_args=("tensor",))
def _add_noise_op(tensor: torch.Tensor, seed: int, alpha: float, offset: int,
                  backend: str) -> None:
    implementation(backend).add_noise_(tensor, seed, alpha, offset)


@_fake("add_noise_")
def _(tensor, seed, alpha, offset, backend):
    return None


@_op("weighted_noise_sum")
def _weighted_noise_sum_op(shape: list[int], seeds: torch.Tensor, weights: torch.Tensor,
                           offset: int, device: torch.device, backend: str) -> torch.Tensor:
    return implementation(backend).weighted_noise_sum(tuple(shape), seeds, weights, offset, device)


@_fake("weighted_noise_sum")
def _(shape, seeds, weights, offset, device, backend):
    return torch.empty(shape, dtype=torch.float32, device=device)


@_op("perturbed_linear")
def _perturbed_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         seed: int, sigma: float, offset: int, backend: str) -> torch.Tensor:
    return implementation(backend).perturbed_linear(x, weight, bias, seed, sigma, offset)


@_fake("perturbed_linear")
def _(x, weight, bias, seed, sigma, offset, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_op("population_linear")
def _population_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          seeds: torch.Tensor, sigmas: torch.Tensor, offset: int,
                          backend: str) -> torch.Tensor:
    return implementation(backend).population_linear(x, weight, bias, seeds, sigmas, offset)


@_fake("population_linear")
def _(x, weight, bias, seeds, sigmas, offset, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_op("noise_sketch")
def _noise_sketch_op(shape: list[int], seeds: torch.Tensor, weights: torch.Tensor,
                     test_matrix: torch.Tensor, left: bool, offset: int,
                     backend: str) -> torch.Tensor:
    return implementation(backend).noise_sketch(tuple(shape), seeds, weights, test_matrix, left,
                                                offset)


@_fake("noise_sketch")
def _(shape, seeds, weights, test_matrix, left, offset, backend):
    rows, cols = shape
    out = (test_matrix.shape[0], cols) if left else (rows, test_matrix.shape[1])
    return test_matrix.new_empty(out, dtype=torch.float32)


@_op("noise_gram")
def _noise_gram_op(numel: int, seeds: torch.Tensor, offset: int, device: torch.device,
                   backend: str) -> torch.Tensor:
    return implementation(backend).noise_gram(numel, seeds, offset, device)


@_fake("noise_gram")
def _(numel, seeds, offset, device, backend):
    return torch.empty((seeds.numel(), seeds.numel()), dtype=torch.float64, device=device)


# --- eager calls of the matmul ops ----------------------------------------------------------------
# Going through the dispatcher and the autograd wrapper costs 10-15 us per call on one CPU core
# (an 8 x 8 perturbed_linear: 23 us through the op, 11 us for its body), most of a small layer's
# time in a host-bound decode step. Where nothing could tell the two apart, the matmul ops call
# the body directly: not while torch.compile or export traces, not under a dispatch or function
# mode (FakeTensorMode, ...), a functorch transform, forward-mode AD or the profiler (which
# records the op by name), not for tensor subclasses or meta tensors (the op's fake
# implementation answers those), and not when autograd would record the call (then the op's
# backward says there is no gradient).


def _direct_call_is_safe(args) -> bool:
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None
            or torch.autograd.profiler._is_profiler_enabled
            or torch.autograd.forward_ad._current_level >= 0):
        return False
    grad = torch.is_grad_enabled()
    for t in args:
        if isinstance(t, torch.Tensor) and (type(t) not in (torch.Tensor, torch.nn.Parameter)
                                            or (grad and t.requires_grad)
                                            or t.device.type not in ("cpu", "cuda")):  # meta
            return False
    return True


def _call(op, *args):
    """op(*args), or its body where the two cannot differ (above)."""
    return _BODIES[op](*args) if _direct_call_is_safe(args) else op(*args)


# --- public API -----------------------------------------------------------------------------------


def philox4x32_10(counters: torch.Tensor, keys: torch.Tensor, *,
                  backend: str | None = None) -> torch.Tensor:
    """Raw Philox4x32-10 words: counters [n, 4] and keys [n, 2] of uint32 values held in int64.

    Exposed so that every backend's integer generator can be checked bit for bit against the
    Random123 known answers.
    """
    if counters.dim() != 2 or counters.shape[1] != 4:
        raise ValueError(f"counters must have shape [n, 4], got {tuple(counters.shape)}")
    if keys.shape != (counters.shape[0], 2):
        raise ValueError(f"keys must have shape [{counters.shape[0]}, 2], got {tuple(keys.shape)}")
    for name, t in (("counters", counters), ("keys", keys)):
        if t.is_floating_point() or ((t < 0) | (t > 0xFFFFFFFF)).any():
            raise ValueError(f"{name} must hold integers in [0, 2**32)")
    return _philox_op(counters.to(torch.int64), keys.to(torch.int64),
                      resolve(backend, counters.device, "philox4x32_10"))


def gaussian_noise(shape: Sequence[int], seed: int, offset: int = 0, *,
                   dtype: torch.dtype = torch.float32, device: _DEVICE_LIKE = "cpu",
                   backend: str | None = None) -> torch.Tensor:
    """Standard normal noise of key `seed`: element i is noise(seed, offset + i).

    Generated in float32 and rounded once to `dtype`.
    """
    shape = V.check_shape(shape)
    numel = _numel(shape)
    seed = V.check_seed(seed)
    offset = V.check_offset(offset, numel)
    V.check_dtype(dtype, "dtype")
    device = torch.device(device)
    return _gaussian_noise_op(list(shape), V.to_signed_bits(seed), V.to_signed_bits(offset), dtype,
                              device, resolve(backend, device, "gaussian_noise"))


def add_noise_(tensor: torch.Tensor, seed: int, alpha: float, offset: int = 0, *,
               backend: str | None = None) -> torch.Tensor:
    """In place: tensor += alpha * noise(seed), computed in float32, rounded once to tensor.dtype.

    Note that subtracting the same noise afterwards does not restore a low-precision tensor
    exactly; keep a copy of what you perturb if you need it back bit for bit.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    V.check_dtype(tensor.dtype, "tensor.dtype")
    if not tensor.is_contiguous():
        raise ValueError("tensor must be contiguous: its noise is indexed by row-major position")
    seed = V.check_seed(seed)
    alpha = V.check_scalar(alpha, "alpha")
    offset = V.check_offset(offset, tensor.numel())
    _add_noise_op(tensor, V.to_signed_bits(seed), alpha, V.to_signed_bits(offset),
                  resolve(backend, tensor.device, "add_noise_"))
    return tensor


def perturbed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seed: int,
                     sigma: float, *, offset: int = 0,
                     backend: str | None = None) -> torch.Tensor:
    """x @ (weight + sigma * eps(seed)).T + bias, with eps of weight's shape at stream `offset`.

    The perturbed weight is formed in float32 a tile or a block of rows at a time, never in a
    tensor larger than a few MiB (the C++ backend's block is the whole weight when its float32
    copy is small, at most 4 MiB: one GEMM is faster there), and products accumulate in float32;
    the result has x's dtype. On a GPU the Triton kernel rounds each perturbed tile to x's dtype
    when x is fp16/bf16, for tensor cores.
    """
    V.check_linear(x, weight, bias)
    seed = V.check_seed(seed)
    sigma = V.check_scalar(sigma, "sigma")
    offset = V.check_offset(offset, weight.numel())
    x = x.contiguous()
    return _call(_perturbed_linear_op, x, weight, bias, V.to_signed_bits(seed), sigma,
                 V.to_signed_bits(offset), resolve(backend, x.device, "perturbed_linear"))


def population_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seeds,
                      sigmas, *, offset: int = 0, backend: str | None = None) -> torch.Tensor:
    """Member p computes x[p] @ (weight + sigmas[p] * eps(seeds[p])).T + bias.

    x: [P, ..., in_features] -> [P, ..., out_features]. `sigmas` is one float per member or a
    single float for all. Weight tiles are shared by all members.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of shape [P, ..., in_features], got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    V.check_linear(x, weight, bias)
    seed_bits = V.check_seeds(seeds)
    if seed_bits.numel() != x.shape[0]:
        raise ValueError(f"seeds has {seed_bits.numel()} entries but x has P={x.shape[0]} members "
                         f"(x.shape[0])")
    sigma_values = V.check_coefficients(sigmas, seed_bits.numel(), "sigmas")
    offset = V.check_offset(offset, weight.numel())
    x = x.contiguous()
    return _call(_population_linear_op, x, weight, bias, seed_bits, sigma_values,
                 V.to_signed_bits(offset), resolve(backend, x.device, "population_linear"))


def weighted_noise_sum(shape: Sequence[int], seeds, weights, *, offset: int = 0,
                       dtype: torch.dtype = torch.float32, device: _DEVICE_LIKE = "cpu",
                       backend: str | None = None) -> torch.Tensor:
    """sum_i weights[i] * eps(seeds[i]) over `shape`, accumulated in float32 (in seed order).

    Streaming: each block of the output is finished across all seeds before the next; memory is the
    output, never K noise tensors.
    """
    shape = V.check_shape(shape)
    seed_bits = V.check_seeds(seeds)
    weight_values = V.check_coefficients(weights, seed_bits.numel(), "weights")
    offset = V.check_offset(offset, _numel(shape))
    V.check_dtype(dtype, "dtype")
    device = torch.device(device)
    out = _weighted_noise_sum_op(list(shape), seed_bits, weight_values, V.to_signed_bits(offset),
                                 device, resolve(backend, device, "weighted_noise_sum"))
    return out.to(dtype)


def noise_sketch(shape: Sequence[int], seeds, weights, test_matrix: torch.Tensor, *,
                 side: str = "right", offset: int = 0,
                 backend: str | None = None) -> torch.Tensor:
    """(sum_i w_i eps_i) @ test_matrix (side="right", test_matrix [n, r]) or
    test_matrix @ (sum_i w_i eps_i) (side="left", test_matrix [r, m]) for an [m, n] noise sum,
    without materializing the sum: memory O((m + n) * r). Result in float32.
    """
    shape = V.check_shape(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be 2-D [rows, cols] for a sketch, got {shape}")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if not isinstance(test_matrix, torch.Tensor) or test_matrix.dim() != 2:
        raise ValueError("test_matrix must be a 2-D tensor")
    V.check_dtype(test_matrix.dtype, "test_matrix.dtype")
    left = side == "left"
    inner = shape[0] if left else shape[1]
    if (test_matrix.shape[1] if left else test_matrix.shape[0]) != inner:
        expected = "[r, rows]" if left else "[cols, r]"
        raise ValueError(f"test_matrix must be {expected} = [{'r, ' if left else ''}{inner}"
                         f"{'' if left else ', r'}] for side={side!r} and shape {shape}, got "
                         f"{tuple(test_matrix.shape)}")
    seed_bits = V.check_seeds(seeds)
    weight_values = V.check_coefficients(weights, seed_bits.numel(), "weights")
    offset = V.check_offset(offset, _numel(shape))
    return _noise_sketch_op(list(shape), seed_bits, weight_values, test_matrix.contiguous(), left,
                            V.to_signed_bits(offset),
                            resolve(backend, test_matrix.device, "noise_sketch"))


def noise_gram(shape: Sequence[int], seeds, coeffs=None, *, offset: int = 0,
               device: _DEVICE_LIKE = "cpu", backend: str | None = None) -> torch.Tensor:
    """K x K float64 Gram of the members' noises over a tensor of `shape`:
    G[i, j] = coeffs[i] * coeffs[j] * <eps(seeds[i]), eps(seeds[j])>.

    Streaming: every tile of all K noises is generated once and multiplied into the K x K
    accumulator, so memory is O(K * tile + K^2), never K tensors of `shape`. Distinct seeds are
    nearly, not exactly, orthogonal (cosines ~ 1/sqrt(numel)); this gives the exact values.
    """
    shape = V.check_shape(shape)
    seed_bits = V.check_seeds(seeds)
    numel = _numel(shape)
    offset = V.check_offset(offset, numel)
    device = torch.device(device)
    gram = _noise_gram_op(numel, seed_bits, V.to_signed_bits(offset), device,
                          resolve(backend, device, "noise_gram"))
    if coeffs is not None:
        c = V.check_coefficients(coeffs, seed_bits.numel(), "coeffs").to(gram.device)
        gram = gram * c[:, None] * c[None, :]
    return gram


def _numel(shape: Sequence[int]) -> int:
    numel = 1
    for s in shape:
        numel *= s
    return numel
