// CUDA launcher for fastdoctor::routed_sampling_from_logits: checks, the router kernel (one block per row:
// top-K of both models, MLP -> alpha and weights), then the mix-sample kernels on those weights, all on the
// current stream: no host synchronisation, workspace only from the caching allocator (graph-capturable).
// The kernel is in csrc/kernels/router_gating.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/router_gating_args.h"
#include "../kernels/router_gating.cuh"

namespace fastdoctor {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> routed_sampling_from_logits_cuda(
    const at::Tensor& base_logits, const at::Tensor& rm_logits, const at::Tensor& embedding, const at::Tensor& w1,
    const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& seed, const at::Tensor& step,
    int64_t top_k_features, int64_t vocab_size) {
  const c10::cuda::CUDAGuard guard(base_logits.device());
  PackedRouter packed = pack_router_args(base_logits, rm_logits, embedding, w1, b1, w2, b2, top_k_features, vocab_size);
  const RouterArgs& args = packed.args;
  TORCH_CHECK_VALUE(args.batch <= INT32_MAX, "base_logits: at most 2^31 - 1 rows per call on CUDA, got ", args.batch);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t width = router_feature_width(args.top_k, args.embed_dim);
  const dim3 grid(static_cast<unsigned>(args.batch));
  if (width <= kRouterMaxSharedFeatures) {
    const size_t shared_bytes = static_cast<size_t>(width) * sizeof(float);
    router_alpha_kernel<true><<<grid, kRouterThreads, shared_bytes, stream>>>(args);
  } else {
    router_alpha_kernel<false><<<grid, kRouterThreads, 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto [tokens, logprobs] = mix_and_sample_routed(base_logits, rm_logits, packed.weights, temperature, top_k, top_p,
                                                  seed, step, vocab_size);
  return {tokens, logprobs, packed.alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CUDA, m) {
  m.impl("routed_sampling_from_logits", &routed_sampling_from_logits_cuda);
}

}  // namespace fastdoctor
