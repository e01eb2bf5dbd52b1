"""The training-time baselines on tiny models: TRL's DPOTrainer lowers the DPO loss, and a Rewarded Soup at
w = 1 / w = 0 is exactly the first / second DPO model."""
from __future__ import annotations

import math

import pytest
import torch

import fastdoctor
from fastdoctor import dpo
from fastdoctor.llmdoctor.data import PreferencePair

from conftest import tiny_model


PAIRS = [PreferencePair("My train was cancelled.", "Sorry, that is annoying.", "Trains are always late and awful."),
         PreferencePair("I burned the toast.", "Make another slice!", "Breakfast is ruined forever, sadly."),
         PreferencePair("It rained all day.", "Cosy day inside.", "Rain rain rain, grey and wet and cold.")]


@pytest.fixture(scope="module")
def tiny():
    _, tokenizer = fastdoctor.load_model("default")
    return tiny_model("llama", vocab=len(tokenizer), seed=0), tokenizer


@pytest.fixture(scope="module")
def two_dpo_models(tiny, tmp_path_factory):
    patient, tokenizer = tiny
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"dpo{seed}")
        settings = dpo.DPOSettings(steps=2, batch_size=3, lr=5e-3, warmup_steps=0, seed=seed, max_length=64)
        model = dpo.train_dpo(patient, tokenizer, PAIRS if seed == 0 else PAIRS[::-1], folder, settings)
        folders.append((folder, model))
    return folders


def test_dpo_training_lowers_the_dpo_loss_and_leaves_the_patient_alone(tiny, two_dpo_models):
    patient, tokenizer = tiny
    before = {k: v.clone() for k, v in patient.state_dict().items()}
    folder, model = two_dpo_models[0]
    assert (folder / "adapter" / "adapter_config.json").exists() and (folder / "dpo.json").exists()
    # At initialisation the policy is the reference: the loss is log 2 exactly.
    untrained = dpo.load_dpo(patient, folder, merged=False)
    for name, parameter in untrained.named_parameters():
        if "lora_B" in name:
            parameter.data.zero_()
    assert dpo.dpo_loss(untrained, tokenizer, PAIRS) == pytest.approx(math.log(2), abs=1e-6)
    assert dpo.dpo_loss(model, tokenizer, PAIRS) < math.log(2) - 1e-3
    assert all(torch.equal(before[k], v) for k, v in patient.state_dict().items())


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("Hello there, how are you?")])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_soup_at_the_ends_equals_each_dpo_model(tiny, two_dpo_models):
    patient, tokenizer = tiny
    (first, _), (second, _) = two_dpo_models
    a, b = _logits(dpo.load_dpo(patient, first), tokenizer), _logits(dpo.load_dpo(patient, second), tokenizer)
    assert not torch.allclose(a, b, atol=1e-4)
    torch.testing.assert_close(_logits(dpo.soup(patient, first, second, 1.0), tokenizer), a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(dpo.soup(patient, first, second, 0.0), tokenizer), b, atol=1e-5, rtol=1e-5)
    middle = _logits(dpo.soup(patient, first, second, 0.5), tokenizer)
    assert not torch.allclose(middle, a, atol=1e-5) and not torch.allclose(middle, b, atol=1e-5)
    with pytest.raises(ValueError, match=r"soup weight: expected a number in \[0, 1\]"):
        dpo.soup(patient, first, second, 1.5)


def test_a_missing_adapter_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no DPO adapter"):
        dpo.load_dpo(tiny[0], tmp_path)
