// CUDA launchers for the token-scoring ops: checks, the chunked cuBLAS matmuls of the hidden-state path,
// launches on the current stream. Kernels: csrc/kernels/token_scoring.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/token_scoring_args.h"
#include "../kernels/token_scoring.cuh"

namespace fastdoctor {
namespace {

struct ScoreState {
  at::Tensor lse;           // [rows] OnlineLogSumExp, as 2 floats each
  at::Tensor target_logit;  // [rows]
  OnlineLogSumExp* lse_ptr() { return reinterpret_cast<OnlineLogSumExp*>(lse.data_ptr<float>()); }
};

ScoreState new_state(int64_t rows, const at::TensorOptions& options) {
  at::Tensor lse = at::empty({rows, 2}, options.dtype(at::kFloat));
  lse.select(1, 0).fill_(-INFINITY);
  lse.select(1, 1).zero_();
  return {lse, at::zeros({rows}, options.dtype(at::kFloat))};
}

void update(const at::Tensor& block, int64_t offset, const at::Tensor& targets, ScoreState& state) {
  const int64_t rows = block.size(0);
  if (rows == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(rows));
  switch (block.scalar_type()) {
    case at::kFloat:
      lse_update_kernel<float><<<grid, kScoreThreads, 0, stream>>>(
          block.data_ptr<float>(), block.stride(0), block.size(1), offset, targets.data_ptr<int64_t>(),
          state.lse_ptr(), state.target_logit.data_ptr<float>());
      break;
    case at::kBFloat16:
      lse_update_kernel<__nv_bfloat16><<<grid, kScoreThreads, 0, stream>>>(
          reinterpret_cast<const __nv_bfloat16*>(block.data_ptr()), block.stride(0), block.size(1), offset,
          targets.data_ptr<int64_t>(), state.lse_ptr(), state.target_logit.data_ptr<float>());
      break;
    default:
      lse_update_kernel<__half><<<grid, kScoreThreads, 0, stream>>>(
          reinterpret_cast<const __half*>(block.data_ptr()), block.stride(0), block.size(1), offset,
          targets.data_ptr<int64_t>(), state.lse_ptr(), state.target_logit.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor finish(const at::Tensor& targets, ScoreState& state, int64_t vocab, int64_t ignore_index) {
  const int64_t rows = targets.size(0);
  at::Tensor out = at::empty({rows}, targets.options().dtype(at::kFloat));
  if (rows == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  finish_log_probs_kernel<<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(
      targets.data_ptr<int64_t>(), state.lse_ptr(), state.target_logit.data_ptr<float>(), rows, vocab, ignore_index,
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor target_log_probs_from_logits_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                             int64_t ignore_index) {
  check_logits_and_targets(logits_in, targets_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  TORCH_CHECK_VALUE(logits_in.size(1) > 0, "logits: the vocabulary is empty (V = 0)");
  const at::Tensor logits = logits_in.stride(-1) == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor targets = targets_in.contiguous();
  ScoreState state = new_state(logits.size(0), logits.options());
  update(logits, 0, targets, state);
  return finish(targets, state, logits.size(1), ignore_index);
}

at::Tensor target_log_probs_from_hidden_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                             const at::Tensor& targets_in, int64_t chunk_size, int64_t ignore_index) {
  check_hidden_and_weight(hidden, weight, targets_in, chunk_size);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const at::Tensor targets = targets_in.contiguous();
  const int64_t vocab = weight.size(0);
  ScoreState state = new_state(hidden.size(0), hidden.options());
  for (int64_t offset = 0; offset < vocab; offset += chunk_size) {
    const int64_t cols = std::min(chunk_size, vocab - offset);
    update(at::mm(hidden, weight.narrow(0, offset, cols).t()), offset, targets, state);
  }
  return finish(targets, state, vocab, ignore_index);
}

at::Tensor token_rewards_from_face_logprobs_cuda(const at::Tensor& lp_pos_in, const at::Tensor& lp_neg_in,
                                                 const at::Tensor& mask_in, const at::Tensor& sign_in, double tau,
                                                 double theta, double eps) {
  check_face_logprobs(lp_pos_in, lp_neg_in, mask_in, sign_in);
  const c10::cuda::CUDAGuard guard(lp_pos_in.device());
  const at::Tensor lp_pos = lp_pos_in.contiguous(), lp_neg = lp_neg_in.contiguous();
  const at::Tensor mask = mask_in.contiguous(), sign = sign_in.contiguous();
  at::Tensor out = at::empty_like(lp_pos);
  if (lp_pos.numel() == 0) return out;
  face_rewards_kernel<<<static_cast<unsigned>(lp_pos.size(0)), kScoreThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      lp_pos.data_ptr<float>(), lp_neg.data_ptr<float>(), mask.data_ptr<bool>(), sign.data_ptr<float>(),
      lp_pos.size(1), static_cast<float>(tau), static_cast<float>(theta), static_cast<float>(eps),
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CUDA, m) {
  m.impl("target_log_probs_from_logits", &target_log_probs_from_logits_cuda);
  m.impl("target_log_probs_from_hidden", &target_log_probs_from_hidden_cuda);
  m.impl("token_rewards_from_face_logprobs", &token_rewards_from_face_logprobs_cuda);
}

}  // namespace fastdoctor
