"""noise_sketch on every backend, and randomized_svd_noise against an exact SVD."""

import pytest
import torch

import corp_kernels as ck

pytestmark = pytest.mark.op("noise_sketch")

SEEDS = [4, 1 << 33, 99]
WEIGHTS = [0.7, -1.2, 0.4]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("shape", [(37, 53), (32, 48), (5, 70)], ids=str)
@pytest.mark.parametrize("offset", [0, 6])
def test_noise_sketch_matches_materialized(backend_device, side, shape, offset):
    backend, device = backend_device
    m, n = shape
    g = torch.Generator().manual_seed(1)
    test_matrix = torch.randn((n, 6) if side == "right" else (6, m), generator=g)
    out = ck.noise_sketch(shape, SEEDS, WEIGHTS, test_matrix.to(device), side=side, offset=offset,
                          backend=backend)
    delta = ck.weighted_noise_sum(shape, SEEDS, WEIGHTS, offset=offset, backend="torch").double()
    expected = delta @ test_matrix.double() if side == "right" else test_matrix.double() @ delta
    assert out.dtype == torch.float32 and out.shape == expected.shape
    inner = n if side == "right" else m
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=1e-5 * inner)


# 40 seeds with decaying weights: their sum is itself a Gaussian matrix (flat spectrum).
RSVD_SEEDS = list(range(100, 140))
RSVD_WEIGHTS = torch.linspace(1.0, 0.1, len(RSVD_SEEDS)).tolist()


@pytest.mark.parametrize("power_iters", [0, 2])
def test_randomized_svd_matches_exact_svd(power_iters):
    shape, rank = (60, 45), 4
    seeds, weights = RSVD_SEEDS, RSVD_WEIGHTS
    u, s, v = ck.randomized_svd_noise(shape, seeds, weights, rank, oversample=10,
                                      power_iters=power_iters)
    assert u.shape == (60, rank) and s.shape == (rank,) and v.shape == (45, rank)
    delta = ck.weighted_noise_sum(shape, seeds, weights).double()
    exact = torch.linalg.svdvals(delta)
    # Orthonormal factors.
    torch.testing.assert_close(u.T.double() @ u.double(), torch.eye(rank, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(v.T.double() @ v.double(), torch.eye(rank, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # A Gaussian matrix has a flat spectrum, the hard case: with power iterations the top singular
    # values come within 2%; the residual is within 10% of the optimal rank-r residual.
    rel = ((s.double() - exact[:rank]).abs() / exact[:rank]).max().item()
    residual = torch.linalg.matrix_norm(delta - u.double() @ torch.diag(s.double()) @ v.T.double())
    optimal = exact[rank:].square().sum().sqrt()
    if power_iters:
        assert rel < 0.02
    assert residual.item() <= 1.10 * optimal.item()


def test_randomized_svd_recovers_low_rank_structure_exactly():
    """A 2 x 40 sum has rank 2; a rank-2 sketch of it reproduces it exactly."""
    shape = (2, 40)
    u, s, v = ck.randomized_svd_noise(shape, [1, 2], [1.0, 0.5], 2, oversample=0)
    delta = ck.weighted_noise_sum(shape, [1, 2], [1.0, 0.5])
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, delta, atol=1e-4, rtol=0)


@pytest.mark.triton
def test_randomized_svd_on_triton_matches_cpp(backend_device):
    backend, device = backend_device
    shape = (20, 24)
    ref = ck.randomized_svd_noise(shape, [1, 2, 3], [1.0, -1.0, 0.5], 3, backend="torch")
    out = ck.randomized_svd_noise(shape, [1, 2, 3], [1.0, -1.0, 0.5], 3, backend=backend,
                                  device=device)
    torch.testing.assert_close(out[1].cpu(), ref[1], rtol=1e-4, atol=1e-4)


def test_randomized_svd_budget_path_matches_streaming():
    """Within a memory budget the sum is materialized once; the factors are the same."""
    shape, seeds, weights = (50, 30), [1, 2, 3, 4], [1.0, -0.5, 0.25, 2.0]
    streaming = ck.randomized_svd_noise(shape, seeds, weights, 3)
    budget = ck.randomized_svd_noise(shape, seeds, weights, 3, memory_budget_bytes=50 * 30 * 4)
    torch.testing.assert_close(budget[1], streaming[1], rtol=1e-4, atol=1e-4)
    # Same subspaces (up to sign): |u_s . u_b| = 1 per column.
    cos = (budget[0] * streaming[0]).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(3), rtol=0, atol=1e-3)


@pytest.mark.triton
@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_triton_sketch_split_along_the_walked_dimension(left, splits):
    """The walked dimension split 1, 2, 3 and 7 ways (5 blocks of 32: uneven shares, and more
    splits than blocks) gives the unsplit product; the offset is unaligned, so every tile takes
    the general noise path."""
    from corp_kernels.triton_kernels.noise_sketch import noise_sketch as launch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (150, 20) if left else (20, 150)
    g = torch.Generator().manual_seed(2)
    test_matrix = torch.randn((5, 150) if left else (150, 5), generator=g)
    out = launch(shape, torch.tensor(SEEDS), torch.tensor(WEIGHTS), test_matrix.to(device), left,
                 offset=3, splits=splits)
    delta = ck.weighted_noise_sum(shape, SEEDS, WEIGHTS, offset=3, backend="torch").double()
    expected = test_matrix.double() @ delta if left else delta @ test_matrix.double()
    torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=1e-5 * 150)


def test_sketch_splits_fill_the_device_without_empty_splits(monkeypatch):
    from corp_kernels.triton_kernels import noise_sketch
    monkeypatch.setattr(noise_sketch, "sm_count", lambda device: 132)  # an H100
    # 4096 rows in blocks of 32 own 128 blocks: 5 splits make 640 programs (~4.8 per SM)
    assert noise_sketch.sketch_splits(128, 128, torch.device("cpu")) == 5
    assert noise_sketch.sketch_splits(1, 3, torch.device("cpu")) == 3  # never more than blocks
    assert noise_sketch.sketch_splits(600, 100, torch.device("cpu")) == 1
    monkeypatch.setattr(noise_sketch, "sm_count", lambda device: 4)  # the interpreter's stand-in
    assert noise_sketch.sketch_splits(2, 10, torch.device("cpu")) == 8
