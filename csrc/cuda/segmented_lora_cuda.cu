// CUDA glue for segmented_lora_ and linear_segmented_lora: the ATen path (two cuBLAS matmuls per segment, on the
// current stream).
// A fused BGMV kernel (one launch for every segment) is the next step once a GPU has measured this one.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/segmented_lora_args.h"

namespace fastdoctor {
namespace {

void segmented_lora_cuda(at::Tensor y_in, const at::Tensor& x_in, at::TensorList shrink, at::TensorList expand,
                         at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows_in) {
  auto [y, x, rows] = as_row_matrices(y_in, x_in, rows_in);
  check_segmented_lora_args(y, x, shrink, expand, scales, segments, rows);
  if (rows == 0 || shrink.empty()) return;
  segmented_lora_aten(y, x, shrink, expand, scales, segments, rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdoctor, CUDA, m) {
  m.impl("segmented_lora_", &segmented_lora_cuda);
  m.impl("linear_segmented_lora", &linear_segmented_lora<segmented_lora_cuda>);
}

}  // namespace fastdoctor
