// Argument checks for segmented_lora_ (CPU and CUDA): y [N, ..., out] and x [N, ..., in] with the same leading
// dimensions (a projection's output and input), seen as matrices of rows; segments count rows of the first
// dimension (a decode step's [N, 1, in] and a prefill's [N, T, in] alike). Then, on those matrices: y [M, out]
// and x [M, in] in one float dtype, per adapter a shrink [rank, in] (lora_A) and expand [rank, out] (lora_B
// transposed), both float32 or, with bfloat16 activations, both bfloat16, one scale and one segment index, and
// segments of `rows` rows inside M. Also what both backends share: the ATen path and linear_segmented_lora.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastdoctor {

// (y [M, out], x [M, in], rows of M per segment) from the projection's tensors, both contiguous.
inline std::tuple<at::Tensor, at::Tensor, int64_t> as_row_matrices(const at::Tensor& y, const at::Tensor& x,
                                                                     int64_t rows) {
  TORCH_CHECK(y.dim() >= 2 && y.dim() == x.dim() && y.sizes().slice(0, y.dim() - 1) == x.sizes().slice(0, x.dim() - 1),
              "segmented_lora_: expected y [N, ..., out] and x [N, ..., in] with the same leading dimensions, got ",
              y.sizes(), " and ", x.sizes());
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous(), "segmented_lora_: y and x must be contiguous");
  const int64_t per_row = x.size(0) == 0 ? 1 : x.numel() / (x.size(0) * x.size(-1));
  return {y.view({-1, y.size(-1)}), x.view({-1, x.size(-1)}), rows * per_row};
}

inline void check_segmented_lora_args(const at::Tensor& y, const at::Tensor& x, at::TensorList shrink,
                                      at::TensorList expand, at::ArrayRef<double> scales, at::IntArrayRef segments,
                                      int64_t rows) {
  // y and x come from as_row_matrices: contiguous matrices with the same number of rows.
  TORCH_CHECK(y.scalar_type() == x.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf),
              "segmented_lora_: expected y and x of one dtype among float32, bfloat16, float16, got ",
              y.scalar_type(), " and ", x.scalar_type());
  TORCH_CHECK(y.device() == x.device(), "segmented_lora_: y and x on different devices");
  const size_t k = shrink.size();
  TORCH_CHECK(expand.size() == k && scales.size() == k && segments.size() == k,
              "segmented_lora_: expected one shrink, expand, scale and segment per adapter, got ", shrink.size(), ", ",
              expand.size(), ", ", scales.size(), ", ", segments.size());
  TORCH_CHECK(rows >= 0, "segmented_lora_: rows must be >= 0, got ", rows);
  for (size_t i = 0; i < k; ++i) {
    const at::Tensor& a = shrink[i];
    const at::Tensor& b = expand[i];
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == x.size(1) && b.size(1) == y.size(1) &&
                    a.size(0) == b.size(0),
                "segmented_lora_: adapter ", i, ": expected shrink [rank, ", x.size(1), "] and expand [rank, ",
                y.size(1), "], got ", a.sizes(), " and ", b.sizes());
    TORCH_CHECK(a.scalar_type() == b.scalar_type() &&
                    (a.scalar_type() == at::kFloat ||
                     (a.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kBFloat16)) &&
                    a.is_contiguous() && b.is_contiguous(),
                "segmented_lora_: adapter ", i, ": shrink and expand must be contiguous, both float32 or (with ",
                "bfloat16 activations) both bfloat16, got ", a.scalar_type(), " and ", b.scalar_type());
    TORCH_CHECK(a.device() == x.device() && b.device() == x.device(), "segmented_lora_: adapter ", i,
                " is on another device than x");
    TORCH_CHECK(segments[i] >= 0 && (segments[i] + 1) * rows <= x.size(0), "segmented_lora_: adapter ", i,
                ": segment ", segments[i], " of ", rows, " rows is outside the ", x.size(0), " rows of x");
  }
}

// The ATen path: two matmuls per segment. The CPU kernel takes it for float32 segments of 4 rows or more, where
// BLAS wins; the CUDA glue always takes it (cuBLAS) until a BGMV kernel lands.
inline void segmented_lora_aten(at::Tensor& y, const at::Tensor& x, at::TensorList shrink, at::TensorList expand,
                                at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  for (size_t i = 0; i < shrink.size(); ++i) {
    const int64_t begin = segments[i] * rows;
    at::Tensor part = y.narrow(0, begin, rows);
    if (y.scalar_type() == at::kFloat) {  // one fused GEMM for the expand and the add
      part.addmm_(at::mm(x.narrow(0, begin, rows), shrink[i].t()), expand[i], 1.0, scales[i]);  // float32 weights
    } else {
      at::Tensor delta = at::mm(at::mm(x.narrow(0, begin, rows).to(at::kFloat), shrink[i].to(at::kFloat).t()),
                                expand[i].to(at::kFloat));
      part.copy_(part.to(at::kFloat).add_(delta.mul_(scales[i])));
    }
  }
}

using SegmentedLoraFn = void (*)(at::Tensor, const at::Tensor&, at::TensorList, at::TensorList, at::ArrayRef<double>,
                                 at::IntArrayRef, int64_t);

// linear_segmented_lora on a backend whose segmented_lora_ is `segmented_lora`: the stacked copy's nn.Linear
// forward in one op call (210 projections a step; about 2 us of Python and dispatch each when they were two).
// x [N, ..., in] holds segment_count equal segments, so the rows per segment are N / segment_count.
template <SegmentedLoraFn segmented_lora>
at::Tensor linear_segmented_lora(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::TensorList shrink, at::TensorList expand, at::ArrayRef<double> scales,
                                 at::IntArrayRef segments, int64_t segment_count, const at::Tensor& x) {
  TORCH_CHECK(segment_count > 0 && x.dim() >= 2 && x.size(0) % segment_count == 0,
              "linear_segmented_lora: expected x [N, ..., in] with N a multiple of segment_count = ", segment_count,
              ", got ", x.sizes());
  const at::Tensor xc = x.contiguous();  // torch 2.13's CPU linear is slow on a non-contiguous 3-D input
  at::Tensor y = at::linear(xc, weight, bias);
  segmented_lora(y, xc, shrink, expand, scales, segments, x.size(0) / segment_count);
  return y;
}

}  // namespace fastdoctor
