// Philox4x32-10 counter-based random numbers, shared by the CPU and CUDA kernels.
//
// Why counter-based: a row's random number is a pure function of (seed, step, stream), so a row draws
// the same number alone or inside any batch, on the CPU or the GPU, with no generator state to carry
// between decode steps (and nothing to capture badly in a CUDA graph).
//
// Checked against: the Random123 known-answer vectors (tests/test_philox.py) and the pure-PyTorch twin
// in python/fastdoctor/reference.py (philox_uniform), which must produce identical bits.
#pragma once
#include <cstdint>

#include "common.h"  // FD_HOST_DEVICE

namespace fastdoctor {

struct Philox4 {
  uint32_t x[4];
};

FD_HOST_DEVICE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11): counter c[0..3], key k[0..1].
FD_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                     uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kMul0, c0, hi0, lo0);
    philox_mulhilo(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Streams separate independent uses of the same (seed, step); token sampling uses stream 0.
enum PhiloxStream : uint32_t { kStreamTokenSample = 0 };

// A uniform double in [0, 1) with 53 random bits, keyed by the row's seed and the decode step.
FD_HOST_DEVICE double philox_uniform(int64_t seed, int64_t step, uint32_t stream) {
  const uint64_t useed = static_cast<uint64_t>(seed);
  const uint64_t ustep = static_cast<uint64_t>(step);
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(ustep), static_cast<uint32_t>(ustep >> 32), stream, 0u,
                                  static_cast<uint32_t>(useed), static_cast<uint32_t>(useed >> 32));
  const uint64_t bits53 = (static_cast<uint64_t>(r.x[0] >> 5) << 26) | static_cast<uint64_t>(r.x[1] >> 6);
  return static_cast<double>(bits53) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace fastdoctor
