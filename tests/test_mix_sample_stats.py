"""Sampling is exact: many seeded draws of the kernel follow the filtered, renormalised distribution
(chi-square goodness of fit and a total-variation bound), and never leave its support."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from conftest import DRAWS, assert_follows, exact_distribution


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.7, 7, 1.0), (1.3, 0, 0.8), (1.0, 20, 0.9), (0.5, 0, 0.95), (2.0, 3, 0.5)])
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16, torch.float16)])
def test_draws_follow_the_exact_filtered_distribution(temperature, top_k, top_p, dtypes):
    g = torch.Generator().manual_seed(99)
    vocab = 111
    logits = [(torch.randn(1, vocab, generator=g) * 1.5).to(dt) for dt in dtypes]
    weights = torch.tensor([[1.0, 0.6][: len(dtypes)]])
    probs = exact_distribution(logits, weights, temperature, top_k, top_p)
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits(
        [z.expand(DRAWS, vocab) for z in logits], weights.expand(DRAWS, -1), temperature=temperature,
        top_k=top_k, top_p=top_p, seed=torch.arange(DRAWS), step=1)
    assert_follows(tokens, probs)
    torch.testing.assert_close(logprobs.double(), probs[tokens].log(), rtol=1e-4, atol=1e-5)


def test_successive_steps_of_one_seed_follow_the_distribution():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(1, 50, generator=g)
    probs = exact_distribution([z], torch.ones(1, 1), 1.0, 0, 0.9)
    tokens, _ = fastdoctor.mixed_sampling_from_logits([z.expand(DRAWS, 50)], [1.0], top_p=0.9, seed=2024,
                                                      step=torch.arange(DRAWS))
    assert_follows(tokens, probs)


def test_a_wrong_distribution_is_rejected():
    """The check itself has power: draws from the unfiltered distribution fail it for top-p 0.5."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 111, generator=g) * 1.5
    filtered = exact_distribution([z], torch.ones(1, 1), 1.0, 0, 0.5)
    tokens, _ = fastdoctor.mixed_sampling_from_logits([z.expand(DRAWS, 111)], [1.0], seed=torch.arange(DRAWS))
    with pytest.raises(AssertionError):
        assert_follows(tokens, filtered)
    tempered = exact_distribution([z], torch.ones(1, 1), 1.1, 0, 1.0)
    with pytest.raises(AssertionError):
        assert_follows(tokens, tempered)
