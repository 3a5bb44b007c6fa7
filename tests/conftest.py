"""Backends and devices to test on. Triton runs under its interpreter on a CPU-only machine.

TRITON_INTERPRET must be set before triton is imported anywhere, hence here, at the very top.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from corp_kernels import backends  # noqa: E402
from corp_kernels.dispatch import implements  # noqa: E402

FP32_EPS = torch.finfo(torch.float32).eps
# Normals may differ between backends only by the rounding of log/sqrt/sin/cos: measured at most
# 2.83 float32 ulp (relative) over 2**20 normals, C++ and Triton-interpreter vs. the torch reference.
NORMAL_RTOL = 4 * FP32_EPS
NORMAL_ATOL = 4 * FP32_EPS


def _backend_devices():
    """(backend, device) pairs, each skipped with its reason where it cannot run here."""
    status = backends()
    cuda = torch.cuda.is_available()
    pairs = [("torch", "cpu"), ("cpp", "cpu"), ("triton", "cuda" if cuda else "cpu")]
    if cuda:
        pairs += [("torch", "cuda"), ("cuda", "cuda")]
    params = []
    for name, device in pairs:
        marks = [pytest.mark.skipif(not status[name].available, reason=status[name].reason)]
        if name == "triton":
            marks.append(pytest.mark.triton)
        params.append(pytest.param((name, device), id=f"{name}-{device}", marks=marks))
    return params


BACKEND_DEVICES = _backend_devices()

# Backends the suite must find, or it stops before collecting anything: a C++ extension that failed
# to build, or a broken Triton, would otherwise turn every case of that backend into a skip and the
# run would still say "passed". CORP_KERNELS_ALLOW_MISSING=cpp,triton,cuda (or "all") opts out
# explicitly for the named backends.
EXPECTED_BACKENDS = ("cpp", "triton") + (("cuda",) if torch.cuda.is_available() else ())


def missing_backends(status=None, allowed: str | None = None) -> list[str]:
    """'name: reason' for every expected backend that is unavailable and not allowed missing."""
    status = status if status is not None else backends()
    allowed = os.environ.get("CORP_KERNELS_ALLOW_MISSING", "") if allowed is None else allowed
    ok = {a.strip() for a in allowed.split(",") if a.strip()}
    return [f"{name}: {status[name].reason}" for name in EXPECTED_BACKENDS
            if not status[name].available and name not in ok and "all" not in ok]


def pytest_sessionstart(session):
    missing = missing_backends()
    if missing:
        pytest.exit("backends the tests expect are unavailable (" + "; ".join(missing) + "). "
                    "Fix the build (scripts/setup.sh), or opt out explicitly with "
                    "CORP_KERNELS_ALLOW_MISSING=" + ",".join(m.split(":")[0] for m in missing),
                    returncode=3)


@pytest.fixture(params=BACKEND_DEVICES)
def backend_device(request):
    """(backend, device); a test marked @pytest.mark.op("name") is skipped on backends that do not
    implement that op (the CUDA extension carries only the elementwise ones)."""
    marker = request.node.get_closest_marker("op")
    if marker is not None and not implements(request.param[0], marker.args[0]):
        pytest.skip(f"backend {request.param[0]!r} does not implement {marker.args[0]}")
    return request.param


def assert_normals_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 noise from two backends: within the stated few-ulp tolerance."""
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), rtol=NORMAL_RTOL,
                               atol=NORMAL_ATOL)


def assert_rounded_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Noise rounded to fp16/bf16: values a few fp32 ulp apart may round to neighbouring 16-bit
    values, so allow one ulp of the output dtype (Triton's interpreter also rounds fp32->bf16 with a
    carry bug that costs one ulp). float32 falls back to the normal tolerance."""
    if actual.dtype == torch.float32:
        assert_normals_close(actual, expected)
        return
    assert actual.dtype == expected.dtype
    a, e = actual.float().cpu(), expected.float().cpu()
    ulp = torch.finfo(actual.dtype).eps * e.abs().clamp(min=torch.finfo(actual.dtype).tiny)
    # eps * |e| is one ulp at the bottom of e's binade; two of them cover the top of it.
    excess = (a - e).abs() - 2 * ulp
    assert excess.max().item() <= 0, f"max excess over 1 ulp: {excess.max().item()}"
