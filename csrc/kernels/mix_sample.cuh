// CUDA kernels for fastdoctor::mixed_sampling_from_logits. Same semantics as the CPU kernel; the shared
// per-element math is in mix_sample.h, and both are checked against reference.py (tests/test_gpu_*.py).
//
// Two launches, no host synchronisation, no allocation (the launcher passes workspace), so the pair can
// be captured in a CUDA graph:
//   mix_rows_kernel       grid (chunks, B): several blocks per row. Reads each input row once, writes the
//                         mixed, temperature-scaled row s (fp32) to workspace, and per-chunk partials:
//                         max, first argmax, sum of exp(s - chunk max), an invalid-logit flag.
//   select_sample_kernel  grid (B), 1024 threads: combines the partials, finds the top-k and top-p
//                         thresholds by radix selection over order-preserving keys of s (4 passes of 8
//                         bits each; counts for top-k, probability mass for top-p; no sort), then draws the
//                         token by a block-wide prefix sum in vocabulary order at u = Philox(seed, step).
// The top-p mass histograms use float atomics, whose order can vary: a boundary within float rounding of
// p can differ between runs (the CPU kernel is deterministic).
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <cstdint>

#include "common.cuh"  // load_logit
#include "mix_sample.h"

namespace fastdoctor {

struct ChunkPartial {
  float max;
  float sum_exp;  // sum of exp(s - max) over the chunk
  int32_t argmax;
  int32_t invalid;
};

constexpr int kMixThreads = 256;
constexpr int kSelectThreads = 1024;
constexpr int kScanItems = 4;

// Combines (max, sum_exp, argmax) pairs: the larger max wins, ties keep the smaller index.
struct MaxSumArg {
  float max;
  float sum_exp;
  int32_t argmax;
};

__device__ __forceinline__ MaxSumArg combine(const MaxSumArg& a, const MaxSumArg& b) {
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  MaxSumArg out;
  out.max = fmaxf(a.max, b.max);
  out.sum_exp = a.sum_exp * expf(a.max - out.max) + b.sum_exp * expf(b.max - out.max);
  if (a.max == b.max) {
    out.argmax = min(a.argmax, b.argmax);
  } else {
    out.argmax = a.max > b.max ? a.argmax : b.argmax;
  }
  return out;
}

struct CombineOp {
  __device__ __forceinline__ MaxSumArg operator()(const MaxSumArg& a, const MaxSumArg& b) const { return combine(a, b); }
};

__global__ void __launch_bounds__(kMixThreads)
    mix_rows_kernel(MixSampleArgs args, float* __restrict__ mixed, ChunkPartial* __restrict__ partials,
                    int64_t chunk_size) {
  const int64_t row = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk_size;
  const int64_t end = min(args.vocab, begin + chunk_size);
  const RowParams p = load_row_params(args, row);
  float weights[kMaxMixInputs];
  for (int k = 0; k < args.num_inputs; ++k) weights[k] = args.weights[row * args.num_inputs + k];

  MaxSumArg local{-INFINITY, 0.0f, INT32_MAX};
  int32_t invalid = 0;
  float* out = mixed + row * args.vocab;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < args.num_inputs; ++k) acc = mix_term(acc, weights[k], load_logit(args.inputs[k], row, i));
    const float s = p.temperature != 1.0f ? __fdiv_rn(acc, p.temperature) : acc;
    out[i] = s;
    invalid |= is_invalid_logit(s);
    if (!invalid) local = combine(local, MaxSumArg{s, s == -INFINITY ? 0.0f : 1.0f, static_cast<int32_t>(i)});
  }
  using Reduce = cub::BlockReduce<MaxSumArg, kMixThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ int32_t block_invalid;
  if (threadIdx.x == 0) block_invalid = 0;
  __syncthreads();
  if (invalid) atomicOr(&block_invalid, 1);
  const MaxSumArg total = Reduce(reduce_storage).Reduce(local, CombineOp());
  __syncthreads();
  if (threadIdx.x == 0) {
    partials[row * gridDim.x + blockIdx.x] = ChunkPartial{total.max, total.sum_exp, total.argmax, block_invalid};
  }
}

// Shared state of one row inside select_sample_kernel.
struct SelectShared {
  union {
    uint32_t counts[256];
    float mass[256];
  } hist;
  uint32_t prefix;
  uint32_t prefix_mask;
  double remaining;  // elements (top-k) or mass (top-p) still wanted from the current prefix
  double reduce_out;
  unsigned long long token;
  unsigned long long last_kept_plus_one;
  MaxSumArg row;
  int32_t invalid;
};

// One radix pass: histogram of the digit at `shift` over elements that match the prefix and whose key is
// >= floor_key, weighted by 1 (counts) or by exp(s - max) (mass); then picks the digit where the running
// total from the top reaches `remaining`, and narrows the prefix.
template <bool kByMass>
__device__ void radix_select_pass(const float* __restrict__ s, int64_t n, float row_max, uint32_t floor_key,
                                  int shift, SelectShared& sh) {
  for (int d = threadIdx.x; d < 256; d += blockDim.x) {
    if constexpr (kByMass) sh.hist.mass[d] = 0.0f; else sh.hist.counts[d] = 0u;
  }
  __syncthreads();
  const uint32_t prefix = sh.prefix, mask = sh.prefix_mask;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float x = s[i];
    const uint32_t key = float_to_ordered_key(x);
    if ((key & mask) != prefix || key < floor_key) continue;
    const uint32_t digit = (key >> shift) & 0xFFu;
    if constexpr (kByMass) atomicAdd(&sh.hist.mass[digit], expf(x - row_max)); else atomicAdd(&sh.hist.counts[digit], 1u);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int lowest_nonempty = 0;
    for (int d = 0; d < 256; ++d) {
      const bool empty = kByMass ? sh.hist.mass[d] == 0.0f : sh.hist.counts[d] == 0u;
      if (!empty) {
        lowest_nonempty = d;
        break;
      }
    }
    // remaining <= 0 marks "keep everything under the prefix" (set when float rounding left the target
    // unreached at an earlier level): follow the lowest non-empty digit down.
    int digit = lowest_nonempty;
    if (sh.remaining > 0.0) {
      double above = 0.0;
      int d = 255;
      for (; d >= 0; --d) {
        const double here = kByMass ? static_cast<double>(sh.hist.mass[d]) : static_cast<double>(sh.hist.counts[d]);
        if (here > 0.0 && above + here >= sh.remaining) break;
        above += here;
      }
      if (d >= 0) {
        digit = d;
        sh.remaining -= above;
      } else {
        sh.remaining = 0.0;
      }
    }
    sh.prefix |= static_cast<uint32_t>(digit) << shift;
    sh.prefix_mask |= 0xFFu << shift;
  }
  __syncthreads();
}

template <bool kByMass>
__device__ uint32_t radix_select(const float* __restrict__ s, int64_t n, float row_max, uint32_t floor_key,
                                 double wanted, SelectShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0u;
    sh.prefix_mask = 0u;
    sh.remaining = wanted;
  }
  __syncthreads();
  for (int shift = 24; shift >= 0; shift -= 8) radix_select_pass<kByMass>(s, n, row_max, floor_key, shift, sh);
  return sh.prefix;
}

// Sum of exp(s - max) over keys >= floor_key, in double, by the whole block.
__device__ double kept_mass(const float* __restrict__ s, int64_t n, float row_max, uint32_t floor_key,
                            SelectShared& sh) {
  using Reduce = cub::BlockReduce<double, kSelectThreads>;
  __shared__ typename Reduce::TempStorage storage;
  double local = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float x = s[i];
    if (float_to_ordered_key(x) >= floor_key) local += static_cast<double>(expf(x - row_max));
  }
  const double total = Reduce(storage).Sum(local);
  if (threadIdx.x == 0) sh.reduce_out = total;
  __syncthreads();
  return sh.reduce_out;
}

// First index whose inclusive prefix sum of kept mass (vocabulary order) exceeds target. Prefix sums are
// monotone, so every thread past the crossing also "crosses"; the smallest candidate index wins (atomicMin),
// which stays right even where the scan's and a thread's own float sums round differently.
__device__ int64_t sample_in_vocab_order(const float* __restrict__ s, int64_t n, float row_max, uint32_t floor_key,
                                         double target, SelectShared& sh) {
  using Scan = cub::BlockScan<double, kSelectThreads>;
  __shared__ typename Scan::TempStorage storage;
  constexpr unsigned long long kNotFound = ~0ull;
  if (threadIdx.x == 0) {
    sh.token = kNotFound;
    sh.last_kept_plus_one = 0ull;
  }
  __syncthreads();
  double running = 0.0;
  constexpr int64_t kTile = static_cast<int64_t>(kSelectThreads) * kScanItems;
  for (int64_t tile = 0; tile < n; tile += kTile) {
    const int64_t first = tile + static_cast<int64_t>(threadIdx.x) * kScanItems;
    double values[kScanItems];
    double thread_sum = 0.0;
    int64_t thread_last = -1;
    for (int j = 0; j < kScanItems; ++j) {
      const int64_t i = first + j;
      double v = 0.0;
      if (i < n) {
        const float x = s[i];
        if (float_to_ordered_key(x) >= floor_key) v = static_cast<double>(expf(x - row_max));
      }
      values[j] = v;
      thread_sum += v;
      if (v > 0.0) thread_last = i;
    }
    double exclusive, tile_total;
    Scan(storage).ExclusiveSum(thread_sum, exclusive, tile_total);
    if (thread_last >= 0) atomicMax(&sh.last_kept_plus_one, static_cast<unsigned long long>(thread_last + 1));
    double acc = running + exclusive;
    if (thread_last >= 0 && acc + thread_sum > target) {
      int64_t candidate = thread_last;
      for (int j = 0; j < kScanItems; ++j) {
        acc += values[j];
        if (values[j] > 0.0 && acc > target) {
          candidate = first + j;
          break;
        }
      }
      atomicMin(&sh.token, static_cast<unsigned long long>(candidate));
    }
    running += tile_total;
    __syncthreads();
    if (sh.token != kNotFound) break;
  }
  __syncthreads();
  // Not found: rounding kept the target out of reach; take the last kept token.
  return sh.token != kNotFound ? static_cast<int64_t>(sh.token) : static_cast<int64_t>(sh.last_kept_plus_one) - 1;
}

__global__ void __launch_bounds__(kSelectThreads)
    select_sample_kernel(MixSampleArgs args, const float* __restrict__ mixed,
                         const ChunkPartial* __restrict__ partials, int num_chunks) {
  __shared__ SelectShared sh;
  const int64_t row = blockIdx.x;
  const int64_t n = args.vocab;
  const float* s = mixed + row * n;
  const RowParams p = load_row_params(args, row);

  if (threadIdx.x == 0) {
    MaxSumArg acc{-INFINITY, 0.0f, INT32_MAX};
    int32_t invalid = 0;
    for (int c = 0; c < num_chunks; ++c) {
      const ChunkPartial& part = partials[row * num_chunks + c];
      invalid |= part.invalid;
      acc = combine(acc, MaxSumArg{part.max, part.sum_exp, part.argmax});
    }
    sh.row = acc;
    sh.invalid = invalid || acc.max == -INFINITY;
  }
  __syncthreads();
  if (sh.invalid) {
    if (threadIdx.x == 0) {
      args.out_token[row] = kInvalidToken;
      args.out_logprob[row] = NAN;
    }
    return;
  }
  const float row_max = sh.row.max;

  uint32_t floor_key = 0u;  // every key is >= 0: nothing filtered
  double mass = static_cast<double>(sh.row.sum_exp);
  if (p.top_k > 0) {
    floor_key = radix_select<false>(s, n, row_max, 0u, static_cast<double>(p.top_k), sh);
    mass = kept_mass(s, n, row_max, floor_key, sh);
  }
  if (p.top_p < 1.0f) {
    floor_key = radix_select<true>(s, n, row_max, floor_key, static_cast<double>(p.top_p) * mass, sh);
  }
  const double z_kept = kept_mass(s, n, row_max, floor_key, sh);

  int64_t token;
  if (p.greedy) {
    token = sh.row.argmax;
  } else {
    const double u = philox_uniform(p.seed, p.step, kStreamTokenSample);
    token = sample_in_vocab_order(s, n, row_max, floor_key, u * z_kept, sh);
  }
  if (threadIdx.x == 0) {
    args.out_token[row] = token;
    args.out_logprob[row] =
        token >= 0 ? static_cast<float>(static_cast<double>(s[token] - row_max) - log(z_kept)) : NAN;
  }
}

}  // namespace fastdoctor
