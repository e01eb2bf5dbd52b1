"""segmented_lora_ (multi-LoRA batching) against reference.segmented_lora: both CPU paths (per-row loops for
decode segments, ATen/BLAS for long ones), every activation dtype, float32 and (for bf16 activations) bf16
adapter weights, ranks that differ per adapter, segment 0 left alone; bad arguments named; and
linear_segmented_lora (the projection and the deltas in one op). The CUDA glue: tests/test_gpu_segmented_lora.py."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import _C, ops, reference

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-4),
             torch.float16: dict(rtol=2e-3, atol=1e-4)}  # one rounding of the sum to the activations' dtype


def case(rows: int, dtype: torch.dtype, ranks=(8, 4), inp=70, out=300, segments=(1, 2), device="cpu", seed=0,
         weight_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = (1 + max(segments)) * rows
    y = torch.randn(n, out, generator=g).to(dtype)
    x = torch.randn(n, inp, generator=g).to(dtype)
    shrink = [torch.randn(r, inp, generator=g).to(weight_dtype) for r in ranks]
    expand = [(torch.randn(r, out, generator=g) * 0.1).to(weight_dtype) for r in ranks]
    args = [t.to(device) for t in (y, x)], [t.to(device) for t in shrink], [t.to(device) for t in expand]
    return args, [0.5, 2.0][: len(ranks)], list(segments)


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("rows", [1, 3, 4, 8, 16, 17, 40])  # both sides of each dtype's loops/BLAS threshold
@pytest.mark.parametrize("ranks", [(8, 4), (16, 3), (1, 32)])
def test_matches_reference(dtype, weight_dtype, rows, ranks):
    ((y, x), shrink, expand), scales, segments = case(rows, dtype, ranks=ranks, inp=77,  # 77: a lane remainder
                                                      weight_dtype=weight_dtype)
    expected = reference.segmented_lora(y, x, shrink, expand, scales, segments, rows)
    got = ops.segmented_lora_(y.clone(), x, shrink, expand, scales, segments, rows)
    torch.testing.assert_close(got.float(), expected.float(), **TOLERANCE[dtype])
    assert torch.equal(got[:rows], y[:rows])  # the patient's segment gets no delta


@pytest.mark.parametrize("tokens", [1, 5])
def test_segments_count_rows_of_the_first_dimension(tokens):
    """A projection's [N, T, features] tensors: segment s is x[s * rows:(s + 1) * rows], all T positions."""
    ((y, x), shrink, expand), scales, segments = case(3 * tokens, torch.float32)
    y3, x3 = y.view(9, tokens, -1), x.view(9, tokens, -1)
    got = ops.segmented_lora_(y3.clone(), x3, shrink, expand, scales, segments, 3)
    expected = reference.segmented_lora(y, x, shrink, expand, scales, segments, 3 * tokens)
    torch.testing.assert_close(got.view_as(y), expected, **TOLERANCE[torch.float32])


def test_one_adapter_on_a_later_segment_only():
    ((y, x), shrink, expand), scales, _ = case(2, torch.float32, ranks=(8,), segments=(2,))
    got = ops.segmented_lora_(y.clone(), x, shrink, expand, scales, [2], 2)
    torch.testing.assert_close(got, reference.segmented_lora(y, x, shrink, expand, scales, [2], 2))
    assert torch.equal(got[:4], y[:4])


def test_it_is_in_place_and_empty_lists_do_nothing():
    ((y, x), shrink, expand), scales, segments = case(2, torch.float32)
    before = y.clone()
    ops.segmented_lora_(y, x, [], [], [], [], 2)
    assert torch.equal(y, before)
    ops.segmented_lora_(y, x, shrink, expand, scales, segments, 2)
    assert not torch.equal(y, before)


@pytest.mark.parametrize("change,match", [
    (lambda y, x, a, b, s, g: (y, x[:, :5].contiguous(), a, b, s, g), r"expected shrink \[rank, 5\]"),
    (lambda y, x, a, b, s, g: (y, x.double(), a, b, s, g), "one dtype"),
    (lambda y, x, a, b, s, g: (y, x, [t.half() for t in a], b, s, g), "both float32"),
    (lambda y, x, a, b, s, g: (y, x, [t.bfloat16() for t in a], [t.bfloat16() for t in b], s, g),
     "with bfloat16 activations"),  # bf16 weights with float32 activations
    (lambda y, x, a, b, s, g: (y, x, a, b[:1], s, g), "one shrink, expand, scale and segment per adapter"),
    (lambda y, x, a, b, s, g: (y, x, a, b, s, [1, 3]), "outside the"),
    (lambda y, x, a, b, s, g: (y.t(), x, a, b, s, g), "expected y|contiguous"),
])
def test_bad_arguments_are_named(change, match):
    ((y, x), shrink, expand), scales, segments = case(2, torch.float32)
    with pytest.raises(RuntimeError, match=match):
        ops.segmented_lora_(*change(y, x, shrink, expand, scales, segments), 2)


def test_bf16_weights_need_both_tensors_in_bf16():
    ((y, x), shrink, expand), scales, segments = case(2, torch.bfloat16)
    with pytest.raises(RuntimeError, match="both float32"):
        ops.segmented_lora_(y, x, [a.bfloat16() for a in shrink], expand, scales, segments, 2)


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("rows,tokens", [(1, 1), (3, 1), (8, 1), (2, 5)])  # decode steps and a prefill
@pytest.mark.parametrize("bias", [False, True])
def test_linear_segmented_lora_matches_reference(dtype, weight_dtype, rows, tokens, bias):
    """The stacked copy's fused nn.Linear forward: the projection, then the deltas; rows per segment are read
    off x (3 segments: the patient, then adapters on segments 1 and 2)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3 * rows, tokens, 77, generator=g).to(dtype)
    weight = torch.randn(300, 77, generator=g).to(dtype)
    b = torch.randn(300, generator=g).to(dtype) if bias else None
    shrink = [torch.randn(r, 77, generator=g).to(weight_dtype) for r in (8, 4)]
    expand = [(torch.randn(r, 300, generator=g) * 0.1).to(weight_dtype) for r in (8, 4)]
    got = ops.linear_segmented_lora(x, weight, b, shrink, expand, [0.5, 2.0], [1, 2], 3)
    expected = reference.linear_segmented_lora(x, weight, b, shrink, expand, [0.5, 2.0], [1, 2], 3)
    assert got.shape == (3 * rows, tokens, 300) and got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), **TOLERANCE[dtype])
    assert torch.equal(got[:rows], torch.nn.functional.linear(x, weight, b)[:rows])  # the patient's segment: no delta
    bound = _C.BoundLinearSegmentedLora(weight, b, shrink, expand, [0.5, 2.0], [1, 2], 3)  # shared_base's eager forward
    assert torch.equal(bound(x), got)


def test_the_bound_op_reads_its_tensors_as_they_are_at_each_call():
    """shared_base binds the adapter weights once and refreshes them in place after training."""
    g = torch.Generator().manual_seed(2)
    x, weight = torch.randn(2, 1, 16, generator=g), torch.randn(12, 16, generator=g)
    shrink, expand = [torch.randn(4, 16, generator=g)], [torch.randn(4, 12, generator=g)]
    bound = _C.BoundLinearSegmentedLora(weight, None, shrink, expand, [1.0], [1], 2)
    first = bound(x)
    expand[0].mul_(3.0)
    weight.add_(1.0)
    torch.testing.assert_close(bound(x), reference.linear_segmented_lora(x, weight, None, shrink, expand, [1.0], [1], 2))
    assert not torch.equal(bound(x), first)


def test_the_bound_op_names_bad_arguments():
    x, weight = torch.randn(4, 1, 8), torch.randn(6, 8)
    bound = _C.BoundLinearSegmentedLora(weight, None, [torch.randn(2, 8)], [torch.randn(2, 6)], [1.0], [1], 3)
    with pytest.raises(RuntimeError, match="a multiple of segment_count = 3"):
        bound(x)
    with pytest.raises(RuntimeError, match="expected shrink \\[rank, 8\\]"):
        _C.BoundLinearSegmentedLora(weight, None, [torch.randn(2, 7)], [torch.randn(2, 6)], [1.0], [1], 2)(
            torch.randn(2, 1, 8))
    with pytest.raises(TypeError):  # pybind11 names the expected signature
        _C.BoundLinearSegmentedLora(weight, None, torch.randn(2, 8), [torch.randn(2, 6)], [1.0], [1], 2)


def test_linear_segmented_lora_needs_whole_segments():
    x, weight = torch.randn(4, 1, 8), torch.randn(6, 8)
    with pytest.raises(RuntimeError, match="a multiple of segment_count = 3"):
        ops.linear_segmented_lora(x, weight, None, [torch.randn(2, 8)], [torch.randn(2, 6)], [1.0], [1], 3)


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                (torch.float16, torch.float32)])
def test_row_blocks_give_the_bits_of_single_rows(dtype, weight_dtype):
    """The loops shrink and expand blocks of 4 rows together (one weight read for the block) and the last
    rows % 4 alone; each row's sums run in the same order either way, so a row's result is the same to the bit
    whether it was computed in a block of a 7-row segment or alone (MLP widths: in 576, out 1536)."""
    ((y, x), shrink, expand), scales, segments = case(7, dtype, ranks=(8, 5), inp=576, out=1536,
                                                      weight_dtype=weight_dtype)
    together = ops.segmented_lora_(y.clone(), x, shrink, expand, scales, segments, 7)
    alone = y.clone()
    for r in range(7):  # row r of every segment, as a stacked batch of 3 one-row segments
        rows = [s * 7 + r for s in range(3)]
        alone[rows] = ops.segmented_lora_(y[rows].clone(), x[rows].contiguous(), shrink, expand, scales, segments, 1)
    assert torch.equal(together, alone)
