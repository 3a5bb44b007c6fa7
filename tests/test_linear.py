"""perturbed_linear and population_linear: every backend against the reference, and the fused
backends' promise that no W-sized tensor is ever allocated."""

import pytest
import torch
import torch.nn.functional as F

import corp_kernels as ck
from corp_kernels import dispatch
from corp_kernels._memory import allocation_profile

pytestmark = pytest.mark.op("perturbed_linear")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (tokens, out_features, in_features): decode-sized, ragged, and K % 4 == 0 / != 0 (the aligned and
# unaligned noise-tile paths of the Triton kernel); the C++ kernel writes y's columns directly
# below 16 tokens (1, 5, 3) and y^T from 16 on (17), and 130 tokens takes its many-token path
# (big sequential panels).
SHAPES = [(1, 8, 16), (5, 37, 53), (3, 64, 68), (17, 70, 33), (130, 41, 36)]


def _inputs(tokens, n_out, n_in, dtype, bias, seed=0, members=None):
    g = torch.Generator().manual_seed(seed)
    lead = (tokens,) if members is None else (members, tokens)
    x = torch.randn(*lead, n_in, generator=g).to(dtype)
    w = (torch.randn(n_out, n_in, generator=g) / n_in ** 0.5).to(dtype)
    b = torch.randn(n_out, generator=g).to(dtype) if bias else None
    return x, w, b


def _exact(x, w, b, seed, sigma, offset=0):
    """float64 ground truth of the op's definition."""
    eps = ck.gaussian_noise(w.shape, seed, offset, backend="torch").double()
    y = x.double() @ (w.double() + sigma * eps).T
    return y + b.double() if b is not None else y


def _plain_low_precision(x, w, b, seed, sigma, offset=0):
    """What plain PyTorch computes in x's dtype: the error budget we hold kernels to."""
    eps = ck.gaussian_noise(w.shape, seed, offset, backend="torch")
    w_eff = (w.float() + sigma * eps).to(x.dtype)
    return F.linear(x, w_eff, b)


def _assert_as_accurate_as_plain_pytorch(out, x, w, b, seed, sigma, offset=0):
    exact = _exact(x, w, b, seed, sigma, offset)
    err = (out.double().cpu() - exact).abs().max().item()
    plain_err = (_plain_low_precision(x, w, b, seed, sigma, offset).double() - exact).abs().max()
    # fp32: plain PyTorch's error can be ~0; allow summation-order noise of a K-term dot product.
    floor = 1e-5 * exact.abs().max().item()
    if out.dtype != torch.float32:
        # One ulp of the output: Triton's interpreter rounds fp32 -> bf16 with a carry bug.
        floor += torch.finfo(out.dtype).eps * exact.abs().max().item()
    assert err <= 2 * plain_err.item() + floor, f"error {err:.3g} vs plain {plain_err.item():.3g}"


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_perturbed_linear(backend_device, shape, dtype, bias):
    backend, device = backend_device
    x, w, b = _inputs(*shape, dtype, bias)
    out = ck.perturbed_linear(x.to(device), w.to(device), None if b is None else b.to(device),
                              seed=(1 << 63) + 5, sigma=0.02, backend=backend)
    assert out.shape == (shape[0], shape[1]) and out.dtype == dtype
    _assert_as_accurate_as_plain_pytorch(out, x, w, b, (1 << 63) + 5, 0.02)


@pytest.mark.skipif(not dispatch.backends()["cpp"].available, reason="C++ extension not built")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("offset", [0, 7])
def test_cpp_panel_kernel_over_odd_shapes(monkeypatch, shape, dtype, bias, offset):
    # The dispatcher sends a single member with a W this small to the chunked strategy (above),
    # so the panel kernel's layouts (T < 16, T >= 16, many tokens) are checked here, forced.
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "fused")
    x, w, b = _inputs(*shape, dtype, bias)
    out = ck.perturbed_linear(x, w, b, seed=(1 << 63) + 5, sigma=0.02, offset=offset,
                              backend="cpp")
    assert out.shape == (shape[0], shape[1]) and out.dtype == dtype
    _assert_as_accurate_as_plain_pytorch(out, x, w, b, (1 << 63) + 5, 0.02, offset)


def test_perturbed_linear_leading_dims_and_offset(backend_device):
    backend, device = backend_device
    x, w, b = _inputs(6, 20, 30, torch.float32, True)
    x = x.reshape(2, 3, 30)
    out = ck.perturbed_linear(x.to(device), w.to(device), b.to(device), 3, 0.1, offset=7,
                              backend=backend)
    assert out.shape == (2, 3, 20)
    _assert_as_accurate_as_plain_pytorch(out.reshape(6, 20), x.reshape(6, 30), w, b, 3, 0.1, 7)


def test_sigma_zero_is_plain_linear(backend_device):
    backend, device = backend_device
    x, w, b = _inputs(4, 12, 24, torch.float32, True)
    out = ck.perturbed_linear(x.to(device), w.to(device), b.to(device), 9, 0.0, backend=backend)
    torch.testing.assert_close(out.cpu(), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("members, tokens", [(1, 3), (8, 3), (2, 130)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_population_linear(backend_device, members, tokens, dtype, bias):
    backend, device = backend_device
    x, w, b = _inputs(tokens, 37, 52, dtype, bias, members=members)
    seeds = [1000 + 17 * p for p in range(members)]
    sigmas = [0.01 * (p + 1) for p in range(members)]
    out = ck.population_linear(x.to(device), w.to(device), None if b is None else b.to(device),
                               seeds, sigmas, backend=backend)
    assert out.shape == (members, tokens, 37) and out.dtype == dtype
    for p in range(members):
        _assert_as_accurate_as_plain_pytorch(out[p], x[p], w, b, seeds[p], sigmas[p])


def test_population_member_equals_perturbed_linear(backend_device):
    backend, device = backend_device
    x, w, b = _inputs(2, 16, 20, torch.float32, True, members=3)
    seeds, sigmas = [5, 6, 7], [0.1, 0.2, 0.3]
    pop = ck.population_linear(x.to(device), w.to(device), b.to(device), seeds, sigmas,
                               backend=backend)
    for p in range(3):
        single = ck.perturbed_linear(x[p].to(device), w.to(device), b.to(device), seeds[p],
                                     sigmas[p], backend=backend)
        torch.testing.assert_close(pop[p], single, rtol=1e-5, atol=1e-5)


def _largest_allocation(fn) -> int:
    return allocation_profile(fn)[1]


@pytest.mark.skipif(not dispatch.backends()["cpp"].available, reason="C++ extension not built")
def test_cpp_never_allocates_a_weight_sized_tensor_beyond_one_chunk(monkeypatch):
    from corp_kernels.impl import cpp
    monkeypatch.delenv("CORP_KERNELS_LINEAR_STRATEGY", raising=False)
    w = torch.randn(2048, 1024)  # 8 MiB: two chunks, so the panel kernel runs
    x = torch.randn(4, 1024)
    w_bytes = w.numel() * w.element_size()
    fused = _largest_allocation(lambda: ck.perturbed_linear(x, w, None, 1, 0.01, backend="cpp"))
    reference = _largest_allocation(
        lambda: ck.perturbed_linear(x, w, None, 1, 0.01, backend="torch"))
    # The check can fail: the materializing reference allocates at least one W-sized tensor.
    assert reference >= w_bytes
    assert fused < w_bytes / 8, f"fused backend allocated {fused} bytes (W is {w_bytes})"
    population = _largest_allocation(lambda: ck.population_linear(
        x.expand(8, 4, 1024).contiguous(), w, None, list(range(8)), 0.01, backend="cpp"))
    assert population < w_bytes / 8
    # A small W is perturbed whole (one GEMM is faster), into one buffer of its size.
    small = w[:256].clone()  # 1 MiB
    assert small.numel() * 4 <= cpp.SMALL_WEIGHT_BYTES
    def call_small():
        return ck.perturbed_linear(x, small, None, 1, 0.01, backend="cpp")

    peak, largest = allocation_profile(call_small)
    assert small.numel() * 4 <= largest <= cpp.CHUNK_BYTES
    # The peak counts that buffer too, though the op (the parent event) is what frees it.
    assert small.numel() * 4 <= peak <= small.numel() * 4 + 4 * 256 * 4 * 2
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "fused")
    assert _largest_allocation(call_small) < w_bytes / 16


# --- Triton strategies: each one forced, over the shapes that exercise its own code paths ---------

triton_available = pytest.mark.skipif(not dispatch.backends()["triton"].available,
                                      reason=dispatch.backends()["triton"].reason)


def _triton_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _candidate_tiles():
    if not dispatch.backends()["triton"].available:
        return []
    from corp_kernels.triton_kernels.perturbed_linear import DECODE_TILE_CANDIDATES
    return list(DECODE_TILE_CANDIDATES)


def _default_decode_tile():
    if not dispatch.backends()["triton"].available:
        return None
    from corp_kernels.triton_kernels.perturbed_linear import _tiles
    return _tiles(1)


@triton_available
@pytest.mark.parametrize("strategy, options", [
    ("fused", {"splits": 1}),
    ("fused", {"splits": 3}),  # split-K: partial sums in a float32 workspace
    ("fused", {}),  # as many splits as the device's SM count asks for
    ("chunked", {"chunk_bytes": 1}),  # one row per chunk
    ("chunked", {"chunk_bytes": 7 * 100 * 4}),  # ragged last chunk
    ("chunked", {}),  # the whole weight in one chunk
], ids=["fused-1split", "fused-3splits", "fused-auto", "chunked-rows", "chunked-ragged",
        "chunked-one"])
@pytest.mark.parametrize("members, tokens, n_out, n_in, offset", [
    (1, 1, 37, 300, 0), (1, 19, 40, 257, 3), (3, 2, 70, 130, 8), (2, 70, 9, 64, 2**40 + 1),
    # sizes of 16s at offset 0: on a GPU, the specialization a model's layers run
    (1, 1, 96, 256, 0), (16, 2, 64, 128, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_strategies_match_the_definition(strategy, options, members, tokens, n_out, n_in,
                                                offset, dtype):
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    device = _triton_device()
    x, w, b = _inputs(tokens, n_out, n_in, dtype, True, members=members)
    seeds = [(1 << 63) + 11 * p for p in range(members)]
    sigmas = [0.02 * (p + 1) for p in range(members)]
    seed_bits = torch.tensor([s - (1 << 64) for s in seeds], dtype=torch.int64)
    out = tpl.population_linear(x.to(device), w.to(device), b.to(device), seed_bits,
                                torch.tensor(sigmas, dtype=torch.float64), offset, strategy,
                                **options)
    assert out.shape == (members, tokens, n_out) and out.dtype == dtype
    for p in range(members):
        _assert_as_accurate_as_plain_pytorch(out[p], x[p], w, b, seeds[p], sigmas[p], offset)


@triton_available
@pytest.mark.parametrize("tile", [t for t in _candidate_tiles() if t != _default_decode_tile()],
                         ids=lambda t: "x".join(map(str, t[:3])) + f"w{t[3]}")
@pytest.mark.parametrize("members, tokens, n_out, n_in, offset", [
    (1, 3, 37, 300, 0), (3, 2, 70, 132, 8), (1, 1, 96, 256, 0), (16, 2, 64, 128, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_tile_candidates_match_the_definition(tile, members, tokens, n_out, n_in, offset,
                                                    dtype):
    """Every tile the GPU benchmark times (DECODE_TILE_CANDIDATES) computes the same product, so
    a timing of a wrong kernel cannot choose _tiles."""
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    device = _triton_device()
    x, w, b = _inputs(tokens, n_out, n_in, dtype, True, members=members)
    seeds = [5 + 3 * p for p in range(members)]
    sigmas = [0.03 * (p + 1) for p in range(members)]
    out = tpl.population_linear(x.to(device), w.to(device), b.to(device),
                                torch.tensor(seeds), torch.tensor(sigmas, dtype=torch.float64),
                                offset, "fused", tiles=tile)
    for p in range(members):
        _assert_as_accurate_as_plain_pytorch(out[p], x[p], w, b, seeds[p], sigmas[p], offset)


@triton_available
def test_fused_tiles_option_reaches_the_launch(monkeypatch):
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    launches = []
    kernel = tpl._perturbed_linear_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                launches.append((grid, meta))
                return kernel[grid](*args, **meta)
            return launch
    monkeypatch.setattr(tpl, "_perturbed_linear_kernel", Spy())
    x, w, b = _inputs(3, 70, 132, torch.float32, True)
    device = _triton_device()
    tpl.perturbed_linear(x.to(device), w.to(device), b.to(device), 5, 0.1, 0, "fused",
                         tiles=(16, 32, 32, 8), splits=1)
    tpl.perturbed_linear(x.to(device), w.to(device), b.to(device), 5, 0.1, 0, "fused", splits=1)
    (grid, meta), (default_grid, default_meta) = launches
    assert (meta["BLOCK_T"], meta["BLOCK_N"], meta["BLOCK_K"], meta["num_warps"]) == (16, 32, 32, 8)
    assert grid == (1, 1, 3)  # cdiv(70, 32) column blocks
    assert (default_meta["BLOCK_T"], default_meta["BLOCK_N"], default_meta["BLOCK_K"],
            default_meta["num_warps"]) == tpl._tiles(3)


@triton_available
def test_fused_split_k_is_deterministic_and_equals_one_split():
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    device = _triton_device()
    x, w, b = _inputs(2, 33, 520, torch.float32, True)
    args = (x.to(device), w.to(device), b.to(device), 7, 0.05, 0, "fused")
    split = tpl.perturbed_linear(*args, splits=5)
    torch.testing.assert_close(split, tpl.perturbed_linear(*args, splits=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(split, tpl.perturbed_linear(*args, splits=5))  # fixed summation order


def test_split_count_fills_the_device_and_never_exceeds_k_blocks():
    from corp_kernels.triton_kernels.perturbed_linear import split_count
    assert split_count(programs=14, K=896, block_k=64, sms=132) == 14  # 896 / 64 blocks of K
    assert split_count(programs=64, K=4096, block_k=64, sms=132) == 9  # 64 * 9 >= 4 * 132
    assert split_count(programs=600, K=4096, block_k=64, sms=132) == 1  # already enough programs
    assert split_count(programs=1, K=10, block_k=64, sms=132) == 1


def test_strategy_rule_and_its_override(monkeypatch):
    from corp_kernels.triton_kernels.perturbed_linear import FUSED_MAX_TOKENS, choose_strategy
    monkeypatch.delenv("CORP_KERNELS_LINEAR_STRATEGY", raising=False)
    assert choose_strategy(1, aligned=True) == "fused"
    assert choose_strategy(FUSED_MAX_TOKENS, aligned=True) == "fused"
    assert choose_strategy(FUSED_MAX_TOKENS + 1, aligned=True) == "chunked"
    assert choose_strategy(1, aligned=False) == "chunked"  # unaligned fused tiles spill
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "chunked")
    assert choose_strategy(1, aligned=True) == "chunked"
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "fused")
    assert choose_strategy(4096, aligned=False) == "fused"
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "fast")
    with pytest.raises(ValueError, match="CORP_KERNELS_LINEAR_STRATEGY"):
        choose_strategy(1, aligned=True)


@triton_available
@pytest.mark.parametrize("tokens, n_in, offset, expected", [
    (3, 64, 0, "fused"), (3, 66, 0, "chunked"), (3, 64, 2, "chunked"), (65, 64, 0, "chunked")])
def test_population_linear_takes_the_rules_strategy(monkeypatch, tokens, n_in, offset, expected):
    """The launcher asks the rule with the real token count and alignment (a swapped argument
    or a dropped alignment check would send unaligned calls to the spilling fused tiles)."""
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    monkeypatch.delenv("CORP_KERNELS_LINEAR_STRATEGY", raising=False)
    taken = []
    for name in ("_fused", "_chunked"):
        original = getattr(tpl, name)
        monkeypatch.setattr(tpl, name, lambda *a, _o=original, _n=name, **k: (
            taken.append(_n[1:]), _o(*a, **k))[1])
    device = _triton_device()
    x, w, b = _inputs(tokens, 8, n_in, torch.float32, False, members=2)
    tpl.population_linear(x.to(device), w.to(device), None, torch.tensor([1, 2]),
                          torch.tensor([0.1, 0.2], dtype=torch.float64), offset)
    assert taken == [expected]


def _peak_live_bytes(fn, device) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return allocation_profile(fn)[0]


@triton_available
def test_chunked_strategy_never_materializes_the_whole_weight():
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    device = _triton_device()
    w = torch.randn(256, 256, device=device)  # 256 KiB
    x = torch.randn(40, 256, device=device)
    w_bytes = w.numel() * w.element_size()

    def run(chunk_bytes):
        return _peak_live_bytes(lambda: tpl.perturbed_linear(x, w, None, 1, 0.01, 0, "chunked",
                                                             chunk_bytes=chunk_bytes), device)
    # The check can fail: with a chunk of W's size the buffer alone is W-sized.
    assert run(w_bytes) >= w_bytes
    assert run(w_bytes // 8) < w_bytes // 2  # an eighth of W, the output and a product block


# --- C++ backend: the panel kernel below CHUNKED_MIN_TOKENS tokens per member, chunked above -----

cpp_available = pytest.mark.skipif(not dispatch.backends()["cpp"].available,
                                   reason=dispatch.backends()["cpp"].reason)


@cpp_available
@pytest.mark.parametrize("strategy", ["fused", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("members", [None, 3])
def test_cpp_strategies_match_the_definition(monkeypatch, strategy, dtype, members):
    from corp_kernels.impl import cpp
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", strategy)
    monkeypatch.setattr(cpp, "CHUNK_BYTES", 7 * 70 * 4)  # 7-row chunks: a ragged last one
    x, w, b = _inputs(5, 33, 70, dtype, True, members=members)
    if members is None:
        out = ck.perturbed_linear(x, w, b, (1 << 63) + 3, 0.1, offset=5, backend="cpp")
        _assert_as_accurate_as_plain_pytorch(out, x, w, b, (1 << 63) + 3, 0.1, 5)
    else:
        seeds, sigmas = [4, 5, 6], [0.1, 0.2, 0.3]
        out = ck.population_linear(x, w, b, seeds, sigmas, offset=5, backend="cpp")
        for p in range(members):
            _assert_as_accurate_as_plain_pytorch(out[p], x[p], w, b, seeds[p], sigmas[p], 5)
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "fused" if strategy == "chunked"
                       else "chunked")
    other = (ck.perturbed_linear(x, w, b, (1 << 63) + 3, 0.1, offset=5, backend="cpp")
             if members is None else
             ck.population_linear(x, w, b, [4, 5, 6], [0.1, 0.2, 0.3], offset=5, backend="cpp"))
    # Both compute W + sigma*eps and the product in float32 and round once: they differ by the
    # summation order of the BLAS at most, which can move a rounding by one ulp of the output.
    tol = max(1e-5, torch.finfo(dtype).eps)
    torch.testing.assert_close(out.float(), other.float(), rtol=tol, atol=tol)


def _cpp_strategy_taken(monkeypatch, tokens, n_out, n_in, members, dtype=torch.float32):
    """Which strategy the C++ backend's dispatcher ran for these sizes (no override set)."""
    from corp_kernels.impl import cpp
    monkeypatch.delenv("CORP_KERNELS_LINEAR_STRATEGY", raising=False)
    taken = []
    original = cpp._chunked
    monkeypatch.setattr(cpp, "_chunked",
                        lambda *a, **k: (taken.append("chunked"), original(*a, **k))[1])
    x, w, _ = _inputs(tokens, n_out, n_in, dtype, False, members=members)
    if members is None:
        ck.perturbed_linear(x, w, None, 1, 0.1, backend="cpp")
    else:
        ck.population_linear(x, w, None, list(range(1, members + 1)), 0.1, backend="cpp")
    return "chunked" if taken == ["chunked"] else ("fused" if not taken else taken)


@cpp_available
@pytest.mark.parametrize("tokens, members, expected", [
    (511, None, "fused"), (512, None, "chunked"), (511, 2, "fused"), (512, 2, "chunked")])
def test_cpp_rule_counts_tokens_per_member(monkeypatch, tokens, members, expected):
    from corp_kernels.impl import cpp
    assert cpp.CHUNKED_MIN_TOKENS == 512
    # W (8 x 6 floats) one float larger than a chunk, so that only the token count decides.
    monkeypatch.setattr(cpp, "CHUNK_BYTES", 8 * 6 * 4 - 4)
    monkeypatch.setattr(cpp, "SMALL_WEIGHT_BYTES", 8 * 6 * 4 - 4)
    assert _cpp_strategy_taken(monkeypatch, tokens, 8, 6, members) == expected


W_BYTES = 9 * 7 * 4  # the float32 size of the 9 x 7 W below


@cpp_available
@pytest.mark.parametrize("members", [None, 2])
@pytest.mark.parametrize("size, small_bytes, chunk_bytes", [
    ("small", W_BYTES, 2 * W_BYTES), ("one chunk", W_BYTES - 4, W_BYTES),
    ("over a chunk", W_BYTES - 4, W_BYTES - 4)])
@pytest.mark.parametrize("tokens", [1, 127, 128, 511])
def test_cpp_rule_for_one_member_follows_the_weights_size(monkeypatch, tokens, members, size,
                                                          small_bytes, chunk_bytes):
    # Below CHUNKED_MIN_TOKENS, one member is perturbed whole and multiplied by one GEMM when its
    # float32 W is small, or fits one chunk and has ONE_CHUNK_MIN_TOKENS tokens; a larger W, or a
    # population, keeps the panel kernel. Each boundary is hit exactly and one float past.
    from corp_kernels.impl import cpp
    assert cpp.ONE_CHUNK_MIN_TOKENS == 128
    monkeypatch.setattr(cpp, "SMALL_WEIGHT_BYTES", small_bytes)
    monkeypatch.setattr(cpp, "CHUNK_BYTES", chunk_bytes)
    chunked = members is None and (size == "small" or (size == "one chunk" and tokens >= 128))
    expected = "chunked" if chunked else "fused"
    assert _cpp_strategy_taken(monkeypatch, tokens, 9, 7, members) == expected


@cpp_available
def test_cpp_rule_sizes_weights_in_float32_whatever_their_dtype(monkeypatch):
    # The buffer is float32 for every input dtype: a bf16 W whose own bytes are small but whose
    # float32 copy is not stays with the panel kernel.
    from corp_kernels.impl import cpp
    monkeypatch.setattr(cpp, "CHUNK_BYTES", W_BYTES - 4)
    monkeypatch.setattr(cpp, "SMALL_WEIGHT_BYTES", W_BYTES - 4)
    assert _cpp_strategy_taken(monkeypatch, 3, 9, 7, None, dtype=torch.bfloat16) == "fused"
    monkeypatch.setattr(cpp, "SMALL_WEIGHT_BYTES", W_BYTES)
    assert _cpp_strategy_taken(monkeypatch, 3, 9, 7, None, dtype=torch.bfloat16) == "chunked"


def test_strategy_forced_sets_and_restores_the_override(monkeypatch):
    from corp_kernels._chunked import forced_strategy, strategy_forced
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", "chunked")
    with strategy_forced("fused"):
        assert forced_strategy() == "fused"
    assert forced_strategy() == "chunked"
    with strategy_forced(None):  # the dispatchers' own rules
        assert forced_strategy() is None
    assert forced_strategy() == "chunked"
    with pytest.raises(ValueError, match="strategy"):
        with strategy_forced("fast"):
            pass
