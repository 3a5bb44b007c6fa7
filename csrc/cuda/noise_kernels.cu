// CUDA kernels for gaussian_noise / add_noise_ (one fill kernel) and weighted_noise_sum.
//
// Plain CUDA with a C++ launcher API (noise_kernels.h): no torch headers, so this file compiles
// with nvcc alone and CI builds it to object code on machines without a GPU. Each thread owns one
// Philox counter and writes its four normals, so no output of the generator is thrown away.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../philox.h"
#include "noise_kernels.h"

namespace corp {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <class T>
__device__ __forceinline__ float load_float(const T* p) { return static_cast<float>(*p); }
template <>
__device__ __forceinline__ float load_float<__half>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ float load_float<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <class T>
__device__ __forceinline__ void store_float(T* p, float v) { *p = static_cast<T>(v); }
template <>
__device__ __forceinline__ void store_float<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store_float<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// out[i] = alpha * noise(offset + i)  or  out[i] += alpha * noise(offset + i).
template <class T, bool kAccumulate>
__global__ void noise_fill_kernel(T* out, int64_t n, uint32_t k0, uint32_t k1,
                                  uint64_t counter_base, int64_t rem, float alpha) {
  const int64_t local = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first = 4 * local - rem;  // output index of this counter's lane 0
  if (first >= n || first + 4 <= 0) return;
  float z[4];
  normals4(counter_base + static_cast<uint64_t>(local), k0, k1, z);
#pragma unroll
  for (int lane = 0; lane < 4; ++lane) {
    const int64_t i = first + lane;
    if (i < 0 || i >= n) continue;
    float v = alpha * z[lane];
    if (kAccumulate) v += load_float(out + i);
    store_float(out + i, v);
  }
}

// out[i] = sum_k w_k * noise_k(offset + i): the four accumulators live in registers across k.
__global__ void weighted_noise_sum_kernel(float* out, int64_t n, const uint64_t* seeds,
                                          const float* weights, int64_t num_seeds,
                                          uint64_t counter_base, int64_t rem) {
  const int64_t local = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t first = 4 * local - rem;
  if (first >= n || first + 4 <= 0) return;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t k = 0; k < num_seeds; ++k) {
    const uint64_t seed = seeds[k];
    float z[4];
    normals4(counter_base + static_cast<uint64_t>(local), static_cast<uint32_t>(seed),
             static_cast<uint32_t>(seed >> 32), z);
    const float w = weights[k];
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) acc[lane] += w * z[lane];
  }
#pragma unroll
  for (int lane = 0; lane < 4; ++lane) {
    const int64_t i = first + lane;
    if (i >= 0 && i < n) out[i] = acc[lane];
  }
}

unsigned grid_for(int64_t n, int64_t rem) {
  const int64_t counters = (rem + n + 3) / 4;
  return static_cast<unsigned>((counters + kThreads - 1) / kThreads);
}

template <class T>
void launch_fill(T* out, int64_t n, uint64_t seed, uint64_t offset, float alpha, bool accumulate,
                 cudaStream_t stream) {
  if (n == 0) return;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const int64_t rem = static_cast<int64_t>(offset & 3u);
  if (accumulate) {
    noise_fill_kernel<T, true><<<grid_for(n, rem), kThreads, 0, stream>>>(out, n, k0, k1,
                                                                          offset >> 2, rem, alpha);
  } else {
    noise_fill_kernel<T, false><<<grid_for(n, rem), kThreads, 0, stream>>>(out, n, k0, k1,
                                                                           offset >> 2, rem, alpha);
  }
}

}  // namespace

void noise_fill_f32(float* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                    bool accumulate, cudaStream_t stream) {
  launch_fill(out, n, seed, offset, alpha, accumulate, stream);
}

void noise_fill_f16(void* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                    bool accumulate, cudaStream_t stream) {
  launch_fill(static_cast<__half*>(out), n, seed, offset, alpha, accumulate, stream);
}

void noise_fill_bf16(void* out, int64_t n, uint64_t seed, uint64_t offset, float alpha,
                     bool accumulate, cudaStream_t stream) {
  launch_fill(static_cast<__nv_bfloat16*>(out), n, seed, offset, alpha, accumulate, stream);
}

void weighted_noise_sum_f32(float* out, int64_t n, const uint64_t* seeds, const float* weights,
                            int64_t num_seeds, uint64_t offset, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t rem = static_cast<int64_t>(offset & 3u);
  weighted_noise_sum_kernel<<<grid_for(n, rem), kThreads, 0, stream>>>(
      out, n, seeds, weights, num_seeds, offset >> 2, rem);
}

}  // namespace cuda
}  // namespace corp
