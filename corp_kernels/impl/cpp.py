"""C++ (OpenMP) CPU backend: thin calls into the `corp_cpu` torch ops of csrc/cpu/noise_ops.cpp."""

from __future__ import annotations

import torch


def _ops():
    return torch.ops.corp_cpu


def philox4x32_10(counters, keys):
    return _ops().philox4x32_10(counters, keys)


def gaussian_noise(shape, seed, offset, dtype, device):
    out = torch.empty(shape, dtype=dtype, device=device)
    _ops().noise_fill_(out, seed, offset, 1.0, False)
    return out


def add_noise_(tensor, seed, alpha, offset):
    _ops().noise_fill_(tensor, seed, offset, alpha, True)


def weighted_noise_sum(shape, seeds, weights, offset, device):
    return _ops().weighted_noise_sum(list(shape), seeds, weights, offset)


def perturbed_linear(x, weight, bias, seed, sigma, offset):
    return _ops().perturbed_linear(x, weight, bias, seed, offset, sigma)


def population_linear(x, weight, bias, seeds, sigmas, offset):
    return _ops().population_linear(x, weight, bias, seeds, sigmas, offset)


def noise_sketch(shape, seeds, weights, test_matrix, left, offset):
    rows, cols = shape
    return _ops().noise_sketch(rows, cols, seeds, weights, test_matrix, left, offset)


def noise_gram(numel, seeds, offset, device):
    return _ops().noise_gram(numel, seeds, offset)
