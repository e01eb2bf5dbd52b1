// Torch glue shared by the CPU and CUDA launchers of the token-scoring ops: metadata checks only (no
// device reads), each message naming the argument.
#pragma once
#include <ATen/ATen.h>

#include "logit_args.h"

namespace fastdoctor {

inline void check_logits_and_targets(const at::Tensor& logits, const at::Tensor& targets, const char* logits_name) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                       logits.scalar_type() == at::kHalf,
                   logits_name, ": expected float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.dim() == 2, logits_name, ": expected shape [tokens, columns], got ", logits.sizes());
  TORCH_CHECK_TYPE(targets.scalar_type() == at::kLong, "targets: expected dtype int64, got ", targets.scalar_type());
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == logits.size(0), "targets: expected shape [",
                    logits.size(0), "], got ", targets.sizes());
  TORCH_CHECK_VALUE(targets.device() == logits.device(), "targets: expected device ", logits.device(), ", got ",
                    targets.device());
}

inline void check_hidden_and_weight(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    int64_t chunk_size) {
  check_logits_and_targets(hidden, targets, "hidden");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(1), "weight: expected the LM head [vocab, ",
                    hidden.size(1), "], got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) > 0, "weight: the vocabulary is empty (V = 0)");
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), "weight: expected dtype ", hidden.scalar_type(),
                   " (that of hidden), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == hidden.device(), "weight: expected device ", hidden.device(), ", got ",
                    weight.device());
  TORCH_CHECK_VALUE(chunk_size > 0, "chunk_size: expected > 0, got ", chunk_size);
}

inline void check_face_logprobs(const at::Tensor& lp_pos, const at::Tensor& lp_neg, const at::Tensor& mask,
                                const at::Tensor& sign) {
  TORCH_CHECK_TYPE(lp_pos.scalar_type() == at::kFloat, "logp_pos: expected float32, got ", lp_pos.scalar_type());
  TORCH_CHECK_VALUE(lp_pos.dim() == 2, "logp_pos: expected shape [responses, tokens], got ", lp_pos.sizes());
  TORCH_CHECK_TYPE(lp_neg.scalar_type() == at::kFloat, "logp_neg: expected float32, got ", lp_neg.scalar_type());
  TORCH_CHECK_VALUE(lp_neg.sizes() == lp_pos.sizes(), "logp_neg: expected shape ", lp_pos.sizes(), ", got ",
                    lp_neg.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask: expected bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == lp_pos.sizes(), "mask: expected shape ", lp_pos.sizes(), ", got ", mask.sizes());
  TORCH_CHECK_TYPE(sign.scalar_type() == at::kFloat, "sign: expected float32, got ", sign.scalar_type());
  TORCH_CHECK_VALUE(sign.dim() == 1 && sign.size(0) == lp_pos.size(0), "sign: expected shape [", lp_pos.size(0),
                    "], got ", sign.sizes());
  for (const at::Tensor* t : {&lp_neg, &mask, &sign}) {
    TORCH_CHECK_VALUE(t->device() == lp_pos.device(), "logp_neg, mask and sign: expected device ", lp_pos.device(),
                      ", got ", t->device());
  }
}

}  // namespace fastdoctor
