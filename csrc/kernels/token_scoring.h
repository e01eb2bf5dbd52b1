// Token-level scoring (LLMdoctor stage 1): per-element math shared by the CPU kernels
// (csrc/cpu/token_scoring_cpu.cpp) and the CUDA kernels (csrc/kernels/token_scoring.cuh).
//
//   target log-prob   logp_t = z_t[y_t] - logsumexp(z_t), in one pass with an online (max, sum) pair;
//                     from hidden states the logits are made chunk by chunk over the vocabulary, so [T, V]
//                     never exists
//   reward transform  d_t = |lp_pos_t - lp_neg_t|, dhat_t = d_t / (mean_valid(d) + eps),
//                     S_t = tanh(dhat_t / tau), r_t = sign * S_t * [S_t > theta], 0 where masked
// Oracles: python/fastdoctor/reference.py (target_log_probs, token_rewards_from_face_logprobs).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"  // FD_HOST_DEVICE

namespace fastdoctor {

// A running log-sum-exp: sum of exp(x - max) over the values seen.
struct OnlineLogSumExp {
  float max;
  float sum;
};

FD_HOST_DEVICE OnlineLogSumExp combine_lse(OnlineLogSumExp a, OnlineLogSumExp b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  const float m = a.max > b.max ? a.max : b.max;
  return OnlineLogSumExp{m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

FD_HOST_DEVICE float log_prob_from_lse(float target_logit, OnlineLogSumExp lse) {
  return target_logit - lse.max - logf(lse.sum);
}

// The reward of one token given its face log-probs, the response's mean discrimination and the settings.
FD_HOST_DEVICE float token_reward(float lp_pos, float lp_neg, float mean_delta, float sign, float tau, float theta,
                                  float eps) {
  const float delta = fabsf(lp_pos - lp_neg);
  const float strength = tanhf(delta / (mean_delta + eps) / tau);
  return strength > theta ? sign * strength : 0.0f;
}

}  // namespace fastdoctor
