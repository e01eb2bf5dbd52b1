"""mixed_sampling_from_logits: the compiled kernel against the pure-PyTorch oracle, and the oracle's
semantics against HF's logits warpers."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from fastdoctor import reference
from conftest import SHAPES, random_logits, row_params, run_kernel_and_reference, varied_row_params

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

@pytest.mark.parametrize("vocab,batch,dtypes", SHAPES)
def test_kernel_matches_reference(vocab, batch, dtypes, generator):
    logits = [random_logits(batch, vocab, dt, generator, scale=2.0 + k) for k, dt in enumerate(dtypes)]
    weights = torch.rand(batch, len(dtypes), generator=generator) * 1.5
    if len(dtypes) > 1:
        weights[::7, -1] = 0.0  # rows where a doctor is switched off
    params = varied_row_params(batch, vocab, generator)
    tokens, logprobs, ref_tokens, ref_logprobs = run_kernel_and_reference(logits, weights, params)
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-4, atol=1e-4)


def test_greedy_is_the_first_maximum_and_logprob_at_temperature_one(generator):
    z = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits([z], [1.0], temperature=0.0, top_k=3, seed=5)
    assert tokens.tolist() == [1, 0]
    expected_row0 = 3.0 - torch.logsumexp(torch.tensor([3.0, 3.0, 2.0]), 0)  # top-3 set at T = 1
    expected_row1 = torch.tensor(0.25).log()  # four-way tie: top-3 keeps all four
    torch.testing.assert_close(logprobs, torch.stack([expected_row0, expected_row1]))


def test_top_k_keeps_every_token_tied_with_the_kth():
    z = torch.tensor([[5.0, 1.0, 5.0, 0.0, 5.0]]).expand(2000, 5)
    params = row_params(2000, top_k=2, seed=torch.arange(2000))
    tokens, _, ref_tokens, _ = run_kernel_and_reference([z], torch.ones(2000, 1), params)
    assert torch.equal(tokens, ref_tokens)
    assert set(tokens.tolist()) == {0, 2, 4}


@pytest.mark.parametrize("top_p,kept", [(0.45, {0}), (0.6, {0, 1}), (0.85, {0, 1, 2}), (0.96, {0, 1, 2, 3})])
def test_top_p_keeps_the_token_that_crosses_p(top_p, kept):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    z = probs.log().unsqueeze(0).expand(4000, 4)
    params = row_params(4000, top_p=top_p, seed=torch.arange(4000))
    tokens, logprobs, ref_tokens, ref_logprobs = run_kernel_and_reference([z], torch.ones(4000, 1), params)
    assert torch.equal(tokens, ref_tokens)
    assert set(tokens.tolist()) == kept
    renormalised = probs / probs[sorted(kept)].sum()
    torch.testing.assert_close(logprobs, renormalised[tokens].log(), rtol=1e-5, atol=1e-5)


def test_top_p_keeps_ties_with_the_boundary_token():
    z = torch.tensor([[2.0, 1.0, 1.0, 1.0, -3.0]]).log_softmax(-1).expand(3000, 5)
    # Mass of the first token is about 0.56: p = 0.6 crosses inside the three-way tie, which stays whole.
    tokens, *_ = run_kernel_and_reference([z], torch.ones(3000, 1), row_params(3000, top_p=0.6,
                                                                               seed=torch.arange(3000)))
    assert set(tokens.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.9), (0.7, 50, 1.0), (1.3, 40, 0.8),
                                                     (0.5, 0, 0.5), (2.0, 5, 0.99)])
def test_filtering_matches_hf_logits_warpers(temperature, top_k, top_p, generator):
    warpers = pytest.importorskip("transformers.generation.logits_process")
    scores = torch.randn(16, 3000, generator=generator, dtype=torch.float64) * 3  # no ties
    hf = warpers.TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
        hf = warpers.TopKLogitsWarper(top_k)(None, hf)
    hf = warpers.TopPLogitsWarper(top_p)(None, hf)
    ours = reference.filtered_log_probs(scores / temperature, torch.full((16,), top_k),
                                        torch.full((16,), top_p, dtype=torch.float64))
    assert torch.equal(torch.isfinite(hf), torch.isfinite(ours))
    torch.testing.assert_close(ours.exp(), torch.softmax(hf, -1), rtol=1e-9, atol=1e-12)


def test_mixing_raw_logits_equals_mixing_log_softmax(generator):
    """METHODS.md decision 6: per-row normalisers cancel, so the filtered distributions are identical."""
    z = [torch.randn(8, 500, generator=generator) * 4 + 10, torch.randn(8, 500, generator=generator) * 2 - 7]
    w = torch.tensor([1.0, 0.7])
    raw = reference.mix_logits(z, w.expand(8, 2)).double()
    normalised = sum(w[k] * torch.log_softmax(z[k].double(), -1) for k in range(2))
    k, p = torch.full((8,), 30), torch.full((8,), 0.8, dtype=torch.float64)
    a = reference.filtered_log_probs(raw / 0.8, k, p)
    b = reference.filtered_log_probs(normalised / 0.8, k, p)
    assert torch.equal(torch.isfinite(a), torch.isfinite(b))
    torch.testing.assert_close(a.exp(), b.exp(), rtol=1e-5, atol=1e-7)


def test_a_row_draws_the_same_token_alone_or_in_any_batch(generator):
    vocab = 5000
    batch = [random_logits(48, vocab, BF16, generator), random_logits(48, vocab, F32, generator)]
    weights = torch.rand(48, 2, generator=generator)
    params = varied_row_params(48, vocab, generator)
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits(batch, weights, **params)
    for row in (0, 1, 2, 3, 4, 17, 47):
        alone = {name: value[row : row + 1] for name, value in params.items()}
        t, lp = fastdoctor.mixed_sampling_from_logits([z[row : row + 1] for z in batch], weights[row : row + 1],
                                                      **alone)
        assert t.item() == tokens[row].item()
        assert lp.item() == logprobs[row].item()
    shuffled = torch.randperm(48, generator=generator)
    t_shuffled, _ = fastdoctor.mixed_sampling_from_logits(
        [z[shuffled] for z in batch], weights[shuffled], **{n: v[shuffled] for n, v in params.items()})
    assert torch.equal(t_shuffled, tokens[shuffled])


def test_seed_and_step_key_the_draw(generator):
    z = [random_logits(1, 1000, F32, generator, scale=0.5).expand(64, 1000)]
    same = fastdoctor.mixed_sampling_from_logits(z, [1.0], seed=11, step=3)[0]
    assert len(set(same.tolist())) == 1  # identical rows, identical keys
    by_step = fastdoctor.mixed_sampling_from_logits(z, [1.0], seed=11, step=torch.arange(64))[0]
    by_seed = fastdoctor.mixed_sampling_from_logits(z, [1.0], seed=torch.arange(64), step=3)[0]
    assert len(set(by_step.tolist())) > 40 and len(set(by_seed.tolist())) > 40


def test_vocab_size_truncates_padded_vocabularies(generator):
    patient = random_logits(5, 1000, F32, generator)
    doctor = random_logits(5, 1024, BF16, generator)
    doctor[:, 1000:] = 1e4  # padding columns that must never be read
    params = varied_row_params(5, 1000, generator)
    padded = fastdoctor.mixed_sampling_from_logits([patient, doctor], [1.0, 0.5], vocab_size=1000, **params)
    trimmed = fastdoctor.mixed_sampling_from_logits([patient, doctor[:, :1000].contiguous()], [1.0, 0.5], **params)
    assert torch.equal(padded[0], trimmed[0]) and torch.equal(padded[1], trimmed[1])


def test_strided_rows_from_a_sequence_of_logits(generator):
    full = random_logits(4, 7 * 300, F32, generator).view(4, 7, 300)
    last = full[:, -1, :]  # what a model's forward gives: rows 7 * 300 apart
    assert not last.is_contiguous()
    params = varied_row_params(4, 300, generator)
    a = fastdoctor.mixed_sampling_from_logits([last], [1.0], **params)
    b = fastdoctor.mixed_sampling_from_logits([last.contiguous()], [1.0], **params)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    transposed = random_logits(300, 4, F32, generator).t()  # vocabulary not contiguous: copied, same answer
    c = fastdoctor.mixed_sampling_from_logits([transposed], [1.0], **params)
    d = fastdoctor.mixed_sampling_from_logits([transposed.contiguous()], [1.0], **params)
    assert torch.equal(c[0], d[0])


def test_masked_tokens_are_never_drawn_and_a_zero_weight_model_is_ignored(generator):
    patient = random_logits(1, 200, F32, generator, scale=0.1).expand(3000, 200).clone()
    patient[:, ::2] = float("-inf")
    doctor = torch.full((3000, 200), float("-inf"))  # a model whose every token is masked, at weight 0
    params = row_params(3000, seed=torch.arange(3000), top_p=0.99)
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits([patient, doctor], [1.0, 0.0], **params)
    assert (tokens % 2 == 1).all()
    assert torch.isfinite(logprobs).all()
    alone, _ = fastdoctor.mixed_sampling_from_logits([patient], [1.0], **params)
    assert torch.equal(tokens, alone)
