// CPU kernels for token-level scoring (LLMdoctor stage 1); math in csrc/kernels/token_scoring.h.
//   target_log_probs_from_logits     one pass per row (convert, max, sum of exp), no [T, V] log_softmax
//   target_log_probs_from_hidden     vocabulary chunks: logits_c = hidden @ W_c^T (ATen matmul), then an
//                                    online (max, sum) update per row; peak extra memory T x chunk
//   token_rewards_from_face_logprobs per response: masked mean of |lp_pos - lp_neg|, then the transform
// Checked against python/fastdoctor/reference.py in tests/test_token_scoring.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../common/token_scoring_args.h"
#include "../kernels/token_scoring.h"
#include "vector_math.h"

namespace fastdoctor {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Updates each row's running log-sum-exp with a [rows, cols] float block of logits starting at column
// `offset`, and records the target logit when the target falls inside the block.
void update_rows(const at::Tensor& block, int64_t offset, const int64_t* targets, OnlineLogSumExp* lse,
                 float* target_logit) {
  const int64_t rows = block.size(0), cols = block.size(1);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(cols);
    for (int64_t r = begin; r < end; ++r) {
      const float* x = block.data_ptr<float>() + r * block.stride(0);
      const float m = row_max(x, cols);
      const double s = m == -std::numeric_limits<float>::infinity() ? 0.0 : sum_exp_shifted(x, cols, m);
      lse[r] = combine_lse(lse[r], OnlineLogSumExp{m, static_cast<float>(s)});
      const int64_t y = targets[r] - offset;
      if (y >= 0 && y < cols) target_logit[r] = x[y];
    }
  });
}

at::Tensor finish(const at::Tensor& targets, const std::vector<OnlineLogSumExp>& lse,
                  const std::vector<float>& target_logit, int64_t vocab, int64_t ignore_index) {
  at::Tensor out = at::empty({targets.size(0)}, targets.options().dtype(at::kFloat));
  const int64_t* y = targets.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < targets.size(0); ++r) {
    if (y[r] == ignore_index) {
      o[r] = 0.0f;
    } else if (y[r] < 0 || y[r] >= vocab) {
      o[r] = kNaN;  // the Python wrapper reports out-of-range targets by name
    } else {
      o[r] = log_prob_from_lse(target_logit[r], lse[r]);
    }
  }
  return out;
}

at::Tensor target_log_probs_from_logits_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                            int64_t ignore_index) {
  check_logits_and_targets(logits_in, targets_in, "logits");
  const at::Tensor logits = logits_in.stride(-1) == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor targets = targets_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK_VALUE(vocab > 0, "logits: the vocabulary is empty (V = 0)");
  const ScalarKind kind = scalar_kind_of(logits, 0);
  const char* base = static_cast<const char*>(logits.data_ptr());
  const int64_t row_bytes = logits.stride(0) * logits.element_size();
  std::vector<OnlineLogSumExp> lse(rows, OnlineLogSumExp{-INFINITY, 0.0f});
  std::vector<float> target_logit(rows, 0.0f);
  const int64_t* y = targets.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> converted(kind == ScalarKind::kFloat32 ? 0 : vocab);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = reinterpret_cast<const float*>(base + r * row_bytes);  // fp32 rows are read in place
      if (kind != ScalarKind::kFloat32) {
        load_row_as_float(base + r * row_bytes, kind, converted.data(), vocab);
        row = converted.data();
      }
      const float m = row_max(row, vocab);
      const double s = m == -std::numeric_limits<float>::infinity() ? 0.0 : sum_exp_shifted(row, vocab, m);
      lse[r] = OnlineLogSumExp{m, static_cast<float>(s)};
      if (y[r] >= 0 && y[r] < vocab) target_logit[r] = row[y[r]];
    }
  });
  return finish(targets, lse, target_logit, vocab, ignore_index);
}

at::Tensor target_log_probs_from_hidden_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                            const at::Tensor& targets_in, int64_t chunk_size, int64_t ignore_index) {
  check_hidden_and_weight(hidden, weight, targets_in, chunk_size);
  const at::Tensor targets = targets_in.contiguous();
  const int64_t rows = hidden.size(0), vocab = weight.size(0);
  std::vector<OnlineLogSumExp> lse(rows, OnlineLogSumExp{-INFINITY, 0.0f});
  std::vector<float> target_logit(rows, 0.0f);
  for (int64_t offset = 0; offset < vocab; offset += chunk_size) {
    const int64_t cols = std::min(chunk_size, vocab - offset);
    // The logits of this chunk in the model's own dtype (what its forward would give), then float.
    at::Tensor block = at::mm(hidden, weight.narrow(0, offset, cols).t()).to(at::kFloat).contiguous();
    update_rows(block, offset, targets.data_ptr<int64_t>(), lse.data(), target_logit.data());
  }
  return finish(targets, lse, target_logit, vocab, ignore_index);
}

at::Tensor token_rewards_from_face_logprobs_cpu(const at::Tensor& lp_pos_in, const at::Tensor& lp_neg_in,
                                                const at::Tensor& mask_in, const at::Tensor& sign_in, double tau,
                                                double theta, double eps) {
  check_face_logprobs(lp_pos_in, lp_neg_in, mask_in, sign_in);
  const at::Tensor lp_pos = lp_pos_in.contiguous(), lp_neg = lp_neg_in.contiguous();
  const at::Tensor mask = mask_in.contiguous(), sign = sign_in.contiguous();
  const int64_t rows = lp_pos.size(0), cols = lp_pos.size(1);
  at::Tensor out = at::zeros_like(lp_pos);
  const float* p = lp_pos.data_ptr<float>();
  const float* n = lp_neg.data_ptr<float>();
  const bool* valid = mask.data_ptr<bool>();
  const float* sg = sign.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double total = 0.0;
      int64_t count = 0;
      for (int64_t t = 0; t < cols; ++t) {
        if (valid[r * cols + t]) {
          total += std::fabs(p[r * cols + t] - n[r * cols + t]);
          ++count;
        }
      }
      if (count == 0) continue;
      const float mean = static_cast<float>(total / static_cast<double>(count));
      for (int64_t t = 0; t < cols; ++t) {
        const int64_t i = r * cols + t;
        if (valid[i]) {
          o[i] = token_reward(p[i], n[i], mean, sg[r], static_cast<float>(tau), static_cast<float>(theta),
                              static_cast<float>(eps));
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) {
  m.impl("target_log_probs_from_logits", &target_log_probs_from_logits_cpu);
  m.impl("target_log_probs_from_hidden", &target_log_probs_from_hidden_cpu);
  m.impl("token_rewards_from_face_logprobs", &token_rewards_from_face_logprobs_cpu);
}

}  // namespace fastdoctor
