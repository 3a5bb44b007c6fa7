"""Which backends exist here, and which one runs an op.

Backends: "torch" (reference, always), "cpp" (C++/OpenMP extension, CPU tensors), "triton" (CUDA
tensors, or CPU tensors when TRITON_INTERPRET=1), "cuda" (CUDA extension, CUDA tensors).
A missing native library never breaks import: it is logged once and the op falls back, unless the
caller named that backend, in which case the call raises with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")
ALL_OPS = frozenset({"philox4x32_10", "gaussian_noise", "add_noise_", "weighted_noise_sum",
                     "perturbed_linear", "population_linear", "noise_sketch", "noise_gram"})
# The CUDA extension carries the elementwise ops; Triton owns the matmul-shaped ones on a GPU.
IMPLEMENTED_OPS = {"torch": ALL_OPS, "cpp": ALL_OPS, "triton": ALL_OPS,
                   "cuda": frozenset({"gaussian_noise", "add_noise_", "weighted_noise_sum"})}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # what it runs on, or why it is unavailable


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load_native(module: str) -> str | None:
    """Import a native extension; None on success, else the reason it failed."""
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # noqa: BLE001 - any load failure means "fall back"
        return f"{type(exc).__name__}: {exc}"


def _probe(name: str) -> BackendStatus:
    if name == "torch":
        return BackendStatus(name, True, "pure-PyTorch reference; every device")
    if name == "cpp":
        error = _load_native("corp_kernels._C")
        if error is None:
            # Which CPU noise generator runs (AVX2 or portable, chosen at run time) and why.
            isa = torch.ops.corp_cpu.cpu_isa()
            return BackendStatus(name, True, f"C++/OpenMP extension; CPU tensors; noise generator: "
                                 f"{isa}")
        return BackendStatus(name, False, f"C++ extension corp_kernels._C did not load ({error}); "
                             "rebuild with `pip install -e . --no-build-isolation`")
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return BackendStatus(name, False, "triton is not installed (pip install triton)")
        if torch.cuda.is_available():
            return BackendStatus(name, True, "Triton; CUDA tensors")
        if _triton_interpreted():
            return BackendStatus(name, True, "Triton interpreter (TRITON_INTERPRET=1); CPU tensors")
        return BackendStatus(name, False, "no CUDA device, and TRITON_INTERPRET is not 1")
    if name == "cuda":
        if not torch.cuda.is_available():
            return BackendStatus(name, False, "no CUDA device")
        error = _load_native("corp_kernels._C_cuda")
        if error is None:
            return BackendStatus(name, True, "CUDA extension; CUDA tensors")
        return BackendStatus(name, False, f"CUDA extension corp_kernels._C_cuda did not load "
                             f"({error})")
    raise AssertionError(name)


# Probed once at import (so that resolve() is plain dict lookups, which torch.compile traces).
_STATUS = {name: _probe(name) for name in BACKENDS}
_WARNED: set[str] = set()


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it is available here and why (not)."""
    return dict(_STATUS)


def _warn_fallback(name: str, reason: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"corp_kernels: backend {name!r} unavailable, using the torch reference "
                      f"instead: {reason}", RuntimeWarning, stacklevel=3)


def _supports(name: str, device: torch.device) -> bool:
    if name == "torch":
        return True
    if name == "cpp":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())


def implements(backend: str, op: str) -> bool:
    return op in IMPLEMENTED_OPS[backend]


def resolve(backend: str | None, device: torch.device, op: str) -> str:
    """The backend that runs `op` on tensors that live on `device`."""
    device = torch.device(device)
    if backend is None:
        preferred = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
        for name in preferred:
            if not implements(name, op):
                continue  # not a fallback: this backend never carried the op
            status = _STATUS[name]
            if status.available:
                return name
            _warn_fallback(name, status.reason)
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    status = _STATUS[backend]
    if not status.available:
        raise RuntimeError(f"backend {backend!r} was requested but is unavailable: {status.reason}")
    if not implements(backend, op):
        raise ValueError(f"backend {backend!r} does not implement {op}; it has "
                         f"{sorted(IMPLEMENTED_OPS[backend])}")
    if not _supports(backend, device):
        raise ValueError(f"backend {backend!r} cannot run on {device} tensors ({status.reason})")
    return backend


def implementation(backend: str) -> ModuleType:
    """The module holding `backend`'s functions (imported on first use: triton is slow to load)."""
    return importlib.import_module(f"corp_kernels.impl.{_module_name(backend)}")


def _module_name(backend: str) -> str:
    return {"torch": "torch_ref", "cpp": "cpp", "triton": "triton", "cuda": "cuda"}[backend]
