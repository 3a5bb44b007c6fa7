"""The integer generator: Random123 known answers, bit-identical on every backend."""

import pytest
import torch

import corp_kernels as ck
from corp_kernels.impl import torch_ref

# Random123 kat_vectors for philox4x32_10: (counter, key, expected output).
KNOWN_ANSWERS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]

# shared/noise-contract.md: the first normals of key 1234.
KEY_1234_NORMALS = [-0.44222745, 1.5943666, -0.94150925, 0.6151633, 0.11843181, 0.73432505,
                    1.32964, 2.0987196]


@pytest.mark.op("philox4x32_10")
def test_known_answers_bitwise(backend_device):
    backend, device = backend_device
    counters = torch.tensor([c for c, _, _ in KNOWN_ANSWERS], device=device)
    keys = torch.tensor([k for _, k, _ in KNOWN_ANSWERS], device=device)
    out = ck.philox4x32_10(counters, keys, backend=backend)
    assert out.cpu().tolist() == [e for _, _, e in KNOWN_ANSWERS]


@pytest.mark.op("philox4x32_10")
def test_random_words_bitwise_equal_reference(backend_device):
    backend, device = backend_device
    g = torch.Generator().manual_seed(0)
    counters = torch.randint(0, 1 << 32, (300, 4), generator=g, dtype=torch.int64)
    keys = torch.randint(0, 1 << 32, (300, 2), generator=g, dtype=torch.int64)
    expected = torch_ref.philox4x32_10(counters, keys)
    out = ck.philox4x32_10(counters.to(device), keys.to(device), backend=backend)
    assert torch.equal(out.cpu(), expected)


def test_first_normals_of_key_1234(backend_device):
    backend, device = backend_device
    out = ck.gaussian_noise((8,), 1234, device=device, backend=backend)
    torch.testing.assert_close(out.cpu(), torch.tensor(KEY_1234_NORMALS), rtol=1e-6, atol=1e-6)


def test_reference_lane_mapping_matches_contract():
    """Position g is lane g % 4 of counter g // 4, and the counter carries into its high word."""
    counters = torch.tensor([(1 << 32) - 1, 1 << 32, 5], dtype=torch.int64)
    per_counter = torch_ref.normals_of_counters(77, counters)
    for row, c in enumerate(counters.tolist()):
        for lane in range(4):
            value = torch_ref.noise_stream(77, 4 * c + lane, 1)
            assert torch.equal(value, per_counter[row, lane:lane + 1])


@pytest.mark.parametrize("seed", [0, 1, (1 << 32) + 3, (1 << 63) + 11, (1 << 64) - 1],
                         ids=["0", "1", "2^32+3", "2^63+11", "2^64-1"])
def test_full_seed_range(backend_device, seed):
    backend, device = backend_device
    out = ck.gaussian_noise((13,), seed, offset=6, device=device, backend=backend)
    expected = ck.gaussian_noise((13,), seed, offset=6, backend="torch")
    from conftest import assert_normals_close
    assert_normals_close(out, expected)


def test_distinct_seeds_and_halves_of_the_key_differ():
    a = ck.gaussian_noise((64,), 1, backend="torch")
    b = ck.gaussian_noise((64,), 1 << 32, backend="torch")
    c = ck.gaussian_noise((64,), 2, backend="torch")
    assert not torch.equal(a, b) and not torch.equal(a, c)
