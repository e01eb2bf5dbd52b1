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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_linear_segmented_lora_and_its_bound_form_match_reference(dtype):
    """The stacked copy's nn.Linear forward on CUDA: the op (compiled decode) and shared_base's eager C++-bound form."""
    from fastdoctor import _C

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3 * 2, 1, 77, generator=g).to(dtype)
    weight, bias = torch.randn(300, 77, generator=g).to(dtype), torch.randn(300, generator=g).to(dtype)
    shrink = [torch.randn(r, 77, generator=g).to(dtype) for r in (8, 4)]
    expand = [(torch.randn(r, 300, generator=g) * 0.1).to(dtype) for r in (8, 4)]
    expected = reference.linear_segmented_lora(x, weight, bias, shrink, expand, [0.5, 2.0], [1, 2], 3)
    on = [t.cuda() for t in (x, weight, bias)]
    shrink_c, expand_c = [a.cuda() for a in shrink], [b.cuda() for b in expand]
    got = ops.linear_segmented_lora(on[0], on[1], on[2], shrink_c, expand_c, [0.5, 2.0], [1, 2], 3)
    bound = _C.BoundLinearSegmentedLora(on[1], on[2], shrink_c, expand_c, [0.5, 2.0], [1, 2], 3)(on[0])
    torch.testing.assert_close(got.float().cpu(), expected.float(), **TOLERANCE[dtype])
    assert torch.equal(bound, got)
