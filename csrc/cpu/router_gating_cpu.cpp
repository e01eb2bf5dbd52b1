// CPU kernel for fastdoctor::routed_sampling_from_logits (TARo router gating; layout in
// csrc/kernels/router_gating.h).
//
// Pass 1, one (row, model) per task (at::parallel_for), for each of the base and RM logit rows:
//   - per block of 32 logits, the maximum (as order-preserving int32 keys) and a NaN/+inf flag: one
//     vectorised read of the row in its own dtype (block layout below);
//   - the K-th largest block maximum bounds the K-th largest logit from below, so only the ~K blocks at or
//     above it can hold a top-K element; a size-K heap ranked by (logit, id) scans just those;
//   then the features h (2K(d+1) floats, layout in router_gating.h).
// Pass 2, parallel over tiles of hidden units: tanh(W1 h + b1) for the whole batch (each thread reads its
//   share of W1 once), dot products in fixed 16-lane float sums (the same bits in every clone and batch);
//   then alpha = sigmoid(w2 . hidden + b2) and the weights (1 - alpha, alpha).
// Pass 3: fastdoctor::mixed_sampling_from_logits with those weights, in the same op call (see
//   router_gating_args.h), so the sampling semantics are exactly the mix-sample op's.
// Checked against python/fastdoctor/reference.py::routed_sampling_reference in tests/test_router_gating.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "../common/router_gating_args.h"
#include "../kernels/router_gating.h"
#include "vector_math.h"

// The 64-byte vector types below stay inside always_inline helpers, so no call passes one across the ABI that
// -Wpsabi warns about (the default, pre-AVX clone).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastdoctor {
namespace {

// Blocks of 32 logits whose maxima let the top-K scan skip most of the row. Within each full 512-wide tile,
// block `lane` (0..15) holds the elements tile * 512 + lane + 16 v, v = 0..31: the maxima are then a plain
// vertical SIMD max over the tile's 32 vectors of 16 (no horizontal reduction per block). The tail (n mod 512
// elements) is cut into contiguous blocks of 32. The scan ranks with the full (value, id) order, so the order
// in which blocks are visited does not matter.
constexpr int64_t kBlockLanes = 16;
constexpr int64_t kBlockDepth = 32;
constexpr int64_t kTileWidth = kBlockLanes * kBlockDepth;

int64_t num_skip_blocks(int64_t n) {
  return (n / kTileWidth) * kBlockLanes + (n % kTileWidth + kBlockDepth - 1) / kBlockDepth;
}

// Sixteen lanes as GCC/Clang vector types: each clone lowers them to its own registers (one zmm, two ymm, four
// xmm). Written explicitly because the auto-vectoriser transposes the tile loop (permutes) instead of
// keeping one vertical max per lane.
typedef float Floats16 __attribute__((vector_size(64)));
typedef int32_t Ints16 __attribute__((vector_size(64)));
typedef uint16_t Halves16 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline Floats16 load16_float32(const void* row, int64_t i) {
  Floats16 x;
  std::memcpy(&x, static_cast<const float*>(row) + i, sizeof(x));
  return x;
}
__attribute__((always_inline)) inline Floats16 load16_bfloat16(const void* row, int64_t i) {
  Halves16 h;
  std::memcpy(&h, static_cast<const uint16_t*>(row) + i, sizeof(h));
  return reinterpret_cast<Floats16>(__builtin_convertvector(h, Ints16) << 16);
}
__attribute__((always_inline)) inline Floats16 load16_float16(const void* row, int64_t i) {
  float wide[16];
  for (int lane = 0; lane < 16; ++lane) wide[lane] = fp16_bits_to_float(static_cast<const uint16_t*>(row)[i + lane]);
  Floats16 x;
  std::memcpy(&x, wide, sizeof(x));
  return x;
}

template <typename Load16, typename Load>
__attribute__((always_inline)) inline bool block_maxima_body(const void* row, int64_t n, int32_t* __restrict maxima,
                                                             Load16 load16, Load load) {
  Ints16 bad = {};
  const int64_t full_tiles = n / kTileWidth;
  for (int64_t tile = 0; tile < full_tiles; ++tile) {
    Ints16 m = Ints16{} + INT32_MIN;
    for (int64_t v = 0; v < kBlockDepth; ++v) {
      const Floats16 x = load16(row, tile * kTileWidth + v * kBlockLanes);
      const Ints16 bits = reinterpret_cast<Ints16>(x + 0.0f);  // -0 + 0 = +0: equal logits get equal keys
      const Ints16 key = bits ^ ((bits >> 31) & 0x7FFFFFFF);   // ordered_int, lane-wise
      m = key > m ? key : m;
      bad |= ~(x <= 3.402823466e+38f);  // NaN or +inf (is_invalid_logit, lane-wise)
    }
    std::memcpy(maxima + tile * kBlockLanes, &m, sizeof(m));
  }
  int32_t any_bad = 0;
  for (int lane = 0; lane < 16; ++lane) any_bad |= bad[lane];
  int64_t b = full_tiles * kBlockLanes;
  for (int64_t start = full_tiles * kTileWidth; start < n; start += kBlockDepth, ++b) {
    int32_t m = INT32_MIN;
    for (int64_t i = start; i < std::min(n, start + kBlockDepth); ++i) {
      const float x = load(row, i);
      const int32_t key = ordered_int(x + 0.0f);
      m = key > m ? key : m;
      any_bad |= is_invalid_logit(x);
    }
    maxima[b] = m;
  }
  return any_bad != 0;
}

__attribute__((always_inline)) inline float load_float32(const void* row, int64_t i) {
  return static_cast<const float*>(row)[i];
}
__attribute__((always_inline)) inline float load_bfloat16(const void* row, int64_t i) {
  return bfloat16_bits_to_float(static_cast<const uint16_t*>(row)[i]);
}
__attribute__((always_inline)) inline float load_float16(const void* row, int64_t i) {
  return fp16_bits_to_float(static_cast<const uint16_t*>(row)[i]);
}

// maxima[b] = the largest ordered_int key in block b of the row; returns whether it holds NaN or +inf.
// One vectorised read of the row in its own dtype (bf16/fp16 are widened in registers, never stored).
FD_VECTOR_CLONES bool block_maxima_float32(const void* row, int64_t n, int32_t* __restrict maxima) {
  return block_maxima_body(row, n, maxima, load16_float32, load_float32);
}
FD_VECTOR_CLONES bool block_maxima_bfloat16(const void* row, int64_t n, int32_t* __restrict maxima) {
  return block_maxima_body(row, n, maxima, load16_bfloat16, load_bfloat16);
}
FD_VECTOR_CLONES bool block_maxima_float16(const void* row, int64_t n, int32_t* __restrict maxima) {
  return block_maxima_body(row, n, maxima, load16_float16, load_float16);
}

float load_logit(const MixInput& in, const void* row, int64_t i) {
  switch (in.kind) {
    case ScalarKind::kFloat32: return load_float32(row, i);
    case ScalarKind::kBFloat16: return load_bfloat16(row, i);
    default: return load_float16(row, i);
  }
}

// The k-th largest block maximum: a lower bound on the row's k-th largest value (the k largest block maxima
// are k distinct elements), so a block whose maximum lies below it holds no top-k element. A size-k min-heap
// of keys: after the first few hundred blocks almost every maximum fails the one compare with the heap's top,
// a well-predicted branch (a quickselect over the maxima mispredicts about every other compare).
int32_t kth_largest_block_max(const int32_t* maxima, int64_t num_blocks, int k, int32_t* heap) {
  if (num_blocks < k) return INT32_MIN;  // too few blocks for a bound: scan them all
  std::copy(maxima, maxima + k, heap);
  std::make_heap(heap, heap + k, std::greater<int32_t>());
  for (int64_t b = k; b < num_blocks; ++b) {
    if (maxima[b] > heap[0]) {
      std::pop_heap(heap, heap + k, std::greater<int32_t>());
      heap[k - 1] = maxima[b];
      std::push_heap(heap, heap + k, std::greater<int32_t>());
    }
  }
  return heap[0];
}

// The top-k of the row in rank order (ranks_before: larger logit, then lower id) into out[0, k), with a
// size-k heap whose top is the worst kept candidate. Only blocks that can hold a top-k element are read
// (about k of them on typical rows). NaN never enters (the row is invalid anyway, and NaN would break the
// heap's ordering).
void top_k_of_row(const MixInput& in, const void* row, int64_t n, int k, const int32_t* maxima, int32_t* work,
                  RouterCandidate* out) {
  const auto worse_last = [](const RouterCandidate& a, const RouterCandidate& b) { return ranks_before(a, b); };
  const int64_t num_blocks = num_skip_blocks(n);
  const int64_t tiled_blocks = (n / kTileWidth) * kBlockLanes;
  const int32_t bound = kth_largest_block_max(maxima, num_blocks, k, work);
  // Elements below the bound's value cannot enter: one compare instead of a heap test for most of the
  // scanned elements (about k + a few of the ~32k scanned pass it on typical rows).
  const float bound_value = bound == INT32_MIN ? -std::numeric_limits<float>::infinity() : from_ordered_int(bound);
  int count = 0;
  const auto offer = [&](int64_t i) {
    const RouterCandidate c{load_logit(in, row, i), static_cast<int32_t>(i)};
    if (!(c.value >= bound_value)) return;  // also drops NaN
    if (count < k) {
      out[count++] = c;
      std::push_heap(out, out + count, worse_last);
    } else if (ranks_before(c, out[0])) {
      std::pop_heap(out, out + k, worse_last);
      out[k - 1] = c;
      std::push_heap(out, out + k, worse_last);
    }
  };
  for (int64_t b = 0; b < num_blocks; ++b) {
    // Keys order like the floats (non-NaN, -0 made +0), so neither skip drops a candidate. A block whose
    // maximum equals the worst kept value is still read: a lower id there would rank before it.
    if (maxima[b] < bound || (count == k && maxima[b] < ordered_int(out[0].value + 0.0f))) continue;
    if (b < tiled_blocks) {
      const int64_t first = (b / kBlockLanes) * kTileWidth + b % kBlockLanes;
      for (int64_t v = 0; v < kBlockDepth; ++v) offer(first + v * kBlockLanes);
    } else {
      const int64_t first = (n / kTileWidth) * kTileWidth + (b - tiled_blocks) * kBlockDepth;
      for (int64_t i = first; i < std::min(n, first + kBlockDepth); ++i) offer(i);
    }
  }
  std::sort_heap(out, out + count, worse_last);  // ascending by the comparator: the best rank first
  for (int i = count; i < k; ++i) out[i] = RouterCandidate{router_quiet_nan(), 0};  // only on invalid rows
}

// Ranks one model's row into `out`; returns whether the row holds NaN or +inf.
bool rank_row(const MixInput& in, int64_t row_index, int64_t n, int k, int32_t* maxima, int32_t* work,
              RouterCandidate* out) {
  const void* row;
  bool invalid;
  switch (in.kind) {
    case ScalarKind::kFloat32:
      row = static_cast<const float*>(in.data) + row_index * in.row_stride;
      invalid = block_maxima_float32(row, n, maxima);
      break;
    case ScalarKind::kBFloat16:
      row = static_cast<const uint16_t*>(in.data) + row_index * in.row_stride;
      invalid = block_maxima_bfloat16(row, n, maxima);
      break;
    default:
      row = static_cast<const uint16_t*>(in.data) + row_index * in.row_stride;
      invalid = block_maxima_float16(row, n, maxima);
      break;
  }
  top_k_of_row(in, row, n, k, maxima, work, out);
  return invalid;
}

// Pass 1 for one (row, model) task: that model's top-K and its half of h (layout in router_gating.h).
// Returns whether the model's row holds NaN or +inf.
bool route_features_of_task(const RouterArgs& a, int64_t task, int32_t* maxima, int32_t* work,
                            RouterCandidate* ranked, float* features) {
  const int64_t row = task / 2, model = task % 2;
  const bool invalid = rank_row(model == 0 ? a.base : a.rm, row, a.vocab, a.top_k, maxima, work, ranked);
  const int64_t d = a.embed_dim;
  float* h = features + row * router_feature_width(a.top_k, d) + model * a.top_k * (d + 1);
  for (int64_t rank = 0; rank < a.top_k; ++rank) {
    float* dst = h + rank * (d + 1);
    dst[0] = ranked[rank].value;
    if (d > 0) std::memcpy(dst + 1, a.embedding + static_cast<int64_t>(ranked[rank].token) * d, d * sizeof(float));
  }
  return invalid;
}

constexpr int kHiddenTile = 4;

__attribute__((always_inline)) inline Floats16 load16(const float* p) {
  Floats16 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

// Lane sums, then the tail, in a fixed order: dot_four and dot_one round identically, in every clone.
__attribute__((always_inline)) inline float finish_dot(const Floats16& lanes, const float* w, const float* h,
                                                       int64_t from, int64_t width) {
  float dot = 0.0f;
  for (int64_t g = from; g < width; ++g) dot += w[g] * h[g];
  for (int l = 0; l < 16; ++l) dot += lanes[l];
  return dot;
}

// W1[j..j+4) . h for one feature row h: four independent 16-lane accumulators (one per hidden unit) so the
// adds pipeline, and each load of h serves four rows of W1.
FD_VECTOR_CLONES void dot_four(const float* __restrict w, int64_t width, const float* __restrict h,
                               float* __restrict out) {
  Floats16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
  int64_t f = 0;
  for (; f + 16 <= width; f += 16) {
    const Floats16 x = load16(h + f);
    acc0 += load16(w + f) * x;
    acc1 += load16(w + width + f) * x;
    acc2 += load16(w + 2 * width + f) * x;
    acc3 += load16(w + 3 * width + f) * x;
  }
  out[0] = finish_dot(acc0, w, h, f, width);
  out[1] = finish_dot(acc1, w + width, h, f, width);
  out[2] = finish_dot(acc2, w + 2 * width, h, f, width);
  out[3] = finish_dot(acc3, w + 3 * width, h, f, width);
}

FD_VECTOR_CLONES float dot_one(const float* __restrict w, int64_t width, const float* __restrict h) {
  Floats16 acc = {};
  int64_t f = 0;
  for (; f + 16 <= width; f += 16) acc += load16(w + f) * load16(h + f);
  return finish_dot(acc, w, h, f, width);
}

// Pass 2: tanh(W1 h_b + b1) for every row b, parallel over tiles of hidden units, so each thread reads its
// share of W1 once for the whole batch (W1 is 128 x 1320 floats at the defaults, larger than a row's work).
void router_hidden_layer(const RouterArgs& a, const float* features, float* hidden_out) {
  const int64_t width = router_feature_width(a.top_k, a.embed_dim);
  const int64_t num_tiles = (a.hidden + kHiddenTile - 1) / kHiddenTile;
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t j0 = tile * kHiddenTile;
      const int64_t units = std::min<int64_t>(kHiddenTile, a.hidden - j0);
      for (int64_t b = 0; b < a.batch; ++b) {
        const float* h = features + b * width;
        float dots[kHiddenTile];
        if (units == kHiddenTile) {
          dot_four(a.w1 + j0 * width, width, h, dots);
        } else {
          for (int64_t t = 0; t < units; ++t) dots[t] = dot_one(a.w1 + (j0 + t) * width, width, h);
        }
        for (int64_t t = 0; t < units; ++t) hidden_out[b * a.hidden + j0 + t] = std::tanh(dots[t] + a.b1[j0 + t]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> routed_sampling_from_logits_cpu(
    const at::Tensor& base_logits, const at::Tensor& rm_logits, const at::Tensor& embedding, const at::Tensor& w1,
    const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& seed, const at::Tensor& step,
    int64_t top_k_features, int64_t vocab_size) {
  PackedRouter packed = pack_router_args(base_logits, rm_logits, embedding, w1, b1, w2, b2, top_k_features, vocab_size);
  const RouterArgs& a = packed.args;
  const int64_t width = router_feature_width(a.top_k, a.embed_dim);
  std::vector<float> features(a.batch * width);
  std::vector<float> hidden(a.batch * a.hidden);
  std::vector<uint8_t> invalid(2 * a.batch);  // per (row, model)

  // Pass 1: one (row, model) per task, so that even a single row keeps two threads busy.
  at::parallel_for(0, 2 * a.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> maxima(num_skip_blocks(a.vocab)), work(kMaxRouterTopK);
    std::vector<RouterCandidate> ranked(a.top_k);
    for (int64_t task = begin; task < end; ++task) {
      invalid[task] = route_features_of_task(a, task, maxima.data(), work.data(), ranked.data(), features.data());
    }
  });
  // Pass 2: the hidden layer for the whole batch; then the output unit, in a fixed order per row.
  router_hidden_layer(a, features.data(), hidden.data());
  for (int64_t row = 0; row < a.batch; ++row) {
    float output = 0.0f;
    for (int64_t j = 0; j < a.hidden; ++j) output += a.w2[j] * hidden[row * a.hidden + j];
    store_router_output(a, row, output, invalid[2 * row] != 0 || invalid[2 * row + 1] != 0);
  }
  // Pass 3: mix and sample with weights (1 - alpha, alpha).
  auto [tokens, logprobs] = mix_and_sample_routed(base_logits, rm_logits, packed.weights, temperature, top_k, top_p,
                                                  seed, step, vocab_size);
  return {tokens, logprobs, packed.alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) {
  m.impl("routed_sampling_from_logits", &routed_sampling_from_logits_cpu);
}

}  // namespace fastdoctor
