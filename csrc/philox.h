// Philox4x32-10 and the Box-Muller map of the corp-kernels noise contract.
//
// One header for host and device code: every native backend (C++ CPU, CUDA) includes it, so the
// integer stream cannot drift between them. The exact definition, with known answers, is in
// shared/noise-contract.md; in short, normal g of key `seed` is lane g % 4 of Triton's
// tl.randn4x(seed, g // 4).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define CORP_HD __host__ __device__ __forceinline__
#else
// static: each translation unit keeps its own copy. The CPU generator is compiled once for
// baseline x86-64 and once for AVX2 (cpu/normals_avx2.cpp); with plain `inline` the linker would
// keep one copy of, say, box_muller for both, possibly the AVX2 one, and a CPU without AVX2 would
// die with SIGILL in baseline code.
#define CORP_HD static inline
#endif

namespace corp {

// Random123 constants: round multipliers and Weyl key increments.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// Triton's uint32 -> [0, 1) map: fold the sign, scale by the largest float below 2^-31.
constexpr float kUint32ToUnit = 4.6566127342e-10f;
constexpr float kMinUniform = 1.0e-7f;
constexpr float kTwoPi = 6.283185307179586f;

struct Philox4 {
  uint32_t x0, x1, x2, x3;
};

// Ten rounds of Philox4x32 on counter (c0, c1, c2, c3) with key (k0, k1).
CORP_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                              uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{c0, c1, c2, c3};
}

// The noise stream's counter for position g is (g / 4) split into two 32-bit words.
CORP_HD Philox4 philox_for_counter(uint64_t counter, uint32_t k0, uint32_t k1) {
  return philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u,
                       k0, k1);
}

CORP_HD float uint32_to_unit_float(uint32_t bits) {
  int32_t v = static_cast<int32_t>(bits);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * kUint32ToUnit;
}

// Branch-free float32 log and sincos, written so that a compiler vectorizes loops over them
// (the C library's logf/sincosf do not vectorize with GCC). Cephes-style polynomials, within 2 ulp
// of the correctly rounded result on the ranges used here: log on [1e-7, 1), sincos on [0, 2*pi].
CORP_HD float bits_to_float(uint32_t u) {
  union {
    uint32_t u;
    float f;
  } v;
  v.u = u;
  return v.f;
}

CORP_HD uint32_t float_to_bits(float f) {
  union {
    float f;
    uint32_t u;
  } v;
  v.f = f;
  return v.u;
}

// Natural log of a positive normal float.
CORP_HD float log_positive(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F000000u);  // mantissa in [0.5, 1)
  // Keep the polynomial's argument in [sqrt(1/2) - 1, sqrt(2) - 1).
  const bool small = m < 0.70710678118654752440f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// sin and cos of t in [0, 2*pi]: reduce by pi/2 (Cody-Waite, three parts), then a quadrant swap.
CORP_HD void sincos_0_2pi(float t, float* s_out, float* c_out) {
  const float j = static_cast<float>(static_cast<int32_t>(t * 0.63661977236758134308f + 0.5f));
  float r = t - j * 1.5703125f;
  r -= j * 4.837512969970703125e-4f;
  r -= j * 7.549789954891882e-8f;
  const float z = r * r;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float c =
      ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
      0.5f * z + 1.0f;
  const int32_t q = static_cast<int32_t>(j) & 3;
  const float sw_s = (q & 1) ? c : s;
  const float sw_c = (q & 1) ? s : c;
  *s_out = (q == 2 || q == 3) ? -sw_s : sw_s;
  *c_out = (q == 1 || q == 2) ? -sw_c : sw_c;
}

// Box-Muller on one pair of uniforms, as tl.randn4x does it: (r cos t, r sin t).
CORP_HD void box_muller(float u_radius, float u_angle, float* n_cos, float* n_sin) {
  const float u1 = u_radius > kMinUniform ? u_radius : kMinUniform;
  const float t = kTwoPi * u_angle;
#if defined(__CUDA_ARCH__)
  const float r = sqrtf(-2.0f * logf(u1));
  float s, c;
  sincosf(t, &s, &c);
#else
  const float r = __builtin_sqrtf(-2.0f * log_positive(u1));
  float s, c;
  sincos_0_2pi(t, &s, &c);
#endif
  *n_cos = r * c;
  *n_sin = r * s;
}

// The four normals of one counter, in stream order.
CORP_HD void normals4(uint64_t counter, uint32_t k0, uint32_t k1, float out[4]) {
  const Philox4 x = philox_for_counter(counter, k0, k1);
  box_muller(uint32_to_unit_float(x.x0), uint32_to_unit_float(x.x1), &out[0], &out[1]);
  box_muller(uint32_to_unit_float(x.x2), uint32_to_unit_float(x.x3), &out[2], &out[3]);
}

}  // namespace corp
