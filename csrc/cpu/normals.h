// The CPU noise generator's interface: one function per instruction set, chosen once at run time.
//
// The extension is built for baseline x86-64 (no -mavx2): only normals_avx2.cpp contains AVX2
// instructions, and it is called only after the CPU has said it has AVX2. So a wheel, venv or
// image built on one machine imports and runs on any x86-64 CPU (issue: SIGILL on import).
#pragma once

#include <stdint.h>

namespace corp {
namespace cpu {

constexpr int kLanes = 16;                    // counters per vector batch
constexpr int64_t kBatchNormals = 4 * kLanes;  // 64 normals per batch

// Writes the normals of counters [counter, counter + batches * kLanes) in stream order:
// batches * kBatchNormals floats at out.
using NormalsFn = void (*)(uint64_t counter, int64_t batches, uint32_t k0, uint32_t k1, float* out);

// The generator and the hot loops that consume its normals, compiled for one instruction set.
// fp32 and bf16 (raw bits) only: other dtypes go through `normals` and a sink in baseline code.
struct NoiseKernels {
  const char* name;
  NormalsFn normals;
  // out[i] = alpha * noise(position + i), or out[i] += alpha * noise(position + i).
  void (*noise_into)(uint64_t position, int64_t n, uint32_t k0, uint32_t k1, float alpha,
                     bool accumulate, float* out);
  // p[i] = bf16(float(p[i]) + alpha * noise(position + i)), rounded as torch rounds.
  void (*add_noise_bf16)(uint16_t* p, uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                         float alpha);
  // out[i] = float(w[i]) + sigma * noise(position + i).
  void (*perturbed_f32)(const float* w, uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                        float sigma, float* out);
  void (*perturbed_bf16)(const uint16_t* w, uint64_t position, int64_t n, uint32_t k0,
                         uint32_t k1, float sigma, float* out);
};

extern const NoiseKernels kPortableKernels;
// nullptr where the compiler could not build the AVX2 copy (not GCC, not x86-64).
extern const NoiseKernels* const kAvx2KernelsOrNull;

// The kernels in use. Chosen on first use: CORP_KERNELS_CPU_ISA=portable|avx2|auto (default
// auto: AVX2 where the CPU and the OS support it).
const NoiseKernels& active_kernels();
inline NormalsFn active_normals() { return active_kernels().normals; }
// "avx2" or "portable", and why when it is not what was asked for.
const char* active_isa_description();
// Switches the generator (tests compare both paths in one process). Returns false, changing
// nothing, when `name` is unknown or its path cannot run on this CPU.
bool set_isa(const char* name);

}  // namespace cpu
}  // namespace corp
