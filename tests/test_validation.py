"""Bad input: each gives a ValueError (or RuntimeError for an unavailable backend) that names the
argument and the problem."""

import math

import pytest
import torch

import corp_kernels as ck


@pytest.mark.parametrize("seed, match", [
    (-1, "seed must be non-negative"),
    (1 << 64, r"seed must be < 2\*\*64"),
    (1.0, "seed must be an integer"),
    (True, "seed must be an integer, got a bool"),
    ("7", "seed must be an integer"),
    (torch.tensor(1.5), "seed must be an integer"),
])
def test_bad_seed(seed, match):
    with pytest.raises(ValueError, match=match):
        ck.gaussian_noise((3,), seed)


def test_seed_accepts_integer_tensor_and_max_value():
    assert ck.gaussian_noise((3,), torch.tensor(5)).shape == (3,)
    assert ck.gaussian_noise((3,), (1 << 64) - 1).shape == (3,)


@pytest.mark.parametrize("offset, match", [
    (-1, "offset must be non-negative"),
    ((1 << 64) - 2, "would run past stream position"),
    (0.5, "offset must be an integer"),
])
def test_bad_offset(offset, match):
    with pytest.raises(ValueError, match=match):
        ck.gaussian_noise((3,), 1, offset)


def test_bad_shape_and_dtype():
    with pytest.raises(ValueError, match="shape must not have negative"):
        ck.gaussian_noise((3, -1), 1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ck.gaussian_noise((3,), 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="tensor.dtype must be one of"):
        ck.add_noise_(torch.zeros(3, dtype=torch.int32), 1, 1.0)


def test_non_contiguous_inputs():
    with pytest.raises(ValueError, match="tensor must be contiguous"):
        ck.add_noise_(torch.zeros(4, 6).T, 1, 1.0)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        ck.perturbed_linear(torch.zeros(2, 4), torch.zeros(4, 3).T, None, 1, 0.1)


def test_linear_shape_dtype_device_errors():
    x, w = torch.zeros(2, 5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="last dimension must equal weight's in_features"):
        ck.perturbed_linear(torch.zeros(2, 4), w, None, 1, 0.1)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ck.perturbed_linear(x, torch.zeros(3, 5, 1), None, 1, 0.1)
    with pytest.raises(ValueError, match=r"x.dtype \(torch.float16\) must equal weight.dtype"):
        ck.perturbed_linear(x.half(), w, None, 1, 0.1)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        ck.perturbed_linear(x, w, torch.zeros(4), 1, 0.1)
    with pytest.raises(ValueError, match="bias.dtype"):
        ck.perturbed_linear(x, w, torch.zeros(3, dtype=torch.float16), 1, 0.1)
    with pytest.raises(ValueError, match="sigma must be finite"):
        ck.perturbed_linear(x, w, None, 1, math.nan)
    with pytest.raises(ValueError, match="x is on meta but weight is on cpu"):
        ck.perturbed_linear(x.to("meta"), w, None, 1, 0.1)


def test_population_errors():
    x, w = torch.zeros(3, 2, 5), torch.zeros(4, 5)
    with pytest.raises(ValueError, match="seeds has 2 entries but x has P=3"):
        ck.population_linear(x, w, None, [1, 2], 0.1)
    with pytest.raises(ValueError, match="sigmas has 2 entries but seeds has 3"):
        ck.population_linear(x, w, None, [1, 2, 3], [0.1, 0.2])
    with pytest.raises(ValueError, match="seeds is empty"):
        ck.population_linear(torch.zeros(0, 2, 5), w, None, [], 0.1)
    with pytest.raises(ValueError, match=r"seeds\[1\] must be non-negative"):
        ck.population_linear(x, w, None, [1, -2, 3], 0.1)


def test_weighted_sum_errors():
    with pytest.raises(ValueError, match="seeds is empty"):
        ck.weighted_noise_sum((4,), [], [])
    with pytest.raises(ValueError, match="weights has 1 entries but seeds has 2"):
        ck.weighted_noise_sum((4,), [1, 2], [1.0])
    with pytest.raises(ValueError, match=r"weights must be finite: weights\[1\] = nan"):
        ck.weighted_noise_sum((4,), [1, 2], [1.0, math.nan])
    with pytest.raises(ValueError, match=r"weights must be finite: weights\[0\] = inf"):
        ck.weighted_noise_sum((4,), [1], torch.tensor([math.inf]))
    with pytest.raises(ValueError, match="seeds must hold integers"):
        ck.weighted_noise_sum((4,), torch.tensor([1.0, 2.0]), [1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be a sequence of floats: got text '1.5'"):
        ck.weighted_noise_sum((4,), [1], ["1.5"])
    with pytest.raises(ValueError, match="weights must be a sequence of floats"):
        ck.weighted_noise_sum((4,), [1], [None])
    with pytest.raises(ValueError, match="sigmas must be finite: sigmas\\[2\\] = -inf"):
        ck.population_linear(torch.zeros(3, 1, 5), torch.zeros(2, 5), None, [1, 2, 3],
                             [0.1, 0.2, -math.inf])
    # Numbers of any kind (numpy, 0-d tensors) are taken as their float values.
    numpy = pytest.importorskip("numpy")
    out = ck.weighted_noise_sum((4,), [1, 2], [numpy.float32(0.5), torch.tensor(0.25)])
    torch.testing.assert_close(out, ck.weighted_noise_sum((4,), [1, 2], [0.5, 0.25]),
                               rtol=0, atol=0)


def test_sketch_errors():
    with pytest.raises(ValueError, match="shape must be 2-D"):
        ck.noise_sketch((4,), [1], [1.0], torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"test_matrix must be \[cols, r\] = \[6, r\]"):
        ck.noise_sketch((4, 6), [1], [1.0], torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"test_matrix must be \[r, rows\] = \[r, 4\]"):
        ck.noise_sketch((4, 6), [1], [1.0], torch.zeros(2, 6), side="left")
    with pytest.raises(ValueError, match="side must be"):
        ck.noise_sketch((4, 6), [1], [1.0], torch.zeros(6, 2), side="top")
    with pytest.raises(ValueError, match="rank=9 exceeds"):
        ck.randomized_svd_noise((4, 6), [1], [1.0], 9)


def test_backend_errors():
    with pytest.raises(ValueError, match="unknown backend 'numpy'"):
        ck.gaussian_noise((3,), 1, backend="numpy")
    with pytest.raises(RuntimeError, match="backend 'cuda' was requested but is unavailable"):
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        ck.gaussian_noise((3,), 1, backend="cuda")


def test_philox_input_errors():
    with pytest.raises(ValueError, match=r"counters must have shape \[n, 4\]"):
        ck.philox4x32_10(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"keys must hold integers in \[0, 2\*\*32\)"):
        ck.philox4x32_10(torch.zeros(1, 4, dtype=torch.int64), torch.tensor([[0, 1 << 32]]))
