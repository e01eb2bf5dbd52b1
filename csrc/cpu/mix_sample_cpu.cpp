// CPU kernel for fastdoctor::mixed_sampling_from_logits.
//
// One row per task (at::parallel_for over rows). Per row:
//   1. mix:    s = sum_k w_k z_k / T, one read of each input row, fp32 (vectorised; dtype dispatch per input)
//   2. top-k:  k-th largest s with a size-k min-heap (one compare per element, no sort)
//   3. exp:    e = exp(s - max) on the kept set, with a branch-free polynomial exp that GCC vectorises
//   4. top-p:  a mass histogram over float-exponent bins finds the boundary bin; a 3-way quickselect
//              inside that bin finds the boundary value (no sort)
//   5. sample: inverse CDF in vocabulary order at u = Philox(seed, step), skipping 64-wide blocks by sum
// Checked against python/fastdoctor/reference.py::mixed_sampling_from_logits in tests/test_mix_sample.py.
// Hot loops get AVX-512 and AVX2 clones (vector_math.h) picked at load time, so the wheel runs on any x86-64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "../common/mix_sample_args.h"
#include "../kernels/mix_sample.h"
#include "vector_math.h"

namespace fastdoctor {
namespace {

// s += w * z for one input row. The caller skips zero weights (mix_term's rule), so the loop body has no
// select and vectorises.
FD_VECTOR_CLONES void accumulate_float32(float* __restrict s, const float* __restrict z, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = s[i] + w * z[i];
}

FD_VECTOR_CLONES void accumulate_bfloat16(float* __restrict s, const uint16_t* __restrict z, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = s[i] + w * bfloat16_bits_to_float(z[i]);
}

FD_VECTOR_CLONES void accumulate_float16(float* __restrict s, const uint16_t* __restrict z, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = s[i] + w * fp16_bits_to_float(z[i]);
}

// Divides by the temperature (division, not a reciprocal multiply, to match the reference bit for bit)
// and returns the row maximum; flags NaN and +inf.
FD_VECTOR_CLONES float scale_and_max(float* __restrict s, int64_t n, float temperature, bool* invalid) {
  if (temperature != 1.0f) {
    for (int64_t i = 0; i < n; ++i) s[i] = s[i] / temperature;
  }
  int32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= is_invalid_logit(s[i]);
  *invalid = bad != 0;
  return bad ? 0.0f : row_max(s, n);
}

// e = exp(s - m) where s >= threshold, else 0 (a pure map, so it vectorises).
FD_VECTOR_CLONES void exp_where_kept(const float* __restrict s, float* __restrict e, int64_t n, float m,
                                     float threshold) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = s[i];
    const uint32_t kept = x >= threshold ? 0xFFFFFFFFu : 0u;
    e[i] = bits_as_float(float_as_bits(exp_nonpositive(x - m)) & kept);
  }
}

// The k-th largest value of s[0, n) (duplicates counted), with a size-k min-heap in `heap`: one compare
// per element once the heap is full, so O(n) for random rows and O(n log k) at worst; no sort, no copy.
float kth_largest(const float* s, int64_t n, int64_t k, float* heap) {
  std::copy(s, s + k, heap);
  std::make_heap(heap, heap + k, std::greater<float>());
  for (int64_t i = k; i < n; ++i) {
    if (s[i] > heap[0]) {
      std::pop_heap(heap, heap + k, std::greater<float>());
      heap[k - 1] = s[i];
      std::push_heap(heap, heap + k, std::greater<float>());
    }
  }
  return heap[0];
}

struct Threshold {
  float value;        // keep e >= value
  double kept_mass;   // sum of kept e
};

// Smallest value v* among v[0, n) such that the mass strictly greater than v* is < target: the top-p
// boundary, tie-inclusive. Mass-weighted quickselect with a 3-way partition; reorders v.
Threshold select_top_p(float* v, int64_t n, double target) {
  double above = 0.0;  // mass of values already known to lie above every value in v[lo, hi)
  int64_t lo = 0, hi = n;
  while (hi - lo > 32) {
    float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi - 1];
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    // Dutch-flag partition of [lo, hi) into  > pivot | == pivot | < pivot.
    int64_t gt = lo, i = lo, lt = hi;
    double mass_gt = 0.0, mass_eq = 0.0;
    while (i < lt) {
      const float x = v[i];
      if (x > pivot) {
        mass_gt += x;
        std::swap(v[gt++], v[i++]);
      } else if (x < pivot) {
        std::swap(v[i], v[--lt]);
      } else {
        mass_eq += x;
        ++i;
      }
    }
    if (above + mass_gt >= target) {
      hi = gt;
    } else if (above + mass_gt + mass_eq >= target) {
      return {pivot, above + mass_gt + mass_eq};
    } else if (lt == hi) {  // rounding left the target unreached: keep everything
      return {pivot, above + mass_gt + mass_eq};
    } else {
      above += mass_gt + mass_eq;
      lo = lt;
    }
  }
  std::sort(v + lo, v + hi, std::greater<float>());
  int64_t j = lo;
  while (j < hi) {
    const float value = v[j];
    double group = 0.0;
    while (j < hi && v[j] == value) group += v[j++];
    if (above + group >= target || j == hi) return {value, above + group};
    above += group;
  }
  return {0.0f, above};  // unreachable for n > 0
}

// The top-p boundary over e[0, n) (0 <= e <= 1) with target mass `target`: a 1024-bin mass histogram on
// the float's exponent and top 3 mantissa bits (bins ordered like the values) finds the bin where the mass
// from the top crosses the target; only that bin's values go through select_top_p. Two passes over e and
// a selection over about n / 100 values, instead of a partition-heavy quickselect over all n.
Threshold top_p_threshold(const float* e, int64_t n, double target, float* work) {
  constexpr int kBins = 1024;  // bits >> 20 of a float in [0, 1] is at most 0x3F8
  double hist[2][kBins] = {};  // two copies break the store-to-load chain when neighbours share a bin
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    hist[0][float_as_bits(e[i]) >> 20] += e[i];
    hist[1][float_as_bits(e[i + 1]) >> 20] += e[i + 1];
  }
  if (i < n) hist[0][float_as_bits(e[i]) >> 20] += e[i];
  double above = 0.0;
  int bin = kBins - 1;
  for (; bin > 0; --bin) {
    const double mass = hist[0][bin] + hist[1][bin];
    if (above + mass >= target) break;
    above += mass;
  }
  if (bin == 0) return {0.0f, above + hist[0][0] + hist[1][0]};  // rounding: keep every token with mass
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    if ((float_as_bits(e[j]) >> 20) == static_cast<uint32_t>(bin)) work[count++] = e[j];
  }
  const Threshold inner = select_top_p(work, count, target - above);
  return {inner.value, above + inner.kept_mass};
}

// Inverse CDF in vocabulary order over e >= keep_from (e > 0). Skips 64-wide blocks by their sum.
int64_t sample_in_vocab_order(const float* e, int64_t n, float keep_from, double target) {
  constexpr int64_t kBlock = 64;
  double acc = 0.0;
  int64_t last_kept = -1;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    double block = 0.0;
    for (int64_t i = start; i < end; ++i) block += e[i] >= keep_from ? e[i] : 0.0f;
    if (acc + block <= target) {
      acc += block;
      for (int64_t i = end - 1; i >= start && block > 0.0; --i) {
        if (e[i] >= keep_from && e[i] > 0.0f) {
          last_kept = std::max(last_kept, i);
          break;
        }
      }
      continue;
    }
    for (int64_t i = start; i < end; ++i) {
      if (e[i] >= keep_from && e[i] > 0.0f) {
        acc += e[i];
        last_kept = i;
        if (acc > target) return i;
      }
    }
  }
  return last_kept;  // rounding kept the target out of reach: the last kept token
}

// Three V-float rows of scratch per thread, kept across calls and never zero-filled (every kernel writes a
// row before reading it). Fresh zero-initialised vectors per call cost three memsets of 4V bytes (~600 KB at
// V = 49152) plus the allocator, about a quarter of a B = 1 greedy step.
struct RowScratch {
  float* s;
  float* e;
  float* work;
};

RowScratch thread_row_scratch(int64_t v) {
  thread_local std::unique_ptr<float[]> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < 3 * v) {
    buffer.reset(new float[3 * v]);
    capacity = 3 * v;
  }
  return {buffer.get(), buffer.get() + v, buffer.get() + 2 * v};
}

void mix_sample_row(const MixSampleArgs& a, int64_t row, const RowScratch& scratch) {
  const int64_t n = a.vocab;
  const RowParams p = load_row_params(a, row);
  float* s = scratch.s;
  float* e = scratch.e;
  float* work = scratch.work;

  std::fill(s, s + n, 0.0f);
  for (int k = 0; k < a.num_inputs; ++k) {
    const float w = a.weights[row * a.num_inputs + k];
    if (w == 0.0f) continue;
    const MixInput& in = a.inputs[k];
    switch (in.kind) {
      case ScalarKind::kFloat32:
        accumulate_float32(s, static_cast<const float*>(in.data) + row * in.row_stride, w, n);
        break;
      case ScalarKind::kBFloat16:
        accumulate_bfloat16(s, static_cast<const uint16_t*>(in.data) + row * in.row_stride, w, n);
        break;
      case ScalarKind::kFloat16:
        accumulate_float16(s, static_cast<const uint16_t*>(in.data) + row * in.row_stride, w, n);
        break;
    }
  }
  bool invalid = false;
  const float m = scale_and_max(s, n, p.temperature, &invalid);
  if (invalid || m == -std::numeric_limits<float>::infinity()) {
    a.out_token[row] = kInvalidToken;
    a.out_logprob[row] = std::numeric_limits<float>::quiet_NaN();
    return;
  }

  float top_k_threshold = -std::numeric_limits<float>::infinity();
  if (p.top_k > 0) {
    top_k_threshold = kth_largest(s, n, p.top_k, work);
  }
  exp_where_kept(s, e, n, m, top_k_threshold);
  const double total = sum_as_double(e, n);

  Threshold keep{0.0f, total};
  if (p.top_p < 1.0f) {
    keep = top_p_threshold(e, n, static_cast<double>(p.top_p) * total, work);
  }

  int64_t token;
  if (p.greedy) {
    token = std::find(s, s + n, m) - s;  // first index of the maximum, like torch.argmax
  } else {
    const double u = philox_uniform(p.seed, p.step, kStreamTokenSample);
    token = sample_in_vocab_order(e, n, keep.value, u * keep.kept_mass);
  }
  a.out_token[row] = token;
  a.out_logprob[row] = static_cast<float>(static_cast<double>(s[token] - m) - std::log(keep.kept_mass));
}

std::tuple<at::Tensor, at::Tensor> mixed_sampling_from_logits_cpu(at::TensorList logits, const at::Tensor& weights,
                                                                  const at::Tensor& temperature,
                                                                  const at::Tensor& top_k, const at::Tensor& top_p,
                                                                  const at::Tensor& seed, const at::Tensor& step,
                                                                  int64_t vocab_size) {
  PackedMixSample packed =
      pack_mix_sample_args(logits, weights, temperature, top_k, top_p, seed, step, vocab_size);
  const MixSampleArgs& args = packed.args;
  at::parallel_for(0, args.batch, 1, [&](int64_t begin, int64_t end) {
    const RowScratch scratch = thread_row_scratch(args.vocab);
    for (int64_t row = begin; row < end; ++row) mix_sample_row(args, row, scratch);
  });
  return {packed.tokens, packed.logprobs};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) {
  m.impl("mixed_sampling_from_logits", &mixed_sampling_from_logits_cpu);
}

}  // namespace fastdoctor
