"""Quality metrics (distinct-n, win rate, standard error, best-of-N, the patient's perplexity, VADER) and the
quickstart's cache and report."""
from __future__ import annotations

import json
import math

import pytest
import torch

import fastdoctor
from fastdoctor import quality
from fastdoctor.llmdoctor import quickstart
from conftest import tiny_model


def test_distinct_n_counts_unique_ngrams_over_the_corpus():
    assert quality.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # (1,2) repeats
    assert quality.distinct_n([[1, 2, 3, 1, 2, 3]], 3) == pytest.approx(3 / 4)
    assert quality.distinct_n([[1]], 2) == 0.0


def test_win_rate_counts_ties_as_half_and_checks_lengths():
    assert quality.win_rate([0.5, 0.1, 0.3], [0.2, 0.4, 0.3]) == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError, match="baseline"):
        quality.win_rate([1.0], [1.0, 2.0])


def test_mean_and_standard_error():
    mean, error = quality.mean_and_standard_error([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and error == pytest.approx(math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4))


def test_best_of_keeps_the_top_sample_per_prompt():
    completions = quality.Completions([["a", "b"], ["c", "d"]], [[[1], [2, 3]], [[4], [5]]], [[0], [0]], 2.0, 5)
    best, scores = quality.best_of(completions, [0.1, 0.9, 0.7, -0.2])
    assert best.texts == [["b"], ["c"]] and scores == [0.9, 0.7] and best.new_tokens == 3


def test_vader_prefers_positive_text():
    good, bad = quality.vader_scores(["What a wonderful, happy day!", "This is awful and I hate it."])
    assert good > 0.5 and bad < -0.5


@pytest.fixture(scope="module")
def tiny_patient():
    _, tokenizer = fastdoctor.load_model("default")
    return tiny_model("llama", vocab=len(tokenizer), seed=0), tokenizer


@torch.no_grad()
def test_sampling_is_per_seed_and_perplexity_matches_a_direct_forward(tiny_patient):
    model, tokenizer = tiny_patient
    prompts = ["Hello there", "My train was late"]
    a = quality.sample_completions(model, tokenizer, prompts, samples=2, max_new_tokens=5, batch_size=3)
    b = quality.sample_completions(model, tokenizer, prompts, samples=2, max_new_tokens=5, batch_size=64)
    assert a.tokens == b.tokens  # a row's tokens do not depend on its batch-mates
    assert a.tokens[0][0] != a.tokens[0][1]  # different seeds per sample
    nll = count = 0
    for i, per in enumerate(a.tokens):
        for t in per:
            if not t:
                continue
            ids = torch.tensor(a.prompt_ids[i] + t).unsqueeze(0)
            logp = torch.log_softmax(model(ids).logits[0, len(a.prompt_ids[i]) - 1: -1], -1)
            nll -= float(logp.gather(-1, torch.tensor(t).unsqueeze(-1)).sum())
            count += len(t)
    assert quality.patient_perplexity(model, a) == pytest.approx(math.exp(nll / count), rel=1e-4)
    row = quality.summarise("x", a, model, baseline_scores=[0.0] * 4)
    assert row["samples"] == 4 and 0 <= row["win_rate"] <= 1 and row["tokens_per_s"] > 0


@torch.no_grad()
def test_patient_samples_for_distillation(tiny_patient):
    """distill.patient_samples: `samples` sequences per prompt under the chat template, each the sampled
    tokens plus EOS exactly when the patient stopped before the token limit."""
    from fastdoctor.llmdoctor import distill

    model, tokenizer = tiny_patient
    prompts = ["Hello there", "My train was late"]
    done = quality.sample_completions(model, tokenizer, prompts, samples=3, seed=1000, max_new_tokens=6, top_p=0.95)
    sequences = distill.patient_samples(model, tokenizer, prompts, samples=3, max_new_tokens=6)
    expected = [(i, t) for i, per in enumerate(done.tokens) for t in per]  # an immediate EOS is kept as [EOS]
    assert len(sequences) == len(expected) == 6
    for (prompt, response), (i, tokens) in zip(sequences, expected):
        assert prompt.tolist() == done.prompt_ids[i]
        stopped = len(tokens) < 6
        assert response.tolist() == tokens + ([tokenizer.eos_token_id] if stopped else [])


def test_quickstart_prints_cached_results_without_recomputing(tmp_path, capsys):
    settings = quickstart.QuickstartSettings()
    root = tmp_path / "quickstart" / settings.resolved().digest()  # the cache key names the dtype "auto" chose
    root.mkdir(parents=True)
    row = {"method": "patient alone", "reward": 0.25, "reward_se": 0.05, "distinct_2": 0.5, "distinct_3": 0.7,
           "perplexity": 3.0, "tokens_per_s": 10.0}
    results = {"settings": {}, "rows": [row, {**row, "method": "doctor", "win_rate": 0.6}],
               "examples": [{"prompt": "p", "patient": "x", "doctor": "y"}], "seconds": 1.0}
    (root / "results.json").write_text(json.dumps(results))
    assert quickstart.run(settings, cache=tmp_path) == results
    out = capsys.readouterr().out
    assert "| doctor | 0.250 ± 0.050 | 0.60 |" in out and "prompt:  p" in out
    assert settings.digest() != quickstart.QuickstartSettings(strength=2.0).digest()
    default = quickstart.QuickstartSettings()  # the advantage convention at g = 1: the doctor itself
    assert (default.alpha, default.beta) == (0.0, 1.0)
    assert (quickstart.QuickstartSettings(strength=2.0).alpha, quickstart.QuickstartSettings(strength=2.0).beta) == (-1.0, 2.0)
    normalised = quickstart.QuickstartSettings(strength=4.0, convention="normalised")
    assert (normalised.alpha, normalised.beta) == (0.2, 0.8)
    assert quickstart.QuickstartSettings().digest() != normalised.digest()
    assert settings.resolved().dtype in ("float32", "bfloat16")
    assert quickstart.QuickstartSettings(dtype="float32").digest() != quickstart.QuickstartSettings(dtype="bfloat16").digest()
