// CUDA kernel for the router half of fastdoctor::routed_sampling_from_logits: one block per row computes the
// top-K of the base and the RM logits and the router MLP, and writes alpha and the mixing weights
// (1 - alpha, alpha); the launcher then runs the mix-sample kernels on those weights. Same semantics as the
// CPU kernel (shared math in router_gating.h); checked against reference.py in tests/test_gpu_router_gating.py.
//
// Top-K per model, with no sort of the row and no global workspace:
//   1. radix select of the K-th largest order-preserving key (4 passes of 8 bits, counts in shared memory);
//      it also yields how many elements equal to that key are wanted (ties rank by the lower id);
//   2. one collection pass in vocabulary order: keys above the threshold take slots by atomicAdd; keys equal
//      to it take the next slots by a block-wide prefix count, so the lowest ids win (that scan runs only
//      on tiles that hold such a key);
//   3. a rank sort of the K candidates (each thread counts who ranks before its candidate).
// MLP: one warp per hidden unit (strided), lanes over the 2K(d+1) features, then a fixed-order sum over warps.
// The features sit in dynamic shared memory when they fit (2K(d+1) floats), else are gathered on the fly.
#pragma once
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "common.cuh"  // load_logit
#include "router_gating.h"

namespace fastdoctor {

constexpr int kRouterThreads = 512;
constexpr int kRouterWarps = kRouterThreads / 32;
constexpr int kRouterMaxSharedFeatures = 10240;  // 40 KiB: with RouterShared, under the 48 KiB default limit

// -0 and +0 rank as equal (ties then go by id), as in the CPU kernel and the reference.
__device__ __forceinline__ uint32_t router_key(float x) { return float_to_ordered_key(x == 0.0f ? 0.0f : x); }

struct RouterShared {
  uint32_t counts[256];
  uint32_t prefix;
  uint32_t prefix_mask;
  int32_t remaining;  // elements still wanted under the current prefix
  int32_t greater_slots;
  RouterCandidate unsorted[kMaxRouterTopK];
  RouterCandidate ranked[2 * kMaxRouterTopK];  // base ranks 0..K-1, then RM ranks 0..K-1
  float warp_sums[kRouterWarps];
  typename cub::BlockScan<int32_t, kRouterThreads>::TempStorage scan;
};

// Ranks the top-k of one model's row into `ranked`; returns (block-uniformly) whether it holds NaN or +inf.
__device__ bool rank_top_k_of_row(const MixInput& in, int64_t row, int64_t n, int k, RouterCandidate* ranked,
                                  RouterShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0u;
    sh.prefix_mask = 0u;
    sh.remaining = k;
  }
  bool invalid = false;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) sh.counts[d] = 0u;
    __syncthreads();
    const uint32_t prefix = sh.prefix, mask = sh.prefix_mask;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float x = load_logit(in, row, i);
      if (shift == 24) invalid |= is_invalid_logit(x);
      const uint32_t key = router_key(x);
      if ((key & mask) == prefix) atomicAdd(&sh.counts[(key >> shift) & 0xFFu], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // The digit where the count from the top reaches the number still wanted; n >= k makes it exist.
      int32_t above = 0;
      int digit = 255;
      for (; digit > 0; --digit) {
        const int32_t here = static_cast<int32_t>(sh.counts[digit]);
        if (above + here >= sh.remaining) break;
        above += here;
      }
      sh.remaining -= above;
      sh.prefix |= static_cast<uint32_t>(digit) << shift;
      sh.prefix_mask |= 0xFFu << shift;
    }
    __syncthreads();
  }
  const bool row_invalid = __syncthreads_or(invalid) != 0;
  const uint32_t threshold = sh.prefix;
  const int32_t wanted_equal = sh.remaining;  // >= 1
  const int32_t num_greater = k - wanted_equal;
  if (threadIdx.x == 0) sh.greater_slots = 0;
  __syncthreads();

  int32_t equal_seen = 0;  // block-uniform
  for (int64_t tile = 0; tile < n; tile += blockDim.x) {
    const int64_t i = tile + threadIdx.x;
    float x = 0.0f;
    uint32_t key = 0u;
    if (i < n) {
      x = load_logit(in, row, i);
      key = router_key(x);
    }
    const bool in_row = i < n;
    if (in_row && key > threshold) {
      sh.unsorted[atomicAdd(&sh.greater_slots, 1)] = RouterCandidate{x, static_cast<int32_t>(i)};
    }
    const bool equal = in_row && key == threshold;
    const int32_t tile_equal = __syncthreads_count(equal);
    if (tile_equal > 0 && equal_seen < wanted_equal) {
      int32_t before = 0;
      cub::BlockScan<int32_t, kRouterThreads>(sh.scan).ExclusiveSum(equal ? 1 : 0, before);
      if (equal && equal_seen + before < wanted_equal) {
        sh.unsorted[num_greater + equal_seen + before] = RouterCandidate{x, static_cast<int32_t>(i)};
      }
      __syncthreads();  // the scan storage is reused by the next tile
    }
    equal_seen += tile_equal;
  }
  __syncthreads();
  if (threadIdx.x < k) {
    const RouterCandidate mine = sh.unsorted[threadIdx.x];
    int rank = 0;
    for (int j = 0; j < k; ++j) rank += ranks_before(sh.unsorted[j], mine) ? 1 : 0;
    ranked[rank] = mine;
  }
  __syncthreads();
  return row_invalid;
}

template <bool kFeaturesInShared>
__global__ void __launch_bounds__(kRouterThreads) router_alpha_kernel(RouterArgs args) {
  __shared__ RouterShared sh;
  extern __shared__ float shared_features[];
  const int64_t row = blockIdx.x;
  const int k = args.top_k;
  const bool base_invalid = rank_top_k_of_row(args.base, row, args.vocab, k, sh.ranked, sh);
  const bool rm_invalid = rank_top_k_of_row(args.rm, row, args.vocab, k, sh.ranked + k, sh);
  if (base_invalid || rm_invalid) {
    if (threadIdx.x == 0) store_router_output(args, row, 0.0f, /*invalid=*/true);
    return;
  }
  const int32_t width = static_cast<int32_t>(router_feature_width(k, args.embed_dim));
  if constexpr (kFeaturesInShared) {
    for (int32_t f = threadIdx.x; f < width; f += blockDim.x) {
      shared_features[f] = router_feature(sh.ranked, args.embedding, args.embed_dim, f);
    }
    __syncthreads();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float warp_output = 0.0f;
  for (int32_t j = warp; j < args.hidden; j += kRouterWarps) {
    const float* w1_row = args.w1 + static_cast<int64_t>(j) * width;
    float dot = 0.0f;
    for (int32_t f = lane; f < width; f += 32) {
      const float h = kFeaturesInShared ? shared_features[f]
                                        : router_feature(sh.ranked, args.embedding, args.embed_dim, f);
      dot += w1_row[f] * h;
    }
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, offset);
    warp_output += args.w2[j] * tanhf(dot + args.b1[j]);
  }
  if (lane == 0) sh.warp_sums[warp] = warp_output;
  __syncthreads();
  if (threadIdx.x == 0) {
    float output = 0.0f;
    for (int w = 0; w < kRouterWarps; ++w) output += sh.warp_sums[w];
    store_router_output(args, row, output, /*invalid=*/false);
  }
}

}  // namespace fastdoctor
