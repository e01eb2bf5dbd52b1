"""segmented_lora_ on CUDA against the reference (the ATen glue, cuBLAS on the current stream). Skipped without
CUDA."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import ops, reference
from test_segmented_lora import TOLERANCE, case

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_cuda_matches_reference(dtype, weight_dtype, rows):
    ((y, x), shrink, expand), scales, segments = case(rows, dtype, device="cuda", weight_dtype=weight_dtype)
    expected = reference.segmented_lora(y.cpu(), x.cpu(), [a.cpu() for a in shrink], [b.cpu() for b in expand],
                                        scales, segments, rows)
    got = ops.segmented_lora_(y.clone(), x, shrink, expand, scales, segments, rows)
    torch.testing.assert_close(got.float().cpu(), expected.float(), **TOLERANCE[dtype])
    assert torch.equal(got[:rows], y[:rows])
