"""shared_base.plan and the pool of stacked copies: which doctors join the patient's forward is decided by the
base weights' fingerprint, the decision is explained, a changed adapter is never decoded stale, the pool is
bounded, and eager and compiled calls on the same doctor run side by side."""
from __future__ import annotations

import copy
import gc
import itertools
import threading
import warnings
import weakref

import pytest
import torch
from torch import nn

import fastdoctor
from fastdoctor import adapters, shared_base
from conftest import Opaque, left_padded_prompts, random_lora, tiny_model


def peft_doctor(patient, *, seed: int, rank: int = 4, base=None):
    """A peft LoRA doctor with random A and B over `base` (default: a weight-sharing copy of `patient`)."""
    return random_lora(patient, seed=seed, rank=rank, base=base)


def greedy(patient, doctors, **kwargs):
    ids, mask = left_padded_prompts()
    return fastdoctor.generate(patient, ids, attention_mask=mask, doctors=list(doctors), max_new_tokens=6,
                               temperature=0.0, **kwargs)


def test_a_peft_doctor_over_an_equal_copy_is_stacked_and_a_plain_model_is_not():
    patient = tiny_model("llama", seed=0)
    over_copy = peft_doctor(patient, seed=1, base=copy.deepcopy(patient))  # equal weights, other tensors
    other_base = peft_doctor(patient, seed=1, base=tiny_model("llama", seed=4))
    plan = shared_base.plan(patient, [over_copy, tiny_model("llama", seed=3), other_base])
    assert plan.stacked == (0,) and plan.separate == (1, 2)
    assert "doctors[1]: a separate model: not a LoRA model of the patient" in plan.describe()
    assert "doctors[2]: a separate model: its base weights are another model's" in plan.describe()
    assert torch.equal(greedy(patient, [over_copy]), greedy(patient, [Opaque(over_copy)]))


def test_a_doctor_of_the_base_that_cannot_be_stacked_warns_once_and_says_why():
    patient = tiny_model("llama", seed=0)
    doctor = peft_doctor(patient, seed=1, base=copy.deepcopy(patient).to(torch.bfloat16))
    with pytest.warns(RuntimeWarning, match=r"doctors\[0\] .* runs as a separate model \(its base weights are "
                                            r"torch.bfloat16, the patient's torch.float32\)"):
        plan = shared_base.plan(patient, [doctor])
    assert plan.separate == (0,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared_base.plan(patient, [doctor])  # once per doctor


def test_replaced_lora_weights_are_never_decoded_stale():
    patient = tiny_model("llama", seed=0)
    doctor = peft_doctor(patient, seed=1)
    first = greedy(patient, [doctor])
    layer = doctor.base_model.model.model.layers[0].self_attn.q_proj
    torch.manual_seed(7)
    layer.lora_B["default"].weight = nn.Parameter(torch.randn_like(layer.lora_B["default"].weight) * 3)
    for module in doctor.modules():  # every B replaced, not edited in place
        if hasattr(module, "lora_B") and "default" in module.lora_B and module is not layer:
            module.lora_B["default"].weight = nn.Parameter(torch.randn_like(module.lora_B["default"].weight))
    replaced = greedy(patient, [doctor])
    assert torch.equal(replaced, greedy(patient, [Opaque(doctor)]))
    assert not torch.equal(replaced, first)


def test_switching_the_active_adapter_is_never_decoded_stale():
    patient = tiny_model("llama", seed=0)
    doctor = peft_doctor(patient, seed=1)
    doctor.add_adapter("b", doctor.peft_config["default"])
    with torch.no_grad():
        for name, p in doctor.named_parameters():
            if ".b." in name and "lora_" in name:
                p.normal_(0.0, 0.3)
    as_default = greedy(patient, [doctor])
    doctor.set_adapter("b")
    switched = greedy(patient, [doctor])
    assert torch.equal(switched, greedy(patient, [Opaque(doctor)])) and not torch.equal(switched, as_default)


def test_the_pool_of_stacked_copies_is_bounded():
    """120 calls over ordered subsets of four doctors of different ranks (64 layouts)."""
    patient = tiny_model("llama", seed=0)
    doctors = [peft_doctor(patient, seed=s, rank=s + 1) for s in range(4)]
    orders = [p for k in range(1, 5) for c in itertools.combinations(range(4), k) for p in itertools.permutations(c)]
    ids, mask = left_padded_prompts(batch=1, length=3)
    built = []
    for index in range(120):
        order = orders[index % len(orders)]
        fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctors[i] for i in order],
                            max_new_tokens=1, temperature=0.0)
        assert shared_base.pooled(patient) <= shared_base.MAX_IDLE
        built += [weakref.ref(entry.built.model) for entry in shared_base._POOL[patient]]
    gc.collect()
    assert len({id(r()) for r in built if r() is not None}) <= shared_base.MAX_IDLE  # evicted copies are freed


def test_a_copy_built_while_decoding_serves_teacher_forced_scoring_too():
    """generate builds stacked copies in inference mode; scoring (no_grad) borrows the same one and refills it."""
    from fastdoctor.sequences import pack_sequences, run_lm

    patient = tiny_model("llama", seed=0)
    doctor, _ = adapters.snapshot(peft_doctor(patient, seed=1))
    doctor = doctor.to()
    first = greedy(patient, [doctor])
    batch = pack_sequences([torch.tensor([5, 6, 7])], [torch.tensor([8, 9])])
    with torch.no_grad():
        logits = shared_base.teacher_forced_logits(patient, [doctor], batch)
        torch.testing.assert_close(logits[0], run_lm(patient, batch).logits)
        torch.testing.assert_close(logits[1], run_lm(doctor.merged_model(patient), batch).logits, rtol=1e-4,
                                   atol=1e-4)
    assert torch.equal(greedy(patient, [doctor]), first)


def test_a_patient_cast_in_place_gets_a_fresh_stacked_copy():
    patient = tiny_model("llama", seed=0)
    doctor = peft_doctor(patient, seed=1, base=copy.deepcopy(patient))
    greedy(patient, [doctor])
    patient.to(torch.float64).to(torch.float32)  # new tensors, equal values
    assert torch.equal(greedy(patient, [doctor]), greedy(patient, [Opaque(doctor)]))


MODES = (False, True, True)  # eager beside compiled, and two compiled calls at once


def test_eager_and_compiled_calls_on_one_doctor_run_side_by_side(tmp_path):
    patient = tiny_model("qwen2", seed=0)
    doctor, _ = adapters.snapshot(peft_doctor(patient, seed=1))
    reference = copy.deepcopy(patient)  # its own stacked copies: the threads below compile theirs concurrently
    serial = {mode: greedy(reference, [doctor], compile=mode) for mode in (False, True)}
    assert torch.equal(serial[False], serial[True])
    errors, done = [], []

    def worker(mode):
        try:
            for _ in range(3):
                assert torch.equal(greedy(patient, [doctor], compile=mode), serial[mode])
            done.append(mode)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(mode,)) for mode in MODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(done) == sorted(MODES)


def test_teacher_forced_scoring_takes_a_loaded_adapter_doctor():
    """distill.agreement (and every scorer on shared_base.teacher_forced_logits) runs an AdapterDoctor inside the
    patient's forward, with the numbers of its merged model."""
    from fastdoctor.llmdoctor.distill import agreement

    patient = tiny_model("llama", seed=0)
    doctor, _ = adapters.snapshot(peft_doctor(patient, seed=1))
    doctor = doctor.to()
    sequences = [(torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11])), (torch.tensor([12, 13]), torch.tensor([14]))]
    stacked, merged = agreement(patient, doctor, sequences), agreement(patient, doctor.merged_model(patient), sequences)
    assert stacked["tokens"] == merged["tokens"] == 5
    assert stacked["perplexity"] == pytest.approx(merged["perplexity"], rel=1e-4)
    assert stacked["greedy_agreement"] == merged["greedy_agreement"]
