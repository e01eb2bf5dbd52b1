// Segmented LoRA: the per-row math of multi-LoRA batching (punica's SGMV with contiguous segments).
//
// The stacked batch holds segments of `rows` rows; segment s has adapter s (segment 0, the patient, none):
//   y[r, :] += scale_s * ((x[r, :] @ shrink_s^T) @ expand_s)    shrink_s [rank, in], expand_s [rank, out]
// shrink is peft's lora_A as it is; expand is lora_B [out, rank] transposed, so both inner loops run over
// contiguous memory with independent lanes (they vectorise without reassociating sums).
// The adapter weights are float32, or bfloat16 bits for bfloat16 activations (decode is memory-bound: 16-bit
// weights halve the bytes each step reads, as punica and vLLM keep LoRA weights in the model's dtype).
// Accumulation is float32 whatever the dtypes, as peft computes a float32 adapter.
// Host+device inline and framework-free. Checked against python/fastdoctor/reference.py:segmented_lora in
// tests/test_segmented_lora.py.
#pragma once
#include <cstdint>

#include "common.h"

namespace fastdoctor {

// An adapter weight as float: float32 as it is, bfloat16 (its bits as uint16_t) exactly.
FD_HOST_DEVICE float lora_weight(float w) { return w; }
FD_HOST_DEVICE float lora_weight(uint16_t bf16_bits) { return bfloat16_bits_to_float(bf16_bits); }

// t[g, j0 + j] = sum_i x[g, i] * shrink[j0 + j, i] for G rows (row stride `in`) and J consecutive ranks: G x J
// sets of 8 independent lanes over i, so the dot products vectorise without reassociating a sum and the
// G x J chains hide the add latency. Lanes are summed in a fixed order, so every clone, and every G, gives the
// same result for a row. The row pointers are computed once, outside the loop over i: written as
// x[g * in + i + l], GCC 12's AVX-512 vectoriser (-O3) turned G >= 2 into loads that read past the last row
// (a fault when it ends at a page; found with a guard-page harness).
template <int G, int J, typename W>
FD_HOST_DEVICE void lora_shrink_block(const float* x, const W* shrink, int64_t in, int64_t rank, int64_t j0,
                                      float* t) {
  const float* rows[G];
  const W* weights[J];
  for (int g = 0; g < G; ++g) rows[g] = x + g * in;
  for (int j = 0; j < J; ++j) weights[j] = shrink + (j0 + j) * in;
  float lanes[G][J][8];
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < J; ++j)
      for (int l = 0; l < 8; ++l) lanes[g][j][l] = 0.0f;
  int64_t i = 0;
  for (; i + 8 <= in; i += 8)
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < J; ++j)
        for (int l = 0; l < 8; ++l) lanes[g][j][l] += rows[g][i + l] * lora_weight(weights[j][i + l]);
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < J; ++j) {
      float sum = 0.0f;
      for (int l = 0; l < 8; ++l) sum += lanes[g][j][l];
      for (int64_t k = i; k < in; ++k) sum += rows[g][k] * lora_weight(weights[j][k]);
      t[g * rank + j0 + j] = sum;
    }
}

// acc[o - begin] = sum_j t[j] * expand[j, o] for o in [begin, end).
template <typename W>
FD_HOST_DEVICE void lora_expand_columns(const float* t, const W* expand, int64_t rank, int64_t out, int64_t begin,
                                        int64_t end, float* acc) {
  for (int64_t o = begin; o < end; ++o) acc[o - begin] = 0.0f;
  for (int64_t j = 0; j < rank; ++j) {
    const float tj = t[j];
    const W* w = expand + j * out;
    for (int64_t o = begin; o < end; ++o) acc[o - begin] += tj * lora_weight(w[o]);
  }
}

// The same for G rows at once (t [G, rank], acc [G, stride]): each expand weight is read once for the G rows.
// Every (g, o) sums over j in the same order as lora_expand_columns, so the result is the same to the bit.
template <int G, typename W>
FD_HOST_DEVICE void lora_expand_block(const float* t, const W* expand, int64_t rank, int64_t out, int64_t begin,
                                      int64_t end, float* acc, int64_t stride) {
  for (int g = 0; g < G; ++g)
    for (int64_t o = begin; o < end; ++o) acc[g * stride + o - begin] = 0.0f;
  for (int64_t j = 0; j < rank; ++j) {
    float tj[G];
    for (int g = 0; g < G; ++g) tj[g] = t[g * rank + j];
    const W* w = expand + j * out;
    for (int64_t o = begin; o < end; ++o) {
      const float wo = lora_weight(w[o]);
      for (int g = 0; g < G; ++g) acc[g * stride + o - begin] += tj[g] * wo;
    }
  }
}

// y[o] = y[o] + acc[o] * scale, rounded to y's type once (peft's result + delta * scaling). In: float,
// c10::BFloat16, c10::Half or anything that converts to and from float.
template <typename In>
FD_HOST_DEVICE void lora_add_scaled(const float* acc, int64_t n, float scale, In* y) {
  for (int64_t o = 0; o < n; ++o) y[o] = static_cast<In>(static_cast<float>(y[o]) + acc[o] * scale);
}

}  // namespace fastdoctor
