"""No deprecation warning in a user's run: generate, reward acquisition and a LoRA training step on tiny
models, with every FutureWarning and DeprecationWarning (transformers, peft, torch) turned into an error."""
from __future__ import annotations

import functools
import warnings

import pytest
import torch

import fastdoctor
from conftest import left_padded_prompts, synthetic_examples, tiny_model


@pytest.fixture
def strict():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_generate(family, strict):
    patient, doctor = tiny_model(family, seed=0), tiny_model(family, seed=5)
    ids, mask = left_padded_prompts()
    out = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], betas=[0.5], seed=1,
                              max_new_tokens=4)
    hf = patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(doctors=[doctor]),
                          do_sample=False, max_new_tokens=4)
    assert out.shape == hf.shape == (3, ids.shape[1] + 4)


def test_reward_acquisition(tmp_path):
    from fastdoctor.llmdoctor import rewards
    from fastdoctor.llmdoctor.data import PreferencePair

    _, tokenizer = fastdoctor.load_model("default")  # loaded outside the strict block: conversion is not a user's run
    model = tiny_model("llama", vocab=len(tokenizer), seed=0)
    pairs = [PreferencePair("It rained.", "Cosy tea time!", "Rain is bad.")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        summary = rewards.acquire_rewards(model, tokenizer, pairs, tmp_path / "r.safetensors")
    assert summary["pairs"] == 1


def test_a_lora_tfpo_training_step(tmp_path, strict):
    from fastdoctor.llmdoctor import doctor as doctor_lib, tfpo
    from fastdoctor.lora import attach_lora
    from fastdoctor.train import TrainConfig, train

    doc = doctor_lib.Doctor(attach_lora(tiny_model("llama", seed=0), rank=4), value_ramp=True)
    examples = synthetic_examples(4)
    tfpo.fit_value_ramp(doc, examples)
    examples = tfpo.with_reference_log_probs(doc.lm, examples)  # the default flow's reference: adapters off
    loss = functools.partial(tfpo.tfpo_batch_loss, doc, settings=tfpo.TFPOSettings())
    history = train(doc, examples, loss, TrainConfig(steps=1, batch_size=2, warmup_steps=0), tmp_path)
    doctor_lib.save_doctor(doc, tmp_path / "doctor")
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_an_adapter_doctor_saved_loaded_exported_and_decoded(tmp_path, family, strict):
    import copy

    from fastdoctor.llmdoctor import doctor as doctor_lib
    from fastdoctor.lora import attach_lora

    patient = tiny_model(family, seed=0)
    doctor_lib.save_doctor(doctor_lib.Doctor(attach_lora(copy.deepcopy(patient), rank=4)), tmp_path / "d")
    doctor = doctor_lib.load_doctor(tmp_path / "d", patient=patient)
    ids, mask = left_padded_prompts()
    out = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor.lm], seed=1, max_new_tokens=4)
    doctor_lib.export_merged(tmp_path / "d", patient, tmp_path / "merged")
    assert out.shape == (3, ids.shape[1] + 4)
