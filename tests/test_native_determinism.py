"""The C++ backend gives the same bits for any thread count.

Distributed search and streaming consolidation compare and merge results computed by processes
that may run with different OMP_NUM_THREADS, and the noise contract promises the same perturbation
everywhere. noise_sketch(side="left") used to add per-thread partial sums in an order set by the
work split (1 vs 2 threads: up to 7.6e-6 on values ~67), and the few-token linear path sized its
panels from the thread count. Shapes here are chosen to cut every op into several parallel pieces
(panels, chunks, reduction slots), so a split-dependent sum would show."""

import pytest
import torch

import corp_kernels as ck
from corp_kernels._chunked import strategy_forced

pytestmark = pytest.mark.skipif(not ck.backends()["cpp"].available,
                                reason="C++ extension not built")

THREADS = (1, 2, 3, 4)


def _data(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _forced(strategy, call):
    with strategy_forced(strategy):
        return call()


W_BF16 = _data(257, 129, dtype=torch.bfloat16, seed=1)
SEEDS = [3, (1 << 63) + 5, 77]
WEIGHTS = [0.5, -1.25, 2.0]

CASES = {
    "gaussian_noise": lambda: ck.gaussian_noise((100_003,), 9, 7, backend="cpp"),
    "add_noise_ bf16": lambda: ck.add_noise_(_data(100_003, dtype=torch.bfloat16), 9, 0.1,
                                             backend="cpp"),
    "weighted_noise_sum": lambda: ck.weighted_noise_sum((300, 1001), SEEDS, WEIGHTS, backend="cpp"),
    # The panel kernel, forced (the dispatcher sends a W this small to the chunked strategy):
    # 3 and 40 tokens: cache-sized panels, one thread each (products written into y's columns
    # below 16 tokens, into y^T from 16 on); 130: big panels and a multi-threaded GEMM.
    **{f"perturbed_linear fused T={t}": (lambda t=t: _forced("fused", lambda: ck.perturbed_linear(
        _data(t, 129, dtype=torch.bfloat16, seed=2), W_BF16, None, 11, 0.05, backend="cpp")))
       for t in (3, 40, 130)},
    # The dispatcher's own choice, chunked here (W + sigma * eps in blocks, then torch's matmul):
    # a one-token product (a GEMV), a few tokens, and many.
    **{f"perturbed_linear T={t}": (lambda t=t: ck.perturbed_linear(
        _data(t, 129, dtype=torch.bfloat16, seed=2), W_BF16, None, 11, 0.05, backend="cpp"))
       for t in (1, 3, 40, 600)},
    "population_linear": lambda: ck.population_linear(
        _data(3, 5, 129, seed=3), W_BF16.float(), None, SEEDS, [0.01, 0.02, 0.03], backend="cpp"),
    # 8000 x 64: 16 row panels of 512, so the left sketch sums 16 parts.
    "noise_sketch left": lambda: ck.noise_sketch((8000, 64), SEEDS, WEIGHTS, _data(5, 8000, seed=4),
                                                 side="left", backend="cpp"),
    "noise_sketch right": lambda: ck.noise_sketch((8000, 64), SEEDS, WEIGHTS, _data(64, 5, seed=5),
                                                  side="right", backend="cpp"),
    # 3M positions, K=3: 9 chunks of ~350k.
    "noise_gram": lambda: ck.noise_gram((3_000_000,), SEEDS, backend="cpp"),
}


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("op", list(CASES))
def test_bitwise_identical_for_1_to_4_threads(op, restore_threads):
    results = {}
    for n in THREADS:
        torch.set_num_threads(n)
        results[n] = CASES[op]()
    for n in THREADS[1:]:
        a, b = results[1], results[n]
        assert a.shape == b.shape and a.dtype == b.dtype
        differing = (a.view(-1).view(torch.uint8) != b.view(-1).view(torch.uint8)).sum().item()
        assert differing == 0, (f"{op}: {n} threads differ from 1 thread in {differing} bytes, "
                                f"max |diff| {(a.double() - b.double()).abs().max().item():.3g}")
