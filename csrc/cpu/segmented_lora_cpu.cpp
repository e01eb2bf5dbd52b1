// CPU kernel for segmented_lora_ (math in csrc/kernels/segmented_lora.h). Decode segments are a few rows:
// there the per-row loops beat BLAS, whose call overhead dominates a [rows, 576] x [576, 8] product. Long
// segments (prefill) take the ATen path. Checked against reference.segmented_lora in
// tests/test_segmented_lora.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common/segmented_lora_args.h"
#include "../kernels/segmented_lora.h"

namespace fastdoctor {
namespace {

constexpr int64_t kLoopRows = 16;           // segments up to this many rows run the per-row loops
constexpr int64_t kColumnsPerTask = 256;    // output columns per parallel task
constexpr int64_t kParallelWork = 1 << 16;  // multiply-adds below which one thread does it all

template <typename In>
void segmented_lora_loops(at::Tensor& y, const at::Tensor& x, at::TensorList shrink, at::TensorList expand,
                          at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  const int64_t in = x.size(1), out = y.size(1);
  const In* xs = x.data_ptr<In>();
  In* ys = y.data_ptr<In>();
  for (size_t i = 0; i < shrink.size(); ++i) {
    const int64_t rank = shrink[i].size(1), first = segments[i] * rows;
    const float* a = shrink[i].data_ptr<float>();
    const float* b = expand[i].data_ptr<float>();
    const float scale = static_cast<float>(scales[i]);
    std::vector<float> t(rows * rank);
    for (int64_t r = 0; r < rows; ++r) lora_shrink_row(xs + (first + r) * in, a, in, rank, t.data() + r * rank);
    const int64_t tasks_per_row = (out + kColumnsPerTask - 1) / kColumnsPerTask;
    const int64_t grain = rows * (in + out) * rank < kParallelWork ? rows * tasks_per_row : 1;
    at::parallel_for(0, rows * tasks_per_row, grain, [&](int64_t begin, int64_t end) {
      float acc[kColumnsPerTask];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / tasks_per_row, o0 = (task % tasks_per_row) * kColumnsPerTask;
        const int64_t o1 = o0 + kColumnsPerTask < out ? o0 + kColumnsPerTask : out;
        lora_expand_row(t.data() + r * rank, b, rank, out, o0, o1, scale, acc, ys + (first + r) * out);
      }
    });
  }
}

void segmented_lora_cpu(at::Tensor y, const at::Tensor& x, at::TensorList shrink, at::TensorList expand,
                        at::ArrayRef<double> scales, at::IntArrayRef segments, int64_t rows) {
  check_segmented_lora_args(y, x, shrink, expand, scales, segments, rows);
  if (rows == 0 || shrink.empty()) return;
  if (rows > kLoopRows) {
    segmented_lora_aten(y, x, shrink, expand, scales, segments, rows);
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
