"""Triton backend: launchers in corp_kernels/triton_kernels, one kernel per file."""

from __future__ import annotations

import contextlib

import torch

from ..triton_kernels.gaussian_noise import noise_fill_
from ..triton_kernels.noise_gram import noise_gram as _noise_gram
from ..triton_kernels.noise_sketch import noise_sketch as _noise_sketch
from ..triton_kernels import perturbed_linear as _linear
from ..triton_kernels import weighted_noise_sum as _wsum
from ..triton_kernels.philox import philox4x32_10  # noqa: F401
from ..triton_kernels.noise_tile import device_guard
from .._validation import from_signed_bits


def _on_device(device: torch.device):
    """Launch on `device`: Triton launches on the current GPU, which need not be that one."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def gaussian_noise(shape, seed, offset, dtype, device):
    out = torch.empty(shape, dtype=dtype, device=device)
    return noise_fill_(out, seed, from_signed_bits(offset), 1.0, False)


def add_noise_(tensor, seed, alpha, offset):
    noise_fill_(tensor, seed, from_signed_bits(offset), alpha, True)


def noise_sketch(shape, seeds, weights, test_matrix, left, offset):
    with device_guard(test_matrix):
        return _noise_sketch(shape, seeds, weights, test_matrix, left, from_signed_bits(offset))


def weighted_noise_sum(shape, seeds, weights, offset, device):
    with _on_device(device):
        return _wsum.weighted_noise_sum(shape, seeds, weights, from_signed_bits(offset), device)


def perturbed_linear(x, weight, bias, seed, sigma, offset):
    return _linear.perturbed_linear(x, weight, bias, seed, sigma, from_signed_bits(offset))


def population_linear(x, weight, bias, seeds, sigmas, offset):
    return _linear.population_linear(x, weight, bias, seeds, sigmas, from_signed_bits(offset))


def noise_gram(numel, seeds, offset, device):
    return _noise_gram(numel, seeds, from_signed_bits(offset), device)
