// The body of the CPU noise generator: Philox4x32-10 on kLanes counters at once, then Box-Muller.
//
// This header is compiled twice, once per instruction set (normals_portable.cpp, normals_avx2.cpp),
// and must only ever be included by those two files. Everything in it has internal linkage
// (`static`), so the AVX2 copy can never be merged by the linker into code that runs on a CPU
// without AVX2: the classic way a "runtime-dispatched" library still dies with SIGILL.
//
// Both copies must give bit-identical normals. They do because the float code is plain IEEE
// arithmetic (no libm calls, see philox.h), the project builds with -ffp-contract=off (so GCC
// cannot fuse a multiply and an add into one FMA on one path and not on the other), and vector
// and scalar IEEE operations round alike.
#pragma once

#include <stdint.h>

#include "../philox.h"
#include "normals.h"

namespace corp {
namespace cpu {
namespace {

#if defined(CORP_NORMALS_AVX2)
// GCC's auto-vectorized 32x32->64 multiplies cost 2.0 ns per normal on this machine's cores; the
// even/odd vpmuludq form below is the usual hand-written one (2.4 ns for the whole generator).
static inline void mulhilo8(__m256i x, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);  // lanes 1, 3, 5, 7
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Ten Philox rounds on 8 counters whose words are in x0..x3 (arrays of 8), in place.
static inline void philox_rounds8(uint32_t* x0, uint32_t* x1, uint32_t* x2, uint32_t* x3,
                                  uint32_t k0, uint32_t k1) {
  __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0));
  __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1));
  __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x2));
  __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x3));
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int round = 0; round < kPhiloxRounds; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(a, m0, &hi0, &lo0);
    mulhilo8(c, m1, &hi1, &lo1);
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    a = _mm256_xor_si256(_mm256_xor_si256(hi1, b), key0);
    c = _mm256_xor_si256(_mm256_xor_si256(hi0, d), key1);
    b = lo1;
    d = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x0), a);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x1), b);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x2), c);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(x3), d);
}
#endif

// Writes the kBatchNormals normals of counters [counter, counter + kLanes) in stream order. Lanes
// of independent counters in separate word arrays, branch-free: the auto-vectorizer's food.
static inline void normals_batch(uint64_t counter, uint32_t k0, uint32_t k1, float* out) {
  uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  const uint32_t c_hi0 = static_cast<uint32_t>(counter >> 32);
  const uint32_t c_lo0 = static_cast<uint32_t>(counter);
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    const uint32_t lo = c_lo0 + static_cast<uint32_t>(l);
    x0[l] = lo;
    x1[l] = c_hi0 + (lo < c_lo0 ? 1u : 0u);  // carry into the high word
    x2[l] = 0u;
    x3[l] = 0u;
  }
#if defined(CORP_NORMALS_AVX2)
  for (int l = 0; l < kLanes; l += 8) philox_rounds8(x0 + l, x1 + l, x2 + l, x3 + l, k0, k1);
#else
  uint32_t key0 = k0, key1 = k1;
  for (int round = 0; round < kPhiloxRounds; ++round) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * x0[l];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * x2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ x1[l] ^ key0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ x3[l] ^ key1;
      x1[l] = static_cast<uint32_t>(p1);
      x3[l] = static_cast<uint32_t>(p0);
      x0[l] = n0;
      x2[l] = n2;
    }
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
#endif
  float n0[kLanes], n1[kLanes], n2[kLanes], n3[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    box_muller(uint32_to_unit_float(x0[l]), uint32_to_unit_float(x1[l]), &n0[l], &n1[l]);
    box_muller(uint32_to_unit_float(x2[l]), uint32_to_unit_float(x3[l]), &n2[l], &n3[l]);
  }
  for (int l = 0; l < kLanes; ++l) {
    out[4 * l + 0] = n0[l];
    out[4 * l + 1] = n1[l];
    out[4 * l + 2] = n2[l];
    out[4 * l + 3] = n3[l];
  }
}

static inline void normals_batches(uint64_t counter, int64_t batches, uint32_t k0, uint32_t k1,
                                   float* out) {
  for (int64_t b = 0; b < batches; ++b) {
    normals_batch(counter + static_cast<uint64_t>(b) * kLanes, k0, k1, out + b * kBatchNormals);
  }
}

// The hot loops that consume the normals are compiled here too, so that they get the same
// instruction set as the generator: on the baseline they would run 4 floats wide instead of 8
// (measured: add_noise_ on bf16 and weighted_noise_sum ~1.25x slower).

// sink(dst_index, normals, count) over the stream positions [position, position + n), one batch
// (64 normals, L1) at a time.
template <class Sink>
static inline void each_batch(uint64_t position, int64_t n, uint32_t k0, uint32_t k1, Sink&& sink) {
  alignas(64) float z[kBatchNormals];
  uint64_t counter = position >> 2;
  int64_t skip = static_cast<int64_t>(position & 3u);  // normals of the first counter before us
  int64_t done = 0;
  while (done < n) {
    normals_batch(counter, k0, k1, z);
    int64_t count = kBatchNormals - skip;
    if (count > n - done) count = n - done;
    sink(done, z + skip, count);
    done += count;
    skip = 0;
    counter += kLanes;
  }
}

static inline void noise_into_impl(uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                                   float alpha, bool accumulate, float* out) {
  if (!accumulate) {
    each_batch(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      float* o = out + at;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) o[i] = alpha * z[i];
    });
  } else {
    each_batch(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      float* o = out + at;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) o[i] += alpha * z[i];
    });
  }
}

// bfloat16 <-> float exactly as torch (c10) does it: widening is a shift, narrowing rounds to
// nearest even and maps every NaN to 0x7FC0.
static inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

static inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return static_cast<uint16_t>(nan ? 0x7FC0u : rounded);
}

static inline void add_noise_bf16_impl(uint16_t* p, uint64_t position, int64_t n, uint32_t k0,
                                       uint32_t k1, float alpha) {
  each_batch(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
    uint16_t* o = p + at;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) o[i] = float_to_bf16(bf16_to_float(o[i]) + alpha * z[i]);
  });
}

// out[i] = w[i] + sigma * noise(position + i), w float32 or bfloat16 (as raw bits).
static inline void perturbed_f32_impl(const float* w, uint64_t position, int64_t n, uint32_t k0,
                                      uint32_t k1, float sigma, float* out) {
  each_batch(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
    const float* wi = w + at;
    float* o = out + at;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) o[i] = wi[i] + sigma * z[i];
  });
}

static inline void perturbed_bf16_impl(const uint16_t* w, uint64_t position, int64_t n,
                                       uint32_t k0, uint32_t k1, float sigma, float* out) {
  each_batch(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
    const uint16_t* wi = w + at;
    float* o = out + at;
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) o[i] = bf16_to_float(wi[i]) + sigma * z[i];
  });
}

// The table one translation unit exports, as a brace initializer of function addresses: a constant
// initialization, so loading the library runs no code from the AVX2 file.
static void kernel_normals(uint64_t counter, int64_t batches, uint32_t k0, uint32_t k1,
                           float* out) {
  normals_batches(counter, batches, k0, k1, out);
}
static void kernel_noise_into(uint64_t position, int64_t n, uint32_t k0, uint32_t k1, float alpha,
                              bool accumulate, float* out) {
  noise_into_impl(position, n, k0, k1, alpha, accumulate, out);
}
static void kernel_add_noise_bf16(uint16_t* p, uint64_t position, int64_t n, uint32_t k0,
                                  uint32_t k1, float alpha) {
  add_noise_bf16_impl(p, position, n, k0, k1, alpha);
}
static void kernel_perturbed_f32(const float* w, uint64_t position, int64_t n, uint32_t k0,
                                 uint32_t k1, float sigma, float* out) {
  perturbed_f32_impl(w, position, n, k0, k1, sigma, out);
}
static void kernel_perturbed_bf16(const uint16_t* w, uint64_t position, int64_t n, uint32_t k0,
                                  uint32_t k1, float sigma, float* out) {
  perturbed_bf16_impl(w, position, n, k0, k1, sigma, out);
}
#define CORP_NOISE_KERNELS(name)                                                              \
  {                                                                                           \
    name, &kernel_normals, &kernel_noise_into, &kernel_add_noise_bf16, &kernel_perturbed_f32, \
        &kernel_perturbed_bf16                                                                \
  }

}  // namespace
}  // namespace cpu
}  // namespace corp
