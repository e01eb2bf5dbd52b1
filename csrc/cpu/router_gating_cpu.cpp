// CPU kernel for fastdoctor::routed_sampling_from_logits (TARo router gating; layout in
// csrc/kernels/router_gating.h).
//
// Pass 1, one row per task (at::parallel_for over rows), for each of the base and RM logit rows:
//   - bf16/fp16 rows are widened to fp32 once (vectorised);
//   - per 32-wide block, the maximum (vectorised, as order-preserving int32 keys) and a NaN/+inf flag;
//   - a size-K heap walks the blocks and skips every block whose maximum cannot enter the top-K, so one
//     pass over V costs about V/32 compares plus a scan of the few blocks that can;
//   then the features h (2K(d+1) floats) and the MLP in fp32 (W1 h as H dot products with fixed 16-lane
//   sums, so the AVX-512 and AVX2 clones give the same bits) -> alpha and weights (1 - alpha, alpha).
// Pass 2: fastdoctor::mixed_sampling_from_logits with those weights, in the same op call (see
//   router_gating_args.h), so the sampling semantics are exactly the mix-sample op's.
// Checked against python/fastdoctor/reference.py::routed_sampling_reference in tests/test_router_gating.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../common/router_gating_args.h"
#include "../kernels/router_gating.h"
#include "vector_math.h"

namespace fastdoctor {
namespace {

constexpr int64_t kSkipBlock = 32;

// maxima[b] = the largest ordered_int key in block b of x[0, n); returns whether x holds NaN or +inf.
FD_VECTOR_CLONES bool block_maxima(const float* __restrict x, int64_t n, int32_t* __restrict maxima) {
  int32_t bad = 0;
  const int64_t full_blocks = n / kSkipBlock;
  for (int64_t b = 0; b < full_blocks; ++b) {
    const float* block = x + b * kSkipBlock;
    int32_t m = INT32_MIN;
    for (int64_t j = 0; j < kSkipBlock; ++j) {
      const int32_t key = ordered_int(block[j]);
      m = key > m ? key : m;
      bad |= is_invalid_logit(block[j]);
    }
    maxima[b] = m;
  }
  if (full_blocks * kSkipBlock < n) {
    int32_t m = INT32_MIN;
    for (int64_t i = full_blocks * kSkipBlock; i < n; ++i) {
      const int32_t key = ordered_int(x[i]);
      m = key > m ? key : m;
      bad |= is_invalid_logit(x[i]);
    }
    maxima[full_blocks] = m;
  }
  return bad != 0;
}

// The top-k of x[0, n) in rank order (ranks_before) into out[0, k). With the comparator ranks_before, the
// heap's top is the worst kept candidate; a later element (higher id) enters only if strictly larger.
// NaN never enters (the row is invalid anyway, and NaN would break the heap's ordering).
void top_k_of_row(const float* x, int64_t n, int k, const int32_t* maxima, RouterCandidate* out) {
  const auto worse_last = [](const RouterCandidate& a, const RouterCandidate& b) { return ranks_before(a, b); };
  int count = 0;
  for (int64_t b = 0, start = 0; start < n; ++b, start += kSkipBlock) {
    // Keys order like the floats, so a block whose largest key is <= the worst kept key has nothing larger.
    if (count == k && maxima[b] <= ordered_int(out[0].value)) continue;
    const int64_t end = std::min(n, start + kSkipBlock);
    for (int64_t i = start; i < end; ++i) {
      const float v = x[i];
      if (v != v) continue;
      if (count < k) {
        out[count++] = RouterCandidate{v, static_cast<int32_t>(i)};
        std::push_heap(out, out + count, worse_last);
      } else if (v > out[0].value) {
        std::pop_heap(out, out + k, worse_last);
        out[k - 1] = RouterCandidate{v, static_cast<int32_t>(i)};
        std::push_heap(out, out + k, worse_last);
      }
    }
  }
  std::sort_heap(out, out + count, worse_last);  // ascending by the comparator: the best rank first
  for (int i = count; i < k; ++i) out[i] = RouterCandidate{router_quiet_nan(), 0};  // only on invalid rows
}

// sum_j w2[j] * tanh(W1[j] . h + b1[j]). Dot products in 16 fixed float lanes: vectorised, and the same
// rounding in every clone.
FD_VECTOR_CLONES float router_hidden_sum(const float* __restrict w1, const float* __restrict b1,
                                         const float* __restrict w2, const float* __restrict h, int64_t hidden,
                                         int64_t width) {
  constexpr int kLanes = 16;
  float output = 0.0f;
  for (int64_t j = 0; j < hidden; ++j) {
    const float* row = w1 + j * width;
    float lanes[kLanes] = {};
    int64_t f = 0;
    for (; f + kLanes <= width; f += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += row[f + l] * h[f + l];
    }
    float dot = 0.0f;
    for (; f < width; ++f) dot += row[f] * h[f];
    for (int l = 0; l < kLanes; ++l) dot += lanes[l];
    output += w2[j] * std::tanh(dot + b1[j]);
  }
  return output;
}

struct RouterScratch {
  std::vector<float> widened;  // a bf16/fp16 row as fp32
  std::vector<int32_t> maxima;
  std::vector<RouterCandidate> ranked;  // base ranks 0..K-1, then RM ranks 0..K-1
  std::vector<float> features;
  explicit RouterScratch(const RouterArgs& a)
      : widened(a.vocab),
        maxima((a.vocab + kSkipBlock - 1) / kSkipBlock),
        ranked(2 * a.top_k),
        features(router_feature_width(a.top_k, a.embed_dim)) {}
};

// Ranks one model's row into `out`; returns whether the row holds NaN or +inf.
bool rank_row(const MixInput& in, int64_t row, const RouterArgs& a, RouterScratch& scratch, RouterCandidate* out) {
  const float* x;
  if (in.kind == ScalarKind::kFloat32) {
    x = static_cast<const float*>(in.data) + row * in.row_stride;
  } else {
    load_row_as_float(static_cast<const uint16_t*>(in.data) + row * in.row_stride, in.kind, scratch.widened.data(),
                      a.vocab);
    x = scratch.widened.data();
  }
  const bool invalid = block_maxima(x, a.vocab, scratch.maxima.data());
  top_k_of_row(x, a.vocab, a.top_k, scratch.maxima.data(), out);
  return invalid;
}

void route_row(const RouterArgs& a, int64_t row, RouterScratch& scratch) {
  RouterCandidate* ranked = scratch.ranked.data();
  const bool base_invalid = rank_row(a.base, row, a, scratch, ranked);
  const bool rm_invalid = rank_row(a.rm, row, a, scratch, ranked + a.top_k);
  if (base_invalid || rm_invalid) {
    store_router_output(a, row, 0.0f, /*invalid=*/true);
    return;
  }
  const int64_t d = a.embed_dim;
  float* h = scratch.features.data();
  for (int64_t slot = 0; slot < 2 * a.top_k; ++slot) {
    float* dst = h + slot * (d + 1);
    dst[0] = ranked[slot].value;
    if (d > 0) std::memcpy(dst + 1, a.embedding + static_cast<int64_t>(ranked[slot].token) * d, d * sizeof(float));
  }
  const float sum = router_hidden_sum(a.w1, a.b1, a.w2, h, a.hidden, router_feature_width(a.top_k, d));
  store_router_output(a, row, sum, /*invalid=*/false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> routed_sampling_from_logits_cpu(
    const at::Tensor& base_logits, const at::Tensor& rm_logits, const at::Tensor& embedding, const at::Tensor& w1,
    const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& seed, const at::Tensor& step,
    int64_t top_k_features, int64_t vocab_size) {
  PackedRouter packed = pack_router_args(base_logits, rm_logits, embedding, w1, b1, w2, b2, top_k_features, vocab_size);
  const RouterArgs& args = packed.args;
  at::parallel_for(0, args.batch, 1, [&](int64_t begin, int64_t end) {
    RouterScratch scratch(args);
    for (int64_t row = begin; row < end; ++row) route_row(args, row, scratch);
  });
  auto [tokens, logprobs] = mix_and_sample_routed(base_logits, rm_logits, packed.weights, temperature, top_k, top_p,
                                                  seed, step, vocab_size);
  return {tokens, logprobs, packed.alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) {
  m.impl("routed_sampling_from_logits", &routed_sampling_from_logits_cpu);
}

}  // namespace fastdoctor
