// CUDA kernels for token-level scoring; same math as the CPU kernels (token_scoring.h), checked against
// reference.py in tests/test_gpu_token_scoring.py.
//   lse_update_kernel        one block per row: a block-wide (max, sum of exp) over a [rows, cols] block of
//                            logits in any of the three dtypes, folded into the row's running state, and the
//                            target logit picked up when it lies in the block. Used for whole logit rows and
//                            for the vocabulary chunks of the hidden-state path (chunks made by cuBLAS).
//   finish_log_probs_kernel  logp = target logit - logsumexp; 0 for ignored targets, NaN when out of range
//   face_rewards_kernel      one block per response: masked mean of |lp_pos - lp_neg|, then the transform
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cub/block/block_reduce.cuh>

#include "token_scoring.h"

namespace fastdoctor {

constexpr int kScoreThreads = 256;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

struct LseOp {
  __device__ __forceinline__ OnlineLogSumExp operator()(const OnlineLogSumExp& a, const OnlineLogSumExp& b) const {
    return combine_lse(a, b);
  }
};

template <typename T>
__global__ void __launch_bounds__(kScoreThreads)
    lse_update_kernel(const T* __restrict__ block, int64_t row_stride, int64_t cols, int64_t offset,
                      const int64_t* __restrict__ targets, OnlineLogSumExp* __restrict__ state,
                      float* __restrict__ target_logit) {
  const int64_t row = blockIdx.x;
  const T* x = block + row * row_stride;
  OnlineLogSumExp local{-INFINITY, 0.0f};
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = to_float<T>(x[i]);
    local = combine_lse(local, OnlineLogSumExp{v, v == -INFINITY ? 0.0f : 1.0f});
  }
  using Reduce = cub::BlockReduce<OnlineLogSumExp, kScoreThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const OnlineLogSumExp total = Reduce(storage).Reduce(local, LseOp());
  if (threadIdx.x == 0) {
    state[row] = combine_lse(state[row], total);
    const int64_t y = targets[row] - offset;
    if (y >= 0 && y < cols) target_logit[row] = to_float<T>(x[y]);
  }
}

__global__ void finish_log_probs_kernel(const int64_t* __restrict__ targets, const OnlineLogSumExp* __restrict__ state,
                                        const float* __restrict__ target_logit, int64_t rows, int64_t vocab,
                                        int64_t ignore_index, float* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t y = targets[row];
  if (y == ignore_index) {
    out[row] = 0.0f;
  } else if (y < 0 || y >= vocab) {
    out[row] = NAN;
  } else {
    out[row] = log_prob_from_lse(target_logit[row], state[row]);
  }
}

__global__ void __launch_bounds__(kScoreThreads)
    face_rewards_kernel(const float* __restrict__ lp_pos, const float* __restrict__ lp_neg,
                        const bool* __restrict__ mask, const float* __restrict__ sign, int64_t cols, float tau,
                        float theta, float eps, float* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const int64_t base = row * cols;
  double total = 0.0;
  int count = 0;
  for (int64_t t = threadIdx.x; t < cols; t += blockDim.x) {
    if (mask[base + t]) {
      total += fabsf(lp_pos[base + t] - lp_neg[base + t]);
      ++count;
    }
  }
  using ReduceD = cub::BlockReduce<double, kScoreThreads>;
  using ReduceI = cub::BlockReduce<int, kScoreThreads>;
  __shared__ typename ReduceD::TempStorage storage_d;
  __shared__ typename ReduceI::TempStorage storage_i;
  __shared__ float mean;
  __shared__ int valid;
  const double sum = ReduceD(storage_d).Sum(total);
  const int n = ReduceI(storage_i).Sum(count);
  if (threadIdx.x == 0) {
    valid = n;
    mean = n > 0 ? static_cast<float>(sum / n) : 0.0f;
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < cols; t += blockDim.x) {
    out[base + t] = (valid > 0 && mask[base + t])
                        ? token_reward(lp_pos[base + t], lp_neg[base + t], mean, sign[row], tau, theta, eps)
                        : 0.0f;
  }
}

}  // namespace fastdoctor
