// CUDA-only device helpers shared by more than one kernel family's *.cuh; the host+device ones are in
// common.h. One copy, so the mix-sample and router kernels read a logit of each dtype the same way.
//   load_logit  element i of row `row` of a MixInput (fp32, bf16 or fp16) as fp32; every dtype converts
//               exactly, so the kernels see the values the reference sees after .float()
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "common.h"

namespace fastdoctor {

__device__ __forceinline__ float load_logit(const MixInput& in, int64_t row, int64_t i) {
  switch (in.kind) {
    case ScalarKind::kFloat32: return static_cast<const float*>(in.data)[row * in.row_stride + i];
    case ScalarKind::kBFloat16:
      return bfloat16_bits_to_float(static_cast<const uint16_t*>(in.data)[row * in.row_stride + i]);
    default: return __half2float(static_cast<const __half*>(in.data)[row * in.row_stride + i]);
  }
}

}  // namespace fastdoctor
