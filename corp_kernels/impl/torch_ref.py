"""Pure-PyTorch reference: the test oracle for every other backend.

It follows the noise contract (shared/noise-contract.md) literally and materializes whatever it
needs; clarity over speed. Philox's 32x32->64-bit products are formed from 16-bit halves so that
no int64 operation overflows.
"""

from __future__ import annotations

import torch

from .._validation import from_signed_bits, to_signed_bits

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
UINT32_TO_UNIT = 4.6566127342e-10
MIN_UNIFORM = 1.0e-7
TWO_PI = 6.283185307179586


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * multiplier for a in [0, 2**32), exactly, in int64."""
    p_lo = a * (multiplier & 0xFFFF)  # < 2**48
    p_hi = a * (multiplier >> 16)  # < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def philox4x32_10(counters: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 on int64 tensors: counters [n, 4] and keys [n, 2] of uint32 values."""
    x0, x1, x2, x3 = (counters[:, i].to(torch.int64) & MASK32 for i in range(4))
    k0, k1 = (keys[:, i].to(torch.int64) & MASK32 for i in range(2))
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(x0, PHILOX_M0)
        hi1, lo1 = _mulhilo(x2, PHILOX_M1)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return torch.stack([x0, x1, x2, x3], dim=1)


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    signed = torch.where(bits >= (1 << 31), bits - (1 << 32), bits).to(torch.int32)
    folded = torch.where(signed < 0, ~signed, signed)
    return folded.to(torch.float32) * torch.tensor(UINT32_TO_UNIT, dtype=torch.float32)


def _box_muller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u1 = torch.clamp(_uniform(a), min=MIN_UNIFORM)
    theta = torch.tensor(TWO_PI, dtype=torch.float32) * _uniform(b)
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(theta), r * torch.sin(theta)


def normals_of_counters(seed_bits: int, counters: torch.Tensor) -> torch.Tensor:
    """[n, 4] float32: the four normals of each 64-bit counter under key `seed`."""
    seed = from_signed_bits(seed_bits)
    n = counters.numel()
    words = torch.stack([counters & MASK32, counters >> 32,
                         torch.zeros_like(counters), torch.zeros_like(counters)], dim=1)
    keys = torch.tensor([[seed & MASK32, seed >> 32]], dtype=torch.int64).expand(n, 2)
    x = philox4x32_10(words, keys)
    n0, n1 = _box_muller(x[:, 0], x[:, 1])
    n2, n3 = _box_muller(x[:, 2], x[:, 3])
    return torch.stack([n0, n1, n2, n3], dim=1)


def noise_stream(seed_bits: int, offset_bits: int, numel: int) -> torch.Tensor:
    """float32 [numel]: noise(seed, offset + i) for i in range(numel), on the CPU."""
    offset = from_signed_bits(offset_bits)
    first_counter, skip = offset >> 2, offset & 3
    n_counters = (skip + numel + 3) // 4
    counters = first_counter + torch.arange(n_counters, dtype=torch.int64)
    return normals_of_counters(seed_bits, counters).flatten()[skip:skip + numel].clone()


def _noise(shape, seed_bits: int, offset_bits: int, device) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= s
    return noise_stream(seed_bits, offset_bits, numel).reshape(shape).to(device)


def gaussian_noise(shape, seed, offset, dtype, device):
    return _noise(shape, seed, offset, device).to(dtype)


def add_noise_(tensor, seed, alpha, offset):
    eps = _noise(tensor.shape, seed, offset, tensor.device)
    alpha32 = torch.tensor(alpha, dtype=torch.float32, device=tensor.device)
    tensor.copy_((tensor.float() + alpha32 * eps).to(tensor.dtype))


def weighted_noise_sum(shape, seeds, weights, offset, device):
    acc = torch.zeros(shape, dtype=torch.float32, device=device)
    for seed, w in zip(seeds.tolist(), weights.to(torch.float32).tolist()):
        acc += torch.tensor(w, dtype=torch.float32, device=device) * _noise(shape, seed, offset,
                                                                            device)
    return acc


def _perturbed_weight(weight, seed, sigma, offset):
    eps = _noise(weight.shape, seed, offset, weight.device)
    return weight.float() + torch.tensor(sigma, dtype=torch.float32, device=weight.device) * eps


def perturbed_linear(x, weight, bias, seed, sigma, offset):
    y = x.float() @ _perturbed_weight(weight, seed, sigma, offset).T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def population_linear(x, weight, bias, seeds, sigmas, offset):
    members = [perturbed_linear(x[p], weight, bias, s, g, offset)
               for p, (s, g) in enumerate(zip(seeds.tolist(), sigmas.tolist()))]
    return torch.stack(members)


def noise_sketch(shape, seeds, weights, test_matrix, left, offset):
    delta = weighted_noise_sum(shape, seeds, weights, offset, test_matrix.device)
    tm = test_matrix.float()
    return tm @ delta if left else delta @ tm


def noise_gram(numel, seeds, offset, device, chunk=1 << 16):
    """G[i, j] = sum_e eps_i[e] eps_j[e], in float64 from the float32 noise, chunk by chunk."""
    seed_list = seeds.tolist()
    gram = torch.zeros((len(seed_list), len(seed_list)), dtype=torch.float64)
    first = from_signed_bits(offset)
    for start in range(0, numel, chunk):
        length = min(chunk, numel - start)
        position = (first + start) & 0xFFFFFFFFFFFFFFFF
        rows = torch.stack([noise_stream(s, to_signed_bits(position), length) for s in seed_list])
        rows = rows.to(torch.float64)
        gram += rows @ rows.T
    return gram.to(device)
