"""Bad input gets a ValueError or TypeError that names the argument."""
from __future__ import annotations

import pytest
import torch

import fastdoctor

Z = torch.randn(2, 10)


def call(logits=None, weights=None, **kwargs):
    return fastdoctor.mixed_sampling_from_logits([Z] if logits is None else logits,
                                                 [1.0] if weights is None else weights, **kwargs)


@pytest.mark.parametrize("k", [0, 1])
def test_nan_logits_name_the_tensor_and_row(k):
    doctor = torch.randn(2, 10)
    inputs = [Z.clone(), doctor]
    inputs[k][1, 3] = float("nan")
    with pytest.raises(ValueError, match=rf"logits\[{k}\]: row 1 contains NaN"):
        call(inputs, [1.0, 0.5])


def test_positive_infinity_is_rejected():
    bad = Z.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"logits\[0\]: row 0 contains \+inf"):
        call([bad])


def test_all_masked_row_is_rejected():
    bad = Z.clone()
    bad[1] = float("-inf")
    with pytest.raises(ValueError, match="row 1 are all -inf"):
        call([bad])


def test_without_validation_invalid_rows_are_marked_not_garbage():
    bad = Z.clone()
    bad[1, 2] = float("nan")
    tokens, logprobs = call([bad], validate=False)
    assert tokens[1].item() == -1 and torch.isnan(logprobs[1])
    assert 0 <= tokens[0].item() < 10 and torch.isfinite(logprobs[0])


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5, float("nan")])
def test_top_p_outside_unit_interval(top_p):
    with pytest.raises(ValueError, match=r"top_p: expected values in \(0, 1\]"):
        call(top_p=top_p)


def test_negative_top_k():
    with pytest.raises(ValueError, match="top_k: expected values >= 0"):
        call(top_k=[3, -1])


def test_float_top_k_is_a_type_error():
    with pytest.raises(TypeError, match="top_k"):
        call(top_k=2.5)


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature: expected finite values >= 0"):
        call(temperature=temperature)


def test_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"weights: expected shape \[2, 2\] or \[2\]"):
        call([Z, Z], [1.0, 0.5, 0.2])
    with pytest.raises(ValueError, match=r"weights: expected shape \[2, 1\]"):
        call([Z], torch.ones(3, 1))


def test_nan_weights():
    with pytest.raises(ValueError, match="weights: expected finite"):
        call([Z], [float("nan")])


def test_per_row_parameter_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"seed: expected one value per row, shape \[2\]"):
        call(seed=[1, 2, 3])


def test_mismatched_devices():
    with pytest.raises(ValueError, match="logits\\[1\\]: expected device cpu"):
        call([Z, torch.empty(2, 10, device="meta")], [1.0, 1.0])
    with pytest.raises(ValueError, match="weights: expected device cpu"):
        call([Z], torch.ones(2, 1, device="meta"))
    with pytest.raises(ValueError, match="seed: expected device cpu"):
        call(seed=torch.zeros(2, dtype=torch.int64, device="meta"))


def test_empty_vocabulary():
    with pytest.raises(ValueError, match=r"V = 0"):
        call([torch.empty(2, 0)])


def test_mismatched_vocabularies_need_an_explicit_vocab_size():
    with pytest.raises(ValueError, match="vocabulary size 12 differs from logits\\[0\\]'s 10"):
        call([Z, torch.randn(2, 12)], [1.0, 1.0])
    with pytest.raises(ValueError, match="vocab_size: expected at most 10"):
        call([Z, torch.randn(2, 12)], [1.0, 1.0], vocab_size=11)
    tokens, _ = call([Z, torch.randn(2, 12)], [1.0, 1.0], vocab_size=10)
    assert (tokens < 10).all()


def test_unsupported_dtypes_and_shapes():
    with pytest.raises(TypeError, match=r"logits\[0\]: expected float32, bfloat16 or float16"):
        call([torch.ones(2, 10, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"logits\[0\]: expected shape \[batch, vocab\]"):
        call([torch.randn(2, 3, 10)])
    with pytest.raises(TypeError, match="logits: expected a non-empty list"):
        call([])
    with pytest.raises(ValueError, match="at most 8 tensors"):
        call([Z] * 9, [1.0] * 9)


def test_the_raw_op_checks_metadata_too():
    """Direct torch.ops calls skip the wrapper; the compiled checks still name the argument."""
    op = torch.ops.fastdoctor.mixed_sampling_from_logits
    good = dict(weights=torch.ones(2, 1), temperature=torch.ones(2), top_k=torch.zeros(2, dtype=torch.int64),
                top_p=torch.ones(2), seed=torch.zeros(2, dtype=torch.int64), step=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="top_k: expected dtype Long"):
        op([Z], **{**good, "top_k": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"temperature: expected shape \[2\]"):
        op([Z], **{**good, "temperature": torch.ones(3)})
    with pytest.raises(ValueError, match="weights: expected shape"):
        op([Z], **{**good, "weights": torch.ones(2, 2)})
