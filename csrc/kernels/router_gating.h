// TARo router gating (METHODS.md §3.3 and project decision 7): per-row math shared by the CPU kernel
// (csrc/cpu/router_gating_cpu.cpp) and the CUDA kernel (csrc/kernels/router_gating.cuh). Framework-free.
//
// Per row b, over the first `vocab` columns of the base logits z_b and the reward-model logits z_r:
//   1. the top-K of each model, independently: (logit, token id) in descending rank order; equal logits rank
//      by the lower token id (-0 and +0 are equal). The same K candidates as a stable descending sort.
//   2. features h in R^{2K(d+1)}, the layout shared with reference.router_features and the trainer:
//        h = [ zb_(0), E[id_b(0)][0..d),  zb_(1), E[id_b(1)][0..d),  ...,  zb_(K-1), E[id_b(K-1)][0..d),
//              zr_(0), E[id_r(0)][0..d),  ...,                            zr_(K-1), E[id_r(K-1)][0..d) ]
//      i.e. slot s in [0, 2K) (base ranks, then RM ranks) occupies h[s(d+1) .. s(d+1)+d]: its logit (fp32),
//      then its token's d-dim embedding row. nn.Embedding(V, d).weight is E, nn.Linear(2K(d+1), H) is
//      (W1, b1), nn.Linear(H, 1) is (w2, b2).
//   3. alpha = sigmoid(w2 . tanh(W1 h + b1) + b2), in fp32.
//   4. mixing weights (1 - alpha, alpha) for (z_b, z_r), handed to fastdoctor::mixed_sampling_from_logits,
//      which mixes, filters and samples exactly as it does for LLMdoctor.
// A row whose base or RM logits hold NaN or +inf gets alpha = NaN, so the mix marks it invalid (token -1).
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"  // FD_HOST_DEVICE, MixInput, bits_as_float

namespace fastdoctor {

constexpr int kMaxRouterTopK = 64;

struct RouterArgs {
  MixInput base;            // [batch, >= vocab], vocabulary contiguous
  MixInput rm;              // the reward model's logits, same layout
  int64_t batch;
  int64_t vocab;            // columns used (both models)
  int32_t top_k;            // K, 1..kMaxRouterTopK, <= vocab
  int32_t embed_dim;        // d
  int32_t hidden;           // H
  const float* embedding;   // [>= vocab, d], contiguous
  const float* w1;          // [H, 2K(d+1)], contiguous
  const float* b1;          // [H]
  const float* w2;          // [H]
  const float* b2;          // [1]
  float* out_alpha;         // [batch]
  float* out_weights;       // [batch, 2]: (1 - alpha, alpha), the mix-sample op's weights
};

struct RouterCandidate {
  float value;
  int32_t token;
};

// The ranking order of the top-K: larger logit first, then the lower token id.
FD_HOST_DEVICE bool ranks_before(const RouterCandidate& a, const RouterCandidate& b) {
  return a.value > b.value || (a.value == b.value && a.token < b.token);
}

FD_HOST_DEVICE int64_t router_feature_width(int64_t top_k, int64_t embed_dim) { return 2 * top_k * (embed_dim + 1); }

// Feature f of h (layout above) from the 2K ranked candidates, without materialising h.
FD_HOST_DEVICE float router_feature(const RouterCandidate* ranked, const float* embedding, int32_t embed_dim,
                                    int32_t f) {
  const int32_t slot = f / (embed_dim + 1);
  const int32_t within = f - slot * (embed_dim + 1);
  return within == 0 ? ranked[slot].value
                     : embedding[static_cast<int64_t>(ranked[slot].token) * embed_dim + (within - 1)];
}

FD_HOST_DEVICE float router_quiet_nan() { return bits_as_float(0x7FC00000u); }

// alpha = sigmoid(w2 . tanh(W1 h + b1) + b2) given the sum w2 . tanh(.); writes alpha and (1 - alpha, alpha).
FD_HOST_DEVICE void store_router_output(const RouterArgs& a, int64_t row, float output_sum, bool invalid) {
  const float alpha = invalid ? router_quiet_nan() : 1.0f / (1.0f + expf(-(output_sum + a.b2[0])));
  a.out_alpha[row] = alpha;
  a.out_weights[2 * row] = 1.0f - alpha;
  a.out_weights[2 * row + 1] = alpha;
}

}  // namespace fastdoctor
