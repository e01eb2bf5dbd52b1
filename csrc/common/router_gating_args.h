// Torch glue shared by the CPU and CUDA launchers of routed_sampling_from_logits: metadata checks (never
// values, so no device synchronisation), packing of raw pointers, and the hand-off to the mix-sample op.
// TORCH_CHECK_TYPE surfaces in Python as TypeError and TORCH_CHECK_VALUE as ValueError; every message names
// the argument and what was expected.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <climits>
#include <string>
#include <tuple>
#include <vector>

#include "../kernels/router_gating.h"

namespace fastdoctor {

inline ScalarKind router_logit_kind(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::kFloat32;
    case at::kBFloat16: return ScalarKind::kBFloat16;
    case at::kHalf: return ScalarKind::kFloat16;
    default: TORCH_CHECK_TYPE(false, name, ": expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

inline void check_router_parameter(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, ": expected dtype float32 (router parameters are fp32), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected device ", device, " (that of base_logits), got ",
                    t.device());
}

// Owns the contiguous copies that the packed pointers may refer to, and the outputs.
struct PackedRouter {
  RouterArgs args{};
  std::vector<at::Tensor> keep_alive;
  at::Tensor alpha;    // float32 [batch]
  at::Tensor weights;  // float32 [batch, 2]
};

inline PackedRouter pack_router_args(const at::Tensor& base_logits, const at::Tensor& rm_logits,
                                     const at::Tensor& embedding, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& b2, int64_t top_k_features,
                                     int64_t vocab_size) {
  const ScalarKind base_kind = router_logit_kind(base_logits, "base_logits");
  const ScalarKind rm_kind = router_logit_kind(rm_logits, "rm_logits");
  TORCH_CHECK_VALUE(base_logits.dim() == 2, "base_logits: expected shape [batch, vocab], got ", base_logits.sizes());
  const at::Device device = base_logits.device();
  const int64_t batch = base_logits.size(0);
  TORCH_CHECK_VALUE(rm_logits.device() == device, "rm_logits: expected device ", device,
                    " (that of base_logits), got ", rm_logits.device());
  TORCH_CHECK_VALUE(rm_logits.dim() == 2 && rm_logits.size(0) == batch, "rm_logits: expected shape [", batch,
                    ", vocab], got ", rm_logits.sizes());
  const int64_t min_vocab = std::min(base_logits.size(1), rm_logits.size(1));
  if (vocab_size < 0) {
    TORCH_CHECK_VALUE(rm_logits.size(1) == base_logits.size(1), "rm_logits: vocabulary size ", rm_logits.size(1),
                      " differs from base_logits' ", base_logits.size(1),
                      "; the base and reward models must share a tokenizer (pass vocab_size to truncate padded "
                      "vocabularies)");
  }
  TORCH_CHECK_VALUE(vocab_size < 0 || vocab_size <= min_vocab, "vocab_size: expected at most ", min_vocab,
                    " (the smaller logits width), got ", vocab_size);
  const int64_t vocab = vocab_size < 0 ? min_vocab : vocab_size;
  TORCH_CHECK_VALUE(vocab > 0, "base_logits: the vocabulary is empty (V = 0)");
  TORCH_CHECK_VALUE(batch > 0, "base_logits: the batch is empty (B = 0)");
  TORCH_CHECK_VALUE(vocab < INT32_MAX, "base_logits: vocabulary too large for int32 token ids: ", vocab);
  TORCH_CHECK_VALUE(top_k_features >= 1 && top_k_features <= kMaxRouterTopK, "top_k_features: expected K in [1, ",
                    kMaxRouterTopK, "], got ", top_k_features);
  TORCH_CHECK_VALUE(top_k_features <= vocab, "top_k_features: K = ", top_k_features,
                    " exceeds the vocabulary size V = ", vocab);

  check_router_parameter(embedding, "embedding", device);
  TORCH_CHECK_VALUE(embedding.dim() == 2, "embedding: expected shape [num_embeddings, d], got ", embedding.sizes());
  TORCH_CHECK_VALUE(embedding.size(0) >= vocab, "embedding: expected at least V = ", vocab,
                    " rows (one per token id), got ", embedding.sizes());
  const int64_t embed_dim = embedding.size(1);
  const int64_t width = router_feature_width(top_k_features, embed_dim);
  check_router_parameter(w1, "w1", device);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == width && w1.size(0) >= 1, "w1: expected shape [H, 2*K*(d+1)] = [H, ",
                    width, "] for top_k_features K = ", top_k_features, " and embedding dim d = ", embed_dim,
                    ", got ", w1.sizes(), " (a router built for another K or d?)");
  const int64_t hidden = w1.size(0);
  TORCH_CHECK_VALUE(width * hidden < INT32_MAX, "w1: too large (", hidden, " x ", width, ")");
  check_router_parameter(b1, "b1", device);
  TORCH_CHECK_VALUE(b1.dim() == 1 && b1.size(0) == hidden, "b1: expected shape [", hidden, "] (H = w1.size(0)), got ",
                    b1.sizes());
  check_router_parameter(w2, "w2", device);
  TORCH_CHECK_VALUE(w2.dim() == 1 && w2.size(0) == hidden, "w2: expected shape [", hidden, "] (H = w1.size(0)), got ",
                    w2.sizes());
  check_router_parameter(b2, "b2", device);
  TORCH_CHECK_VALUE(b2.dim() == 1 && b2.size(0) == 1, "b2: expected shape [1], got ", b2.sizes());

  PackedRouter packed;
  // Rows must have a contiguous vocabulary (what a model's forward gives); anything else is copied once.
  const at::Tensor base_rows = (base_logits.size(1) > 0 && base_logits.stride(1) != 1) ? base_logits.contiguous()
                                                                                         : base_logits;
  const at::Tensor rm_rows = (rm_logits.size(1) > 0 && rm_logits.stride(1) != 1) ? rm_logits.contiguous() : rm_logits;
  std::vector<at::Tensor> params = {embedding.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(),
                                    b2.contiguous()};
  packed.keep_alive = {base_rows, rm_rows};
  for (auto& p : params) packed.keep_alive.push_back(p);
  packed.alpha = at::empty({batch}, base_logits.options().dtype(at::kFloat));
  packed.weights = at::empty({batch, 2}, base_logits.options().dtype(at::kFloat));

  RouterArgs& a = packed.args;
  a.base = MixInput{base_rows.data_ptr(), base_rows.stride(0), base_kind};
  a.rm = MixInput{rm_rows.data_ptr(), rm_rows.stride(0), rm_kind};
  a.batch = batch;
  a.vocab = vocab;
  a.top_k = static_cast<int32_t>(top_k_features);
  a.embed_dim = static_cast<int32_t>(embed_dim);
  a.hidden = static_cast<int32_t>(hidden);
  a.embedding = params[0].data_ptr<float>();
  a.w1 = params[1].data_ptr<float>();
  a.b1 = params[2].data_ptr<float>();
  a.w2 = params[3].data_ptr<float>();
  a.b2 = params[4].data_ptr<float>();
  a.out_alpha = packed.alpha.data_ptr<float>();
  a.out_weights = packed.weights.data_ptr<float>();
  return packed;
}

// The routed logits are mixed and sampled by fastdoctor::mixed_sampling_from_logits itself, called through
// the dispatcher inside this op (no Python round trip): one implementation of the sampling semantics, the
// same kernels on each backend, and the per-row weights never leave the device.
inline std::tuple<at::Tensor, at::Tensor> mix_and_sample_routed(const at::Tensor& base_logits,
                                                                const at::Tensor& rm_logits,
                                                                const at::Tensor& weights,
                                                                const at::Tensor& temperature,
                                                                const at::Tensor& top_k, const at::Tensor& top_p,
                                                                const at::Tensor& seed, const at::Tensor& step,
                                                                int64_t vocab_size) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastdoctor::mixed_sampling_from_logits", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, int64_t)>();
  const std::vector<at::Tensor> logits = {base_logits, rm_logits};
  return op.call(logits, weights, temperature, top_k, top_p, seed, step, vocab_size);
}

}  // namespace fastdoctor
