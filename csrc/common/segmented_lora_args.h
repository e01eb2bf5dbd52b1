// Argument checks for segmented_lora_ (CPU and CUDA): y [N, out] and x [N, in] row-major in one float dtype,
// per adapter a float32 shrink [in, rank] and expand [rank, out], one scale and one segment index each, and
// segments of `rows` rows inside N.
#pragma once
#include <ATen/ATen.h>

namespace fastdoctor {

inline void check_segmented_lora_args(const at::Tensor& y, const at::Tensor& x, at::TensorList shrink,
                                      at::TensorList expand, at::ArrayRef<double> scales, at::IntArrayRef segments,
                                      int64_t rows) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && y.size(0) == x.size(0),
              "segmented_lora_: expected y [N, out] and x [N, in], got ", y.sizes(), " and ", x.sizes());
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous(), "segmented_lora_: y and x must be contiguous");
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
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == x.size(1) && b.size(1) == y.size(1) &&
                    a.size(1) == b.size(0),
                "segmented_lora_: adapter ", i, ": expected shrink [", x.size(1), ", rank] and expand [rank, ",
                y.size(1), "], got ", a.sizes(), " and ", b.sizes());
    TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.is_contiguous() &&
                    b.is_contiguous(),
                "segmented_lora_: adapter ", i, ": shrink and expand must be contiguous float32");
    TORCH_CHECK(a.device() == x.device() && b.device() == x.device(), "segmented_lora_: adapter ", i,
                " is on another device than x");
    TORCH_CHECK(segments[i] >= 0 && (segments[i] + 1) * rows <= x.size(0), "segmented_lora_: adapter ", i,
                ": segment ", segments[i], " of ", rows, " rows is outside the ", x.size(0), " rows of x");
  }
}

// The ATen path: two matmuls per segment. The CPU kernel takes it for long segments (prefill), where BLAS
// wins; the CUDA glue always takes it (cuBLAS) until a BGMV kernel lands.
inline void segmented_lora_aten(at::Tensor& y, const at::Tensor& x, at::TensorList shrink, at::TensorList expand,
                                at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  for (size_t i = 0; i < shrink.size(); ++i) {
    const int64_t begin = segments[i] * rows;
    at::Tensor delta = at::mm(at::mm(x.narrow(0, begin, rows).to(at::kFloat), shrink[i]), expand[i]);
    at::Tensor part = y.narrow(0, begin, rows);
    part.copy_(part.to(at::kFloat).add_(delta.mul_(scales[i])));
  }
}

}  // namespace fastdoctor
