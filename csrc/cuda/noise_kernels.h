// Launchers of the CUDA noise kernels (noise_kernels.cu). Pointers are device pointers; seeds and
// offsets are the unsigned 64-bit values of the noise contract.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace corp {
namespace cuda {

void noise_fill_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                    bool accumulate, cudaStream_t stream);
void noise_fill_f16(void* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                    bool accumulate, cudaStream_t stream);
void noise_fill_bf16(void* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                     bool accumulate, cudaStream_t stream);
void weighted_noise_sum_f32(float* out, int64_t n, const uint64_t* seeds, const float* weights,
                            int64_t num_seeds, uint64_t offset, cudaStream_t stream);

}  // namespace cuda
}  // namespace corp
