// CPU kernel for segmented_lora_ (math in csrc/kernels/segmented_lora.h). Decode segments are a few rows:
// there these loops beat BLAS, whose call overhead dominates a [rows, 576] x [576, 8] product (measured on
// SmolLM2-135M's projections, up to 3 rows). The input rows are converted to float once, the shrink runs four
// rank dot products at once in independent lanes, and the float loops get AVX-512/AVX2 clones
// (vector_math.h). From 4 rows, float32 takes ATen (addmm) and 16-bit inputs BLAS on their float rows.
// Checked against reference.segmented_lora in tests/test_segmented_lora.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/logit_args.h"
#include "../common/segmented_lora_args.h"
#include "../kernels/segmented_lora.h"
#include "vector_math.h"

namespace fastdoctor {
namespace {

constexpr int64_t kLoopRowsFloat = 3;  // segments up to this many rows run the loops; from 4, BLAS's small GEMMs win
constexpr int64_t kColumns = 256;           // output columns per task
constexpr int64_t kParallelWork = 1 << 18;  // multiply-adds below which one thread does a segment

// t [rows, rank] = x_segment @ shrink^T, four ranks at a time per row.
FD_VECTOR_CLONES void shrink(const float* x, const float* a, int64_t in, int64_t rank, int64_t rows, float* t) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t j = 0;
    for (; j + 4 <= rank; j += 4) lora_shrink_block<1, 4>(x + r * in, a, in, rank, j, t + r * rank);
    for (; j < rank; ++j) lora_shrink_block<1, 1>(x + r * in, a, in, rank, j, t + r * rank);
  }
}

FD_VECTOR_CLONES void expand(const float* t, const float* b, int64_t rank, int64_t out, int64_t begin, int64_t end,
                             float* acc) {
  lora_expand_columns(t, b, rank, out, begin, end, acc);
}

// For float32 activations the final add vectorises too (the bf16/fp16 one converts per element).
FD_VECTOR_CLONES void expand_add(const float* t, const float* b, int64_t rank, int64_t out, int64_t begin,
                                 int64_t end, float scale, float* acc, float* y) {
  lora_expand_columns(t, b, rank, out, begin, end, acc);
  lora_add_scaled(acc, end - begin, scale, y);
}

// y = bf16(float(y) + acc * scale) for bf16 bits, rounding to nearest even exactly as c10::BFloat16 does (NaN
// becomes 0x7FC0), in integer lanes so it vectorises.
FD_VECTOR_CLONES void add_scaled_bf16(const float* acc, int64_t n, float scale, uint16_t* y) {
  for (int64_t o = 0; o < n; ++o) {
    const float f = bfloat16_bits_to_float(y[o]) + acc[o] * scale;
    const uint32_t bits = float_as_bits(f);
    const uint16_t rounded = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    y[o] = f != f ? static_cast<uint16_t>(0x7FC0) : rounded;
  }
}

template <typename In>
void add_scaled(const float* acc, int64_t n, float scale, In* y) {
  if constexpr (std::is_same_v<In, c10::BFloat16>) {
    add_scaled_bf16(acc, n, scale, reinterpret_cast<uint16_t*>(y));
  } else {
    lora_add_scaled(acc, n, scale, y);
  }
}

// Rows [first, first + rows) of the 16-bit x [M, in] as float32 into xf.
void rows_as_float(const at::Tensor& x, int64_t first, int64_t rows, float* xf) {
  const int64_t in = x.size(1);
  const ScalarKind kind = scalar_kind_of(x, 0);  // dtype already checked
  for (int64_t r = 0; r < rows; ++r)
    load_row_as_float(static_cast<const char*>(x.data_ptr()) + (first + r) * in * x.element_size(), kind,
                      xf + r * in, in);
}

// 16-bit activations, segments of 4 rows or more (prefill included): the rows converted to float once, both
// products through BLAS on those float rows, then one vectorised add back. ATen's own path converts x and y
// per call and made a bf16 prefill of 16 x 51 rows take 1.4 s instead of 0.26 s.
template <typename In>
void segmented_lora_blas16(at::Tensor& y, const at::Tensor& x, at::TensorList shrinks, at::TensorList expands,
                           at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  const int64_t in = x.size(1), out = y.size(1);
  In* ys = y.data_ptr<In>();
  std::vector<float> xf(rows * in);
  for (size_t i = 0; i < shrinks.size(); ++i) {
    const int64_t first = segments[i] * rows;
    rows_as_float(x, first, rows, xf.data());
    const at::Tensor rows_f = at::from_blob(xf.data(), {rows, in}, x.options().dtype(at::kFloat));
    const at::Tensor delta = at::mm(at::mm(rows_f, shrinks[i].t()), expands[i]);
    const float* d = delta.data_ptr<float>();
    const float scale = static_cast<float>(scales[i]);
    at::parallel_for(0, rows, rows * out < kParallelWork ? rows : 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) add_scaled(d + r * out, out, scale, ys + (first + r) * out);
    });
  }
}

template <typename In>
void segmented_lora_loops(at::Tensor& y, const at::Tensor& x, at::TensorList shrinks, at::TensorList expands,
                          at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  const int64_t in = x.size(1), out = y.size(1);
  In* ys = y.data_ptr<In>();
  constexpr bool kFloatInput = std::is_same_v<In, float>;
  std::vector<float> xf(kFloatInput ? 0 : rows * in), t;
  for (size_t i = 0; i < shrinks.size(); ++i) {
    const int64_t rank = shrinks[i].size(0), first = segments[i] * rows;
    const float scale = static_cast<float>(scales[i]);
    const float* b = expands[i].data_ptr<float>();
    const float* rows_f = nullptr;
    if constexpr (kFloatInput) {
      rows_f = x.data_ptr<float>() + first * in;
    } else {
      rows_as_float(x, first, rows, xf.data());
      rows_f = xf.data();
    }
    t.assign(rows * rank, 0.0f);
    shrink(rows_f, shrinks[i].data_ptr<float>(), in, rank, rows, t.data());
    const int64_t tasks_per_row = (out + kColumns - 1) / kColumns;
    const int64_t grain = rows * (in + out) * rank < kParallelWork ? rows * tasks_per_row : 1;
    at::parallel_for(0, rows * tasks_per_row, grain, [&](int64_t begin, int64_t end) {
      float acc[kColumns];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / tasks_per_row, o0 = (task % tasks_per_row) * kColumns;
        const int64_t o1 = o0 + kColumns < out ? o0 + kColumns : out;
        if constexpr (kFloatInput) {
          expand_add(t.data() + r * rank, b, rank, out, o0, o1, scale, acc, ys + (first + r) * out + o0);
        } else {
          expand(t.data() + r * rank, b, rank, out, o0, o1, acc);
          add_scaled(acc, o1 - o0, scale, ys + (first + r) * out + o0);
        }
      }
    });
  }
}

void segmented_lora_cpu(at::Tensor y_in, const at::Tensor& x_in, at::TensorList shrink, at::TensorList expand,
                        at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows_in) {
  auto [y, x, rows] = as_row_matrices(y_in, x_in, rows_in);
  check_segmented_lora_args(y, x, shrink, expand, scales, segments, rows);
  if (rows == 0 || shrink.empty()) return;
  if (x.scalar_type() == at::kFloat && rows > kLoopRowsFloat) {
    segmented_lora_aten(y, x, shrink, expand, scales, segments, rows);
    return;
  }
  if (rows > kLoopRowsFloat) {
    if (x.scalar_type() == at::kBFloat16) {
      segmented_lora_blas16<c10::BFloat16>(y, x, shrink, expand, scales, segments, rows);
    } else {
      segmented_lora_blas16<c10::Half>(y, x, shrink, expand, scales, segments, rows);
    }
    return;
  }
  switch (x.scalar_type()) {
    case at::kFloat: segmented_lora_loops<float>(y, x, shrink, expand, scales, segments, rows); break;
    case at::kBFloat16: segmented_lora_loops<c10::BFloat16>(y, x, shrink, expand, scales, segments, rows); break;
    default: segmented_lora_loops<c10::Half>(y, x, shrink, expand, scales, segments, rows); break;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CPU, m) { m.impl("segmented_lora_", &segmented_lora_cpu); }

}  // namespace fastdoctor
