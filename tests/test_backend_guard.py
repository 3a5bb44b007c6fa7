"""The test command cannot pass silently without a backend: conftest stops the session when an
expected backend (C++ extension, Triton; CUDA on a GPU machine) is unavailable, unless
CORP_KERNELS_ALLOW_MISSING names it."""

import pytest

import conftest
from corp_kernels.dispatch import BackendStatus


def _status(**available):
    names = ("torch", "cpp", "triton", "cuda")
    return {n: BackendStatus(n, available.get(n, True), f"{n} reason") for n in names}


def test_a_missing_expected_backend_is_named_with_its_reason():
    assert conftest.missing_backends(_status(), "") == []
    assert conftest.missing_backends(_status(cpp=False), "") == ["cpp: cpp reason"]
    assert conftest.missing_backends(_status(cpp=False, triton=False), "") == [
        "cpp: cpp reason", "triton: triton reason"]


def test_only_an_explicit_opt_out_accepts_it():
    assert conftest.missing_backends(_status(cpp=False), "cpp") == []
    assert conftest.missing_backends(_status(cpp=False, triton=False), "triton") == [
        "cpp: cpp reason"]
    assert conftest.missing_backends(_status(cpp=False, triton=False), "all") == []
    assert conftest.missing_backends(_status(triton=False), "cpp") == [
        "triton: triton reason"]


def test_the_session_stops_before_collecting(monkeypatch):
    monkeypatch.setattr(conftest, "backends", lambda: _status(cpp=False))
    monkeypatch.delenv("CORP_KERNELS_ALLOW_MISSING", raising=False)
    with pytest.raises(pytest.exit.Exception, match="cpp: cpp reason.*ALLOW_MISSING=cpp"):
        conftest.pytest_sessionstart(None)
    monkeypatch.setenv("CORP_KERNELS_ALLOW_MISSING", "cpp")
    conftest.pytest_sessionstart(None)  # opted out: goes on
