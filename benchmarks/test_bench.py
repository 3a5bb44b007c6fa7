"""pytest-benchmark entry points (not part of the test suite):

    .venv/bin/python -m pytest benchmarks/test_bench.py --benchmark-only

Each op next to the baseline it replaces; compare within one run's table.
"""

import pytest
import torch
import torch.nn.functional as F

import corp_kernels as ck

SIGMA = 1e-3


@pytest.mark.parametrize("impl", ["ours", "torch.randn"])
def test_noise_generation(benchmark, impl):
    if impl == "ours":
        benchmark(ck.gaussian_noise, (1 << 22,), 7)
    else:
        benchmark(torch.randn, 1 << 22)


@pytest.mark.parametrize("tokens", [1, 16])
@pytest.mark.parametrize("impl", ["fused", "materialize", "plain"])
def test_perturbed_linear(benchmark, impl, tokens):
    w = torch.randn(2048, 2048) / 2048 ** 0.5
    x = torch.randn(tokens, 2048)
    if impl == "fused":
        benchmark(ck.perturbed_linear, x, w, None, 3, SIGMA)
    elif impl == "materialize":
        benchmark(lambda: F.linear(x, w + SIGMA * ck.gaussian_noise(w.shape, 3)))
    else:
        benchmark(F.linear, x, w)


@pytest.mark.parametrize("impl", ["ours", "torch_loop"])
def test_weighted_noise_sum(benchmark, impl):
    shape, seeds = (1536, 576), list(range(50))
    weights = [1.0 / 50] * 50

    def torch_loop():
        acc = torch.zeros(shape)
        for s, w in zip(seeds, weights):
            acc += w * torch.randn(shape, generator=torch.Generator().manual_seed(s))
        return acc

    if impl == "ours":
        benchmark(ck.weighted_noise_sum, shape, seeds, weights)
    else:
        benchmark(torch_loop)
