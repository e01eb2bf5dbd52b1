// CUDA launcher for fastdoctor::mixed_sampling_from_logits: checks, workspace, launches on the current
// stream. The kernels are in csrc/kernels/mix_sample.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/mix_sample_args.h"
#include "../kernels/mix_sample.cuh"

namespace fastdoctor {
namespace {

int multiprocessor_count(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device] > 0) return cached[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) cached[device] = count;
  return count;
}

std::tuple<at::Tensor, at::Tensor> mixed_sampling_from_logits_cuda(at::TensorList logits, const at::Tensor& weights,
                                                                   const at::Tensor& temperature,
                                                                   const at::Tensor& top_k, const at::Tensor& top_p,
                                                                   const at::Tensor& seed, const at::Tensor& step,
                                                                   int64_t vocab_size) {
  const c10::cuda::CUDAGuard guard(logits[0].device());
  PackedMixSample packed =
      pack_mix_sample_args(logits, weights, temperature, top_k, top_p, seed, step, vocab_size);
  const MixSampleArgs& args = packed.args;
  TORCH_CHECK_VALUE(args.batch <= 65535, "logits: at most 65535 rows per call on CUDA, got ", args.batch);
  TORCH_CHECK_VALUE(args.vocab < INT32_MAX, "logits: vocabulary too large for the CUDA kernel: ", args.vocab);

  // Enough blocks to cover the GPU twice at small batch, but no chunk smaller than 2048 columns.
  const int64_t max_chunks = (args.vocab + 2047) / 2048;
  const int64_t wanted = (2 * multiprocessor_count(logits[0].get_device()) + args.batch - 1) / args.batch;
  const int64_t num_chunks = std::max<int64_t>(1, std::min(max_chunks, wanted));
  const int64_t chunk_size = (args.vocab + num_chunks - 1) / num_chunks;

  // Workspace from the caching allocator: no cudaMalloc on the steady path, and capture-safe.
  const auto options = logits[0].options().dtype(at::kFloat);
  at::Tensor mixed = at::empty({args.batch, args.vocab}, options);
  at::Tensor partials = at::empty({args.batch * num_chunks * static_cast<int64_t>(sizeof(ChunkPartial) / 4)}, options);
  auto* partials_ptr = reinterpret_cast<ChunkPartial*>(partials.data_ptr<float>());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 mix_grid(static_cast<unsigned>(num_chunks), static_cast<unsigned>(args.batch));
  mix_rows_kernel<<<mix_grid, kMixThreads, 0, stream>>>(args, mixed.data_ptr<float>(), partials_ptr, chunk_size);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  select_sample_kernel<<<static_cast<unsigned>(args.batch), kSelectThreads, 0, stream>>>(
      args, mixed.data_ptr<float>(), partials_ptr, static_cast<int>(num_chunks));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed.tokens, packed.logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CUDA, m) {
  m.impl("mixed_sampling_from_logits", &mixed_sampling_from_logits_cuda);
}

}  // namespace fastdoctor
