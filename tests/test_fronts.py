"""Fronts: the shared weight convention, the hypervolume against hand-computed fronts, and a batch that mixes
weight vectors giving every row the tokens it gets alone."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from fastdoctor import fronts, quality

from conftest import tiny_model


def test_hypervolume_of_hand_computed_fronts():
    staircase = [(1, 3), (2, 2), (3, 1)]
    assert fronts.hypervolume(staircase, (0, 0)) == pytest.approx(3 * 1 + 2 * 1 + 1 * 1)
    assert fronts.hypervolume([(2, 3)], (1, 1)) == pytest.approx(2.0)
    assert fronts.hypervolume([(2.5, 0.5), (0.5, 2.5)], (0, 0)) == pytest.approx(2.5 * 0.5 + 0.5 * 2.0)


def test_dominated_points_ties_and_points_behind_the_reference_add_nothing():
    staircase = [(1, 3), (2, 2), (3, 1)]
    area = fronts.hypervolume(staircase, (0, 0))
    assert fronts.hypervolume(staircase + [(1, 1), (2, 1.5), (0.5, 0.5)], (0, 0)) == pytest.approx(area)  # dominated
    assert fronts.hypervolume(staircase + [(2, 2), (3, 1)], (0, 0)) == pytest.approx(area)  # duplicates
    assert fronts.hypervolume(staircase, (1.5, 0)) == pytest.approx(1.5 * 1 + 0.5 * 1)  # (1, 3) is behind it
    assert fronts.hypervolume([(0, 5)], (0, 0)) == 0.0  # on the reference's edge: no area
    assert fronts.pareto_front(staircase + [(1, 1), (2, 2)]) == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]
    assert fronts.dominates((2, 2), (2, 1)) and not fronts.dominates((2, 2), (2, 2))


def test_the_weight_convention_normalises_to_a_geometric_mean():
    alpha, betas = fronts.normalised_weights([1.0, 2.0])
    assert alpha == pytest.approx(0.25) and betas == pytest.approx([0.25, 0.5])
    assert fronts.normalised_weights([]) == (1.0, [])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance weights: expected finite numbers >= 0"):
            fronts.normalised_weights([bad])
    grid = fronts.weight_grid(11)
    assert len(grid) == 11 and grid[0] == (0.0, 1.0) and grid[-1] == (1.0, 0.0) and grid[3] == (0.3, 0.7)
    alpha, betas = fronts.row_weights([(1.0, 0.0), (0.0, 3.0)], rows_per_vector=2)
    assert alpha.tolist() == pytest.approx([0.5, 0.5, 0.25, 0.25])
    assert betas[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0]) and betas[1].tolist() == pytest.approx([0, 0, 0.75, 0.75])
    with pytest.raises(ValueError, match="every vector needs 2 weights"):
        fronts.row_weights([(1.0, 0.0), (1.0,)], 1)


def test_the_advantage_convention_adds_each_doctors_advantage_over_the_patient():
    """alpha log p + sum beta_i log q_i = log p + sum g_i (log q_i - log p): g = 0 is the patient, g = 1 the
    doctor itself, and g may exceed 1 (alpha < 0)."""
    assert fronts.advantage_weights([1.0, 2.0]) == (-2.0, [1.0, 2.0])
    assert fronts.guidance_weights([0.0], "advantage") == (1.0, [0.0])
    assert fronts.guidance_weights([1.0], "advantage") == (0.0, [1.0])
    assert fronts.guidance_weights([3.0], "normalised") == fronts.normalised_weights([3.0])
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance weights: expected finite numbers >= 0"):
            fronts.advantage_weights([bad])
    with pytest.raises(ValueError, match="convention: expected one of"):
        fronts.guidance_weights([1.0], "geometric")
    alpha, betas = fronts.row_weights([(0.5,), (2.0,)], rows_per_vector=2, convention="advantage")
    assert alpha.tolist() == [0.5, 0.5, -1.0, -1.0] and betas[0].tolist() == [0.5, 0.5, 2.0, 2.0]
    g = torch.Generator().manual_seed(0)
    log_p, log_q = torch.log_softmax(torch.randn(5, generator=g), 0), torch.log_softmax(torch.randn(5, generator=g), 0)
    a, (b,) = fronts.advantage_weights([2.5])
    torch.testing.assert_close(a * log_p + b * log_q, log_p + 2.5 * (log_q - log_p))


def test_advantage_strength_one_samples_the_doctor_itself(tiny_models):
    patient, doctors, tokenizer = tiny_models
    prompts = ["My train was cancelled.", "It rained all day."]
    sampling = dict(samples=2, seed=3, max_new_tokens=6, temperature=1.0, top_p=0.9)
    alpha, betas = fronts.advantage_weights([1.0])
    steered = quality.sample_completions(patient, tokenizer, prompts, doctors=doctors[:1], alpha=alpha, betas=betas,
                                         **sampling)
    alone = quality.sample_completions(doctors[0], tokenizer, prompts, **sampling)
    assert steered.tokens == alone.tokens


@pytest.fixture(scope="module")
def tiny_models():
    _, tokenizer = fastdoctor.load_model("default")
    vocab = len(tokenizer)
    return tiny_model("llama", vocab=vocab, seed=0), [tiny_model("llama", vocab=vocab, seed=s) for s in (1, 2)], tokenizer


def test_one_batch_of_mixed_weight_vectors_equals_each_vector_alone(tiny_models):
    patient, doctors, tokenizer = tiny_models
    prompts = ["My train was cancelled.", "I burned the toast.", "It rained all day."]
    vectors = [fronts.normalised_weights(w) for w in [(0.0, 1.0), (0.5, 0.5), (4.0, 0.0)]]
    sampling = dict(samples=2, seed=7, max_new_tokens=6, temperature=1.0, top_p=0.9)
    together = quality.sample_weight_vectors(patient, tokenizer, prompts, vectors, doctors=doctors, batch_size=5,
                                             **sampling)  # chunks of 5 rows straddle the vectors
    assert len(together) == 3
    for (alpha, betas), mixed in zip(vectors, together):
        alone = quality.sample_completions(patient, tokenizer, prompts, doctors=doctors, alpha=alpha, betas=betas,
                                           **sampling)
        assert mixed.tokens == alone.tokens and mixed.texts == alone.texts
    assert together[0].tokens != together[2].tokens  # the weights reach the rows


def test_sample_weight_vectors_checks_its_weights(tiny_models):
    patient, doctors, tokenizer = tiny_models
    with pytest.raises(ValueError, match=r"weights\[0\]: 1 betas for 2 doctors"):
        quality.sample_weight_vectors(patient, tokenizer, ["Hi."], [(0.5, [0.5])], doctors=doctors, samples=1,
                                      max_new_tokens=2)
    with pytest.raises(ValueError, match="a router replaces the weights"):
        quality.sample_weight_vectors(patient, tokenizer, ["Hi."], [(1.0, []), (0.5, [])], samples=1,
                                      max_new_tokens=2, router=object())
    assert torch.is_tensor(fronts.row_weights([(1.0,)], 1)[0])
