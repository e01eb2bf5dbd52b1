// Torch glue shared by the CPU and CUDA launchers of mixed_sampling_from_logits: checks the tensors'
// metadata (never their values, so no device synchronisation) and packs raw pointers for the kernels.
// TORCH_CHECK_TYPE surfaces in Python as TypeError and TORCH_CHECK_VALUE as ValueError; every message
// names the argument and what was expected.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "../kernels/mix_sample.h"
#include "logit_args.h"

namespace fastdoctor {

inline void check_row_param(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t batch,
                            const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, name, ": expected shape [", batch, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected device ", device, " (that of logits[0]), got ",
                    t.device());
}

// Owns the contiguous copies that the packed pointers may refer to, and the outputs.
struct PackedMixSample {
  MixSampleArgs args{};
  std::vector<at::Tensor> keep_alive;
  at::Tensor tokens;
  at::Tensor logprobs;
};

inline PackedMixSample pack_mix_sample_args(at::TensorList logits, const at::Tensor& weights,
                                            const at::Tensor& temperature, const at::Tensor& top_k,
                                            const at::Tensor& top_p, const at::Tensor& seed,
                                            const at::Tensor& step, int64_t vocab_size) {
  const int64_t num_inputs = static_cast<int64_t>(logits.size());
  TORCH_CHECK_VALUE(num_inputs >= 1 && num_inputs <= kMaxMixInputs, "logits: expected 1 to ", kMaxMixInputs,
                    " tensors (the patient's and each doctor's), got ", num_inputs);
  const at::Device device = logits[0].device();
  TORCH_CHECK_VALUE(logits[0].dim() == 2, "logits[0]: expected shape [batch, vocab], got ", logits[0].sizes());
  const int64_t batch = logits[0].size(0);
  int64_t min_vocab = logits[0].size(1);
  PackedMixSample packed;
  for (int64_t k = 0; k < num_inputs; ++k) {
    const at::Tensor& z = logits[k];
    const ScalarKind kind = scalar_kind_of(z, k);
    TORCH_CHECK_VALUE(z.device() == device, "logits[", k, "]: expected device ", device,
                      " (that of logits[0]), got ", z.device());
    TORCH_CHECK_VALUE(z.dim() == 2 && z.size(0) == batch, "logits[", k, "]: expected shape [", batch,
                      ", vocab], got ", z.sizes());
    if (vocab_size < 0) {
      TORCH_CHECK_VALUE(z.size(1) == logits[0].size(1), "logits[", k, "]: vocabulary size ", z.size(1),
                        " differs from logits[0]'s ", logits[0].size(1),
                        "; models must share a vocabulary (pass vocab_size to truncate padded vocabularies)");
    }
    min_vocab = std::min<int64_t>(min_vocab, z.size(1));
    at::Tensor rows = (z.size(1) > 0 && z.stride(1) != 1) ? z.contiguous() : z;
    packed.keep_alive.push_back(rows);
    packed.args.inputs[k] = MixInput{rows.data_ptr(), rows.stride(0), kind};
  }
  const int64_t vocab = vocab_size < 0 ? min_vocab : vocab_size;
  TORCH_CHECK_VALUE(vocab_size < 0 || vocab_size <= min_vocab, "vocab_size: expected at most ", min_vocab,
                    " (the smallest logits width), got ", vocab_size);
  TORCH_CHECK_VALUE(vocab > 0, "logits: the vocabulary is empty (V = 0)");
  TORCH_CHECK_VALUE(batch > 0, "logits: the batch is empty (B = 0)");

  TORCH_CHECK_TYPE(weights.scalar_type() == at::kFloat, "weights: expected dtype float32, got ", weights.scalar_type());
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == batch && weights.size(1) == num_inputs,
                    "weights: expected shape [", batch, ", ", num_inputs, "] (one weight per row and logits tensor), got ",
                    weights.sizes());
  TORCH_CHECK_VALUE(weights.device() == device, "weights: expected device ", device, " (that of logits[0]), got ",
                    weights.device());
  check_row_param(temperature, "temperature", at::kFloat, batch, device);
  check_row_param(top_k, "top_k", at::kLong, batch, device);
  check_row_param(top_p, "top_p", at::kFloat, batch, device);
  check_row_param(seed, "seed", at::kLong, batch, device);
  check_row_param(step, "step", at::kLong, batch, device);

  std::vector<at::Tensor> params = {weights.contiguous(), temperature.contiguous(), top_k.contiguous(),
                                    top_p.contiguous(),   seed.contiguous(),        step.contiguous()};
  for (auto& p : params) packed.keep_alive.push_back(p);
  packed.tokens = at::empty({batch}, logits[0].options().dtype(at::kLong));
  packed.logprobs = at::empty({batch}, logits[0].options().dtype(at::kFloat));

  MixSampleArgs& a = packed.args;
  a.num_inputs = static_cast<int32_t>(num_inputs);
  a.batch = batch;
  a.vocab = vocab;
  a.weights = params[0].data_ptr<float>();
  a.temperature = params[1].data_ptr<float>();
  a.top_k = params[2].data_ptr<int64_t>();
  a.top_p = params[3].data_ptr<float>();
  a.seed = params[4].data_ptr<int64_t>();
  a.step = params[5].data_ptr<int64_t>();
  a.out_token = packed.tokens.data_ptr<int64_t>();
  a.out_logprob = packed.logprobs.data_ptr<float>();
  return packed;
}

}  // namespace fastdoctor
