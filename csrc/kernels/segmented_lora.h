// Segmented LoRA: the per-row math of multi-LoRA batching (punica's SGMV with contiguous segments).
//
// The stacked batch holds segments of `rows` rows; segment s has adapter s (segment 0, the patient, none):
//   y[r, :] += scale_s * ((x[r, :] @ shrink_s) @ expand_s)      shrink_s [in, rank], expand_s [rank, out]
// Both matrices are stored transposed from peft's lora_A [rank, in] and lora_B [out, rank], so every inner
// loop runs over contiguous memory with independent lanes (it vectorises without reassociating sums).
// Accumulation is float32 whatever the activations' dtype, as peft computes a float32 adapter.
// Host+device inline and framework-free: In is float, c10::BFloat16 or c10::Half (anything that converts to
// and from float). Checked against python/fastdoctor/reference.py:segmented_lora in tests/test_segmented_lora.py.
#pragma once
#include <cstdint>

#include "common.h"

namespace fastdoctor {

// t[j] = sum_i x[i] * shrink[i, j] for j < rank.
template <typename In>
FD_HOST_DEVICE void lora_shrink_row(const In* x, const float* shrink, int64_t in, int64_t rank, float* t) {
  for (int64_t j = 0; j < rank; ++j) t[j] = 0.0f;
  for (int64_t i = 0; i < in; ++i) {
    const float xi = static_cast<float>(x[i]);
    const float* w = shrink + i * rank;
    for (int64_t j = 0; j < rank; ++j) t[j] += xi * w[j];
  }
}

// acc[o] = sum_j t[j] * expand[j, o] for o in [begin, end), then y[o] = y[o] + acc[o] * scale (rounded to In
// once, like peft's result + delta * scaling).
template <typename In>
FD_HOST_DEVICE void lora_expand_row(const float* t, const float* expand, int64_t rank, int64_t out, int64_t begin,
                                    int64_t end, float scale, float* acc, In* y) {
  for (int64_t o = begin; o < end; ++o) acc[o - begin] = 0.0f;
  for (int64_t j = 0; j < rank; ++j) {
    const float tj = t[j];
    const float* w = expand + j * out;
    for (int64_t o = begin; o < end; ++o) acc[o - begin] += tj * w[o];
  }
  for (int64_t o = begin; o < end; ++o) y[o] = static_cast<In>(static_cast<float>(y[o]) + acc[o - begin] * scale);
}

}  // namespace fastdoctor
