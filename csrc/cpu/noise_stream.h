// Vectorized generation of a contiguous run of the noise stream on the CPU.
//
// The generator is the hot loop of every op in this library, so it is written for the compiler's
// auto-vectorizer: lanes of kLanes independent counters, branch-free arithmetic, and separate
// arrays per Philox word. With -mavx2 GCC turns the 32x32->64 multiplies into vpmuludq and the
// log/sincos polynomials into 8-wide FMA code.
#pragma once

#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../philox.h"

namespace corp {
namespace cpu {

constexpr int kLanes = 16;  // counters per vector batch: 64 normals

#if defined(__AVX2__)
// GCC's auto-vectorized 32x32->64 multiplies cost 2.0 ns per normal on this machine's cores; the
// even/odd vpmuludq form below is the usual hand-written one (measured in the commit message).
inline void mulhilo8(__m256i x, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);  // lanes 1, 3, 5, 7
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Ten Philox rounds on 8 counters whose words are in x0..x3 (arrays of 8), in place.
inline void philox_rounds8(uint32_t* x0, uint32_t* x1, uint32_t* x2, uint32_t* x3, uint32_t k0,
                           uint32_t k1) {
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

// Writes the 4 * kLanes normals of counters [counter, counter + kLanes) in stream order.
inline void normals_batch(uint64_t counter, uint32_t k0, uint32_t k1, float* out) {
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
#if defined(__AVX2__)
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

constexpr int64_t kBatchNormals = 4 * kLanes;

// Calls sink(dst_index, normals, count) for consecutive pieces of the stream positions
// [position, position + n); normals[0] is the normal at stream position `position + dst_index`.
// Pieces are at most kBatchNormals long and live in a stack buffer (L1).
template <class Sink>
inline void for_each_noise_piece(uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                                 Sink&& sink) {
  alignas(64) float buf[kBatchNormals];
  uint64_t counter = position >> 2;
  int64_t skip = static_cast<int64_t>(position & 3u);  // normals of the first counter before us
  int64_t done = 0;
  while (done < n) {
    normals_batch(counter, k0, k1, buf);
    int64_t count = kBatchNormals - skip;
    if (count > n - done) count = n - done;
    sink(done, buf + skip, count);
    done += count;
    skip = 0;
    counter += kLanes;
  }
}

// out[i] = noise(position + i), or out[i] += alpha * noise(position + i) when accumulating.
inline void noise_into(uint64_t position, int64_t n, uint32_t k0, uint32_t k1, float alpha,
                       bool accumulate, float* out) {
  if (!accumulate && alpha == 1.0f) {
    for_each_noise_piece(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      memcpy(out + at, z, sizeof(float) * count);
    });
  } else if (!accumulate) {
    for_each_noise_piece(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      float* o = out + at;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) o[i] = alpha * z[i];
    });
  } else {
    for_each_noise_piece(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      float* o = out + at;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) o[i] += alpha * z[i];
    });
  }
}

inline void split_seed(uint64_t seed, uint32_t* k0, uint32_t* k1) {
  *k0 = static_cast<uint32_t>(seed);
  *k1 = static_cast<uint32_t>(seed >> 32);
}

}  // namespace cpu
}  // namespace corp
