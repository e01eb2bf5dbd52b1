// CPU-only vector math shared by the CPU kernels: a vectorisable exp, fp16/bf16 loads, lane reductions.
// Everything is in an anonymous namespace: each kernel file gets its own copies and its own AVX-512/AVX2 clones
// (FD_VECTOR_CLONES), picked at load time, so one wheel runs on any x86-64.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "../kernels/common.h"  // ScalarKind, bfloat16_bits_to_float

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Feature-based clones (an "arch=" clone would be picked only on that exact CPU model). Results do not
// depend on the clone: no FMA contraction (-ffp-contract=off) and reductions use fixed lane structures.
#define FD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FD_VECTOR_CLONES
#endif

namespace fastdoctor {
namespace {

// exp(x) for x <= 0 (Cephes polynomial, about 2 ulp), exactly 0 below the float range so that -inf
// (a masked token) gets no mass. Selects are written as bit masks: that is what lets GCC vectorise the
// loops around it for AVX2 (a float ternary there defeats if-conversion).
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  const uint32_t keep = x < -87.33654f ? 0u : 0xFFFFFFFFu;
  x = x < -87.33654f ? -87.33654f : x;
  // n = round(x / ln 2) = -ni; for x <= 0, truncating 0.5 - x / ln 2 (> 0) is a floor, without a libm call.
  const int32_t ni = static_cast<int32_t>(0.5f - x * 1.44269504088896341f);
  const float n = -static_cast<float>(ni);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = bits_as_float(static_cast<uint32_t>(127 - ni) << 23);  // 2^n
  return bits_as_float(float_as_bits(p * scale) & keep);
}

// IEEE half -> float with integer ops only (no F16C needed), branch-free so the loop vectorises.
__attribute__((always_inline)) inline float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h & 0x7FFFu) << 13;  // exponent and mantissa, shifted
  const uint32_t exponent = magnitude & (0x7C00u << 13);
  const uint32_t normal = magnitude + ((127 - 15) << 23);
  const uint32_t inf_nan = normal + ((128 - 16) << 23);
  // Subnormal halves: renormalise through a float subtraction of the implicit bit.
  const float subnormal = bits_as_float(magnitude + (113u << 23)) - bits_as_float(113u << 23);
  const uint32_t out = exponent == (0x7C00u << 13) ? inf_nan : (exponent == 0 ? float_as_bits(subnormal) : normal);
  return bits_as_float(out | sign);
}

// The sum is in double (a float sum over 150k terms drifts by ~1e-5, enough to move an inverse-CDF draw by
// a token), in eight independent lanes so that it vectorises without reassociating one running sum.
FD_VECTOR_CLONES double sum_as_double(const float* __restrict e, int64_t n) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] += e[i + j];
  }
  double total = 0.0;
  for (; i < n; ++i) total += e[i];
  for (double lane : lanes) total += lane;
  return total;
}

// Converts one row of float32 / bfloat16 / float16 to float32 (vectorised per dtype).
FD_VECTOR_CLONES void load_row_as_float(const void* src, ScalarKind kind, float* __restrict dst, int64_t n) {
  switch (kind) {
    case ScalarKind::kFloat32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      break;
    case ScalarKind::kBFloat16: {
      const uint16_t* z = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_bits_to_float(z[i]);
      break;
    }
    case ScalarKind::kFloat16: {
      const uint16_t* z = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_bits_to_float(z[i]);
      break;
    }
  }
}

// Floats as int32 in the same order (for non-NaN values): negative floats get their magnitude bits
// flipped. An integer max is something GCC vectorises without -ffast-math; a float max is not.
__attribute__((always_inline)) inline int32_t ordered_int(float x) {
  const int32_t bits = static_cast<int32_t>(float_as_bits(x));
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

__attribute__((always_inline)) inline float from_ordered_int(int32_t key) {
  return bits_as_float(static_cast<uint32_t>(key ^ ((key >> 31) & 0x7FFFFFFF)));
}

// Row maximum (NaN-free input assumed), vectorised through ordered_int.
FD_VECTOR_CLONES float row_max(const float* __restrict x, int64_t n) {
  int32_t m = ordered_int(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t key = ordered_int(x[i]);
    m = key > m ? key : m;
  }
  return from_ordered_int(m);
}

// sum_i exp(x_i - m) for x_i <= m: sixteen float lanes within 512-element blocks (so the exp and the adds
// vectorise), each block's lanes then added in double (so the total does not drift over 150k terms).
FD_VECTOR_CLONES double sum_exp_shifted(const float* __restrict x, int64_t n, float m) {
  constexpr int kLanes = 16;
  constexpr int64_t kBlock = 512;
  double total = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    float lanes[kLanes] = {};
    for (int64_t j = 0; j < kBlock; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += exp_nonpositive(x[i + j + l] - m);
    }
    for (float lane : lanes) total += lane;
  }
  for (; i < n; ++i) total += exp_nonpositive(x[i] - m);
  return total;
}

}  // namespace
}  // namespace fastdoctor
