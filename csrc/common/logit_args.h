// Torch glue shared by the launchers of more than one op family: the logit dtype of a tensor as the kernels'
// ScalarKind. Kept apart so that the token-scoring launchers need not include the mix-and-sample ones.
#pragma once
#include <ATen/ATen.h>

#include "../kernels/common.h"

namespace fastdoctor {

inline ScalarKind scalar_kind_of(const at::Tensor& t, int64_t index) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::kFloat32;
    case at::kBFloat16: return ScalarKind::kBFloat16;
    case at::kHalf: return ScalarKind::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, "logits[", index, "]: expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

}  // namespace fastdoctor
