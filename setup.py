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
    """Compiler flags of the C++ extension: baseline x86-64 for the whole library.

    No -mavx2/-march here: a wheel, venv or image built on one machine must import on an older one
    (with -mavx2 the op registration itself contained AVX2 code and died with SIGILL). The AVX2 noise
    generator lives in csrc/cpu/normals_avx2.cpp, compiled for AVX2 by a pragma in that file alone
    and chosen at run time. -ffp-contract=off: GCC would otherwise fuse multiply-adds into FMA
    where the target has it, and the noise would depend on the build (1% of normals differed).
    """
    return ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
            "-std=c++17"]


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
            ["csrc/cpu/noise_ops.cpp", "csrc/cpu/normals_portable.cpp", "csrc/cpu/normals_avx2.cpp",
             "csrc/cpu/normals_dispatch.cpp", "csrc/cpu/module.cpp"],
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
