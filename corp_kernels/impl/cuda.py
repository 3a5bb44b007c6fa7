"""CUDA-extension backend (csrc/cuda): gaussian_noise, add_noise_ and weighted_noise_sum.

The matmul-shaped ops (perturbed_linear, population_linear, noise_sketch) are Triton's on a GPU;
dispatch.IMPLEMENTED_OPS keeps callers from reaching for them here.
"""

from __future__ import annotations

import torch


def gaussian_noise(shape, seed, offset, dtype, device):
    out = torch.empty(shape, dtype=dtype, device=device)
    torch.ops.corp_cuda.noise_fill_(out, seed, offset, 1.0, False)
    return out


def add_noise_(tensor, seed, alpha, offset):
    torch.ops.corp_cuda.noise_fill_(tensor, seed, offset, alpha, True)


def weighted_noise_sum(shape, seeds, weights, offset, device):
    return torch.ops.corp_cuda.weighted_noise_sum(list(shape), seeds, weights, offset,
                                                  torch.device(device))
