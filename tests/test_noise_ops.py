"""gaussian_noise, add_noise_ and weighted_noise_sum on every backend against the reference."""

import pytest
import torch

import corp_kernels as ck
from conftest import assert_normals_close, assert_rounded_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Ragged shapes (not multiples of any block or of 4), scalars, empties.
SHAPES = [(1,), (7,), (6, 42), (3, 5, 11), (0, 4), ()]
OFFSETS = [0, 1, 3, 4, 4099, (1 << 40) + 2]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("offset", OFFSETS)
def test_gaussian_noise_matches_reference(backend_device, shape, offset):
    backend, device = backend_device
    out = ck.gaussian_noise(shape, 2024, offset, device=device, backend=backend)
    expected = ck.gaussian_noise(shape, 2024, offset, backend="torch")
    assert out.shape == torch.Size(shape) and out.device.type == device
    assert_normals_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_noise_dtypes(backend_device, dtype):
    backend, device = backend_device
    out = ck.gaussian_noise((9, 13), 5, 2, dtype=dtype, device=device, backend=backend)
    expected = ck.gaussian_noise((9, 13), 5, 2, dtype=dtype, backend="torch")
    assert out.dtype == dtype
    assert_rounded_close(out, expected)


def test_offset_is_a_shard_of_the_stream(backend_device):
    """A slice of rows at offset rows*cols equals the same rows of the whole tensor."""
    backend, device = backend_device
    whole = ck.gaussian_noise((10, 7), 42, device=device, backend=backend)
    shard = ck.gaussian_noise((4, 7), 42, offset=3 * 7, device=device, backend=backend)
    assert torch.equal(whole[3:7], shard)


def test_offset_near_the_end_of_the_stream(backend_device):
    backend, device = backend_device
    last = (1 << 64) - 5
    out = ck.gaussian_noise((5,), 9, last, device=device, backend=backend)
    assert_normals_close(out, ck.gaussian_noise((5,), 9, last, backend="torch"))


def test_noise_statistics():
    """The stream is standard normal: mean 0, variance 1, no lane correlation (n = 2**18)."""
    x = ck.gaussian_noise((1 << 16, 4), 3)
    n = x.numel()
    assert abs(x.mean().item()) < 5 / n ** 0.5
    assert abs(x.var().item() - 1) < 5 * (2 / n) ** 0.5
    corr = torch.corrcoef(x.T)
    off_diag = corr - torch.eye(4)
    assert off_diag.abs().max().item() < 5 / (n / 4) ** 0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(5,), (6, 42), (2, 3, 17)], ids=str)
def test_add_noise_matches_reference(backend_device, dtype, shape):
    backend, device = backend_device
    base = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = base.clone().to(device)
    returned = ck.add_noise_(out, 77, -0.3, 5, backend=backend)
    assert returned is out
    expected = base.clone()
    ck.add_noise_(expected, 77, -0.3, 5, backend="torch")
    assert_rounded_close(out, expected)


def test_add_noise_reference_definition():
    base = torch.randn(6, 42)
    out = base.clone()
    ck.add_noise_(out, 1, 0.25, backend="torch")
    expected = base + 0.25 * ck.gaussian_noise((6, 42), 1, backend="torch")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("num_seeds", [1, 3, 8])
@pytest.mark.parametrize("shape", [(7,), (6, 42), (33, 65)], ids=str)
def test_weighted_noise_sum_matches_reference(backend_device, num_seeds, shape):
    backend, device = backend_device
    seeds = [11 * i + 2 for i in range(num_seeds)]
    weights = torch.linspace(-1.5, 2.0, num_seeds).tolist()
    out = ck.weighted_noise_sum(shape, seeds, weights, offset=3, device=device, backend=backend)
    expected = ck.weighted_noise_sum(shape, seeds, weights, offset=3, backend="torch")
    # K terms each within the normal tolerance of the reference, plus fp32 summation-order noise.
    scale = sum(abs(w) for w in weights)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=8 * 1.2e-7 * scale * 6)


def test_weighted_noise_sum_is_the_weighted_sum_of_noises():
    seeds, weights = [3, 1 << 40, 12], [0.5, -2.0, 1.25]
    out = ck.weighted_noise_sum((9, 10), seeds, weights, backend="torch")
    expected = sum(w * ck.gaussian_noise((9, 10), s, backend="torch")
                   for s, w in zip(seeds, weights))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weighted_noise_sum_dtype(dtype):
    out = ck.weighted_noise_sum((4, 5), [1, 2], [1.0, 1.0], dtype=dtype)
    assert out.dtype == dtype
