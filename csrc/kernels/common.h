// Helpers shared by more than one kernel family (mix_sample.h, token_scoring.h, router_gating.h, philox.h),
// host+device inline and framework-free like the family headers themselves.
//
// Why a header of its own: they belong to no single op. They used to sit in mix_sample.h, so the
// token-scoring and router headers depended on the mix-sample op's argument set just to get a macro and a
// few bit casts. Here they are:
//   FD_HOST_DEVICE            host+device inline for nvcc, plain inline for the C++ compiler
//   ScalarKind, MixInput      the logit dtypes the ops accept, and one strided [rows, vocab] view of logits
//                             in one of them (the mix-sample inputs and the router's base and RM logits)
//   is_invalid_logit          NaN and +inf invalidate a row; -inf is a mask (mix-sample and router rows)
//   float_as_bits, bits_as_float, bfloat16_bits_to_float
//                             bit casts: memcpy on the host, intrinsics on the device (no type punning UB)
//   float_to_ordered_key, ordered_key_to_float
//                             an order-preserving uint32 key, for the radix selections of top-k/top-p and
//                             of the router's top-K
// CUDA-only device helpers shared by several *.cuh files are in common.cuh.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FD_HOST_DEVICE inline
#endif

namespace fastdoctor {

enum class ScalarKind : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct MixInput {
  const void* data;    // row r starts at data + r * row_stride elements; the vocabulary is contiguous
  int64_t row_stride;  // in elements
  ScalarKind kind;
};

// NaN and +inf make a row invalid; -inf is a legitimate mask.
FD_HOST_DEVICE bool is_invalid_logit(float s) { return !(s <= 3.402823466e+38f); }

FD_HOST_DEVICE uint32_t float_as_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

FD_HOST_DEVICE float bits_as_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

FD_HOST_DEVICE float bfloat16_bits_to_float(uint16_t bits) { return bits_as_float(static_cast<uint32_t>(bits) << 16); }

// Maps a float to a uint32 whose unsigned order is the float order (-inf < ... < -0 = +0 < ... < +inf),
// for radix selection. -0 and +0 map to adjacent keys; they never matter as thresholds in practice.
FD_HOST_DEVICE uint32_t float_to_ordered_key(float f) {
  const uint32_t bits = float_as_bits(f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

FD_HOST_DEVICE float ordered_key_to_float(uint32_t key) {
  return bits_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

}  // namespace fastdoctor
