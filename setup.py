"""Builds the native kernels at install time.

* `corp_kernels._C`: the C++ (OpenMP) CPU kernels, always, unless CORP_KERNELS_SKIP_NATIVE=1.
* `corp_kernels._C_cuda`: the CUDA kernels, only where torch was built with CUDA and a toolkit is
  found (CUDA_HOME). On a CPU-only machine the .cu sources are still compiled to object code by
  .ci/run, so they cannot rot.

A failed build never breaks `import corp_kernels`: the package falls back to the torch backend and
`corp_kernels.backends()` says why.
"""

import os
import sys

from setuptools import setup

SKIP_NATIVE = os.environ.get("CORP_KERNELS_SKIP_NATIVE", "0") == "1"


def cpu_flags():
    """Vector ISA flags for the machine that builds (and will run) the extension."""
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c++17"]
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read().split()
    except OSError:
        cpuinfo = []
    if "avx2" in cpuinfo and "fma" in cpuinfo:
        flags += ["-mavx2", "-mfma"]
    return flags


def native_extensions():
    if SKIP_NATIVE:
        return [], {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension

    import torch

    # Cap parallel compile jobs: CI has 2 cores.
    os.environ.setdefault("MAX_JOBS", "2")
    extensions = [
        CppExtension(
            "corp_kernels._C",
            ["csrc/cpu/noise_ops.cpp", "csrc/cpu/module.cpp"],
            extra_compile_args={"cxx": cpu_flags()},
            extra_link_args=["-fopenmp"],
        )
    ]
    if torch.version.cuda is not None and CUDA_HOME is not None:
        from torch.utils.cpp_extension import CUDAExtension

        extensions.append(
            CUDAExtension(
                "corp_kernels._C_cuda",
                ["csrc/cuda/noise_kernels.cu", "csrc/cuda/noise_ops_cuda.cpp",
                 "csrc/cuda/module.cpp"],
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
            )
        )
    return extensions, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()
if "--verbose" in sys.argv:
    print(f"corp-kernels native extensions: {[e.name for e in ext_modules]}")
setup(ext_modules=ext_modules, cmdclass=cmdclass)
