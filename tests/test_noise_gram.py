"""noise_gram on every backend against the materialized noises, and its input checks."""

import pytest
import torch

import corp_kernels as ck

pytestmark = pytest.mark.op("noise_gram")

SEEDS = [3, 1 << 40, 2**64 - 1, 17, 17 + 1]


def materialized_gram(shape, seeds, offset):
    rows = torch.stack([ck.gaussian_noise(shape, s, offset, backend="torch").flatten().double()
                        for s in seeds])
    return rows @ rows.T


@pytest.mark.parametrize("shape", [(7, 9), (33, 17), (1030,), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("offset", [0, 3, 2**40 + 2])
def test_noise_gram_matches_materialized(backend_device, shape, offset):
    backend, device = backend_device
    gram = ck.noise_gram(shape, SEEDS, offset=offset, device=device, backend=backend)
    expected = materialized_gram(shape, SEEDS, offset)
    assert gram.dtype == torch.float64 and gram.shape == (len(SEEDS), len(SEEDS))
    # fp32 partial products: error relative to sqrt(G_ii G_jj), the scale of each entry's terms.
    scale = expected.diagonal().sqrt()
    rel = (gram.cpu() - expected).abs() / (scale[:, None] * scale[None, :])
    assert rel.max().item() < 1e-5
    torch.testing.assert_close(gram.cpu(), gram.cpu().T, rtol=0, atol=1e-6 * scale.max() ** 2)


def test_noise_gram_coefficients_scale_rows_and_columns(backend_device):
    backend, device = backend_device
    coeffs = [0.5, -2.0, 1.0, 0.0, 3.0]
    plain = ck.noise_gram((11, 13), SEEDS, device=device, backend=backend).cpu()
    scaled = ck.noise_gram((11, 13), SEEDS, coeffs, device=device, backend=backend).cpu()
    c = torch.tensor(coeffs, dtype=torch.float64)
    torch.testing.assert_close(scaled, plain * c[:, None] * c[None, :])


def test_distinct_seeds_are_nearly_but_not_exactly_orthogonal():
    numel = 4096
    gram = ck.noise_gram((numel,), list(range(20)))
    cos = gram / torch.outer(gram.diagonal().sqrt(), gram.diagonal().sqrt())
    off = cos[~torch.eye(20, dtype=torch.bool)]
    assert off.abs().max().item() < 6 / numel ** 0.5  # ~ 1/sqrt(numel), as for independent noise
    assert (off != 0).all()  # yet not zero: the exact values matter for small tensors
    assert ((gram.diagonal() / numel) - 1).abs().max().item() < 0.1


@pytest.mark.parametrize("bad, match", [
    (dict(seeds=[]), "seeds"),
    (dict(seeds=[-1]), "seeds"),
    (dict(seeds=[1.5]), "seeds"),
    (dict(coeffs=[1.0]), "coeffs"),
    (dict(coeffs=[float("nan"), 1.0]), "coeffs"),
    (dict(shape=(3, -1)), "shape"),
])
def test_noise_gram_rejects_bad_input(bad, match):
    args = dict(shape=(3, 4), seeds=[1, 2], coeffs=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        ck.noise_gram(args["shape"], args["seeds"], args["coeffs"])


@pytest.mark.parametrize("count, offset", [(70, 0), (70, 5), (130, 2**33 + 3)])
def test_noise_gram_many_seed_blocks(backend_device, count, offset):
    """More seeds than one block of the Triton kernel (64): off-diagonal blocks, the mirrored
    lower triangle and padded seeds of the last block."""
    backend, device = backend_device
    seeds = [7 * i + 1 for i in range(count)]
    shape = (3, 37)
    gram = ck.noise_gram(shape, seeds, offset=offset, device=device, backend=backend).cpu()
    expected = materialized_gram(shape, seeds, offset)
    scale = expected.diagonal().sqrt()
    rel = (gram - expected).abs() / (scale[:, None] * scale[None, :])
    assert rel.max().item() < 1e-5
