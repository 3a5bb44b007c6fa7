"""The C++ extension is built for baseline x86-64 and carries two noise generators, AVX2 and
portable, chosen at run time (csrc/cpu/normals.h). Both must give the same bits, every path must be
reachable on purpose, and the package must import and run on a CPU without AVX2.

Before this was so, the extension was built with -mavx2 -mfma whenever the build machine had them:
it died with SIGILL on import on an older CPU, and its normals differed from a portable build's in
~1% of positions (FMA contraction)."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

import corp_kernels as ck
from conftest import assert_normals_close

pytestmark = pytest.mark.skipif(not ck.backends()["cpp"].available,
                                reason="C++ extension not built")

N_POSITIONS = 1 << 20  # the bar: 1M positions, bit for bit
SEED = (1 << 63) + 12345
OFFSET = (1 << 32) * 4 - 6  # the Philox counter carries into its high word inside the run


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx2" in f.read().split()
    except OSError:
        return False


@pytest.fixture
def isa():
    """Sets the generator for one test and restores automatic choice after it."""
    def use(name: str) -> str:
        return torch.ops.corp_cpu.set_cpu_isa(name)
    yield use
    torch.ops.corp_cpu.set_cpu_isa("auto")


def _outputs(isa, name: str) -> dict[str, torch.Tensor]:
    """Every kind of output the CPU generator feeds, computed on one generator path."""
    isa(name)
    out = {"normals": ck.gaussian_noise((N_POSITIONS,), SEED, OFFSET, backend="cpp")}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        base = torch.linspace(-2, 2, N_POSITIONS).to(dtype)
        out[f"add_noise_ {dtype}"] = ck.add_noise_(base, SEED, 0.37, OFFSET, backend="cpp")
    out["weighted_noise_sum"] = ck.weighted_noise_sum((1000, 1000), [3, SEED, 11],
                                                      [0.5, -1.25, 2.0], backend="cpp")
    w = torch.randn(300, 257, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    x = torch.randn(5, 257, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out["perturbed_linear"] = ck.perturbed_linear(x, w, None, SEED, 0.05, backend="cpp")
    return out


@pytest.mark.skipif(not _cpu_has_avx2(), reason="CPU without AVX2: only the portable path runs")
def test_avx2_and_portable_paths_are_bit_identical(isa):
    assert isa("avx2").startswith("avx2")
    avx2 = _outputs(isa, "avx2")
    assert isa("portable").startswith("portable")
    portable = _outputs(isa, "portable")
    for name, value in avx2.items():
        different = (value.view(torch.uint8) != portable[name].view(torch.uint8)).sum().item()
        assert different == 0, f"{name}: {different} bytes differ between the AVX2 and portable paths"


@pytest.mark.parametrize("name", ["avx2", "portable"])
def test_each_path_matches_the_reference(isa, name):
    if name == "avx2" and not _cpu_has_avx2():
        pytest.skip("CPU without AVX2")
    isa(name)
    n = 4099  # ragged: not a multiple of a generator batch
    got = ck.gaussian_noise((n,), SEED, OFFSET, backend="cpp")
    assert_normals_close(got, ck.gaussian_noise((n,), SEED, OFFSET, backend="torch"))


def test_unavailable_or_unknown_path_is_refused(isa):
    with pytest.raises(RuntimeError, match="cannot use 'sse9'"):
        isa("sse9")
    if not _cpu_has_avx2():
        with pytest.raises(RuntimeError, match="cannot use 'avx2'"):
            isa("avx2")


def _run_python(code: str, env: dict[str, str] | None = None, prefix: list[str] | None = None,
                timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


PROBE = """
import hashlib, torch, corp_kernels as ck
status = ck.backends()["cpp"]
assert status.available, status
noise = ck.gaussian_noise((1 << 16,), 99, 5, backend="cpp")
print(torch.ops.corp_cpu.cpu_isa())
print(hashlib.sha256(noise.numpy().tobytes()).hexdigest())
print(status.reason)
"""


@pytest.mark.parametrize("value, expected", [
    ("portable", "portable (CORP_KERNELS_CPU_ISA=portable)"),
    ("avx2", "avx2 (CORP_KERNELS_CPU_ISA=avx2)"),
    ("auto", None),
    ("bogus", "portable (unknown CORP_KERNELS_CPU_ISA=bogus; use portable|avx2|auto)"),
])
def test_environment_variable_chooses_the_path(value, expected):
    if value == "avx2" and not _cpu_has_avx2():
        expected = "portable (this CPU has no AVX2)"
    if value == "auto":
        expected = "avx2" if _cpu_has_avx2() else "portable (this CPU has no AVX2)"
    result = _run_python(PROBE, env={"CORP_KERNELS_CPU_ISA": value})
    assert result.returncode == 0, result.stderr[-2000:]
    isa, _, reason = result.stdout.splitlines()[:3]
    assert isa == expected
    assert reason.endswith(f"noise generator: {expected}")  # what `corp_kernels.backends()` says


def _qemu() -> str | None:
    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.skipif(_qemu() is None, reason="qemu-user not installed (apt-get install "
                    "qemu-user-static; .ci/run does)")
def test_imports_and_runs_on_a_cpu_without_avx2():
    """Westmere (2010) has SSE4.2 but no AVX: the extension built here must load, pick the
    portable path and give the same bits as on this machine. Before: SIGILL on import (rc 132)."""
    native = _run_python(PROBE)
    assert native.returncode == 0, native.stderr[-2000:]
    emulated = _run_python(PROBE, prefix=[_qemu(), "-cpu", "Westmere"], timeout=600)
    assert emulated.returncode == 0, (
        f"rc {emulated.returncode} under qemu -cpu Westmere: {emulated.stderr[-2000:]}")
    isa, digest = emulated.stdout.splitlines()[:2]
    assert isa == "portable (this CPU has no AVX2)"
    assert digest == native.stdout.splitlines()[1], "noise differs on the emulated CPU"


@pytest.mark.parametrize("name", ["avx2", "portable"])
def test_bf16_kernels_round_exactly_as_torch(isa, name):
    """add_noise_ on bf16 and the bf16 weights of perturbed_linear run in the ISA-compiled kernels
    with their own bf16<->float conversions: they must round exactly as torch does (nearest even,
    every NaN to one NaN), not merely within an ulp."""
    if name == "avx2" and not _cpu_has_avx2():
        pytest.skip("CPU without AVX2")
    isa(name)
    n = 5000
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.3895e38, -0.0, 1e-40])
    base = torch.cat([special, torch.randn(n, generator=torch.Generator().manual_seed(3)) * 100])
    base = base.to(torch.bfloat16)
    alpha = 0.731
    noise = ck.gaussian_noise((base.numel(),), SEED, OFFSET, backend="cpp")
    expected = (base.float() + alpha * noise).to(torch.bfloat16)
    got = ck.add_noise_(base.clone(), SEED, alpha, OFFSET, backend="cpp")
    # NaN: torch's scalar conversion (which the C++ code always used) gives 0x7FC0, its vectorized
    # .to() another NaN pattern; both are NaN, so compare NaNs as NaNs and the rest bit for bit.
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16))
    # perturbed_linear on one-hot tokens reads back W + sigma * eps (a product with 1 and sums of
    # exact zeros), rounded once to bf16 like the expected value.
    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    eye = torch.eye(64, dtype=torch.bfloat16)
    got_rows = ck.perturbed_linear(eye, w, None, SEED, 0.25, backend="cpp").T
    eps = ck.gaussian_noise((3, 64), SEED, backend="cpp")
    expected_rows = (w.float() + 0.25 * eps).to(torch.bfloat16)
    assert torch.equal(got_rows.view(torch.int16), expected_rows.view(torch.int16))
