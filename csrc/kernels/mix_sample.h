// Fused mix-and-sample: per-element math shared by the CPU kernel (csrc/cpu/mix_sample_cpu.cpp) and the
// CUDA kernels (csrc/kernels/mix_sample.cuh). Framework-free: raw pointers and sizes, no torch headers.
//
// Semantics (the oracle is python/fastdoctor/reference.py::mixed_sampling_from_logits):
//   s_i  = (sum_k w_k * z_k[i]) / T        per-row constants of log_softmax cancel (METHODS.md decision 6);
//                                          T = 0 means greedy, and then T = 1 for the returned log-prob
//   top-k: keep s_i >= (k-th largest s)    ties with the k-th value are kept, as HF's TopKLogitsWarper
//   top-p: keep s_i >= v*, v* = the smallest s whose strictly-greater mass is < p (renormalised over the
//          top-k set); the token that crosses p is kept, ties with it too
//   token: greedy -> first index of max s; else inverse CDF in vocabulary order at u = Philox(seed, step)
//   logprob: log of the token's probability under the filtered, renormalised distribution
// A row whose mixed logits hold NaN or +inf, or are all -inf, is invalid: token -1, logprob NaN.
#pragma once
#include <cstdint>

#include "common.h"  // FD_HOST_DEVICE, ScalarKind, MixInput, is_invalid_logit, bit and key helpers
#include "philox.h"

namespace fastdoctor {

constexpr int kMaxMixInputs = 8;
constexpr int64_t kInvalidToken = -1;

struct MixSampleArgs {
  MixInput inputs[kMaxMixInputs];
  int32_t num_inputs;
  int64_t batch;
  int64_t vocab;             // columns used (an explicit vocab_size truncates padded vocabularies)
  const float* weights;      // [batch, num_inputs], contiguous
  const float* temperature;  // [batch]
  const int64_t* top_k;      // [batch]
  const float* top_p;        // [batch]
  const int64_t* seed;       // [batch]
  const int64_t* step;       // [batch]
  int64_t* out_token;        // [batch]
  float* out_logprob;        // [batch]
};

// One row's sampling parameters, sanitised so that the raw op never misbehaves on values that the Python
// wrapper would have rejected: T <= 0 (or NaN) is greedy, k outside (0, V) is off, p outside (0, 1) is off.
struct RowParams {
  bool greedy;
  float temperature;  // the divisor applied to the mixed logits; 1 for greedy rows
  int64_t top_k;      // 0 = off
  float top_p;        // 1 = off
  int64_t seed;
  int64_t step;
};

FD_HOST_DEVICE RowParams load_row_params(const MixSampleArgs& a, int64_t row) {
  RowParams p;
  const float t = a.temperature[row];
  p.greedy = !(t > 0.0f);
  p.temperature = p.greedy ? 1.0f : t;
  const int64_t k = a.top_k[row];
  p.top_k = (k > 0 && k < a.vocab) ? k : 0;
  const float tp = a.top_p[row];
  p.top_p = (tp > 0.0f && tp < 1.0f) ? tp : 1.0f;
  p.seed = a.seed[row];
  p.step = a.step[row];
  return p;
}

// acc + w * z, where a zero weight contributes nothing (so a masked -inf logit of an unused model does not
// turn into 0 * -inf = NaN). No fused multiply-add: the reference rounds the product, then the sum.
FD_HOST_DEVICE float mix_term(float acc, float w, float z) { return w != 0.0f ? acc + w * z : acc; }

}  // namespace fastdoctor
