// The generator compiled for AVX2, alone in its translation unit: the `target` pragma switches AVX2
// on for this file's functions only, so nothing else in the extension needs an AVX2 CPU. The file
// includes no C++ library header (whose inline functions the linker could share with baseline
// code), only C headers, intrinsics and our own static functions.
#include "normals.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2")
#include <immintrin.h>
#define CORP_NORMALS_AVX2 1
#include "normals_kernel.h"

namespace corp {
namespace cpu {
namespace {
const NoiseKernels kAvx2Kernels = CORP_NOISE_KERNELS("avx2");
}  // namespace
const NoiseKernels* const kAvx2KernelsOrNull = &kAvx2Kernels;
}  // namespace cpu
}  // namespace corp
#pragma GCC pop_options
#else
namespace corp {
namespace cpu {
const NoiseKernels* const kAvx2KernelsOrNull = nullptr;
}  // namespace cpu
}  // namespace corp
#endif
