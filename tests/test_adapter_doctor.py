"""AdapterDoctor and its loader (fastdoctor.adapters): a LoRA doctor of the patient owns its tensors, its file is
checked whole against the patient before any tensor is used, and nothing done with the doctor or its file
changes the patient's weights."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastdoctor
from fastdoctor import adapters
from conftest import left_padded_prompts, random_lora, tiny_model

WEIGHTS = "adapter_model.safetensors"


def saved_adapter(patient, folder, *, seed: int = 1, rank: int = 4):
    """A rank-`rank` LoRA of `patient` with random A and B, saved as fastdoctor saves one."""
    folder.mkdir(parents=True, exist_ok=True)
    adapters.save_adapter(random_lora(patient, seed=seed, rank=rank), folder)
    return folder


def snapshot_of(patient) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in patient.state_dict().items()}


def assert_bitwise_unchanged(patient, before: dict[str, torch.Tensor]) -> None:
    after = patient.state_dict()
    assert sorted(after) == sorted(before)
    changed = [name for name, t in after.items() if not torch.equal(t, before[name])]
    assert not changed, f"the patient's {changed[:3]} changed"


def rewrite_weights(folder, change) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    change(tensors)
    save_file(tensors, str(folder / WEIGHTS))


def greedy(patient, doctors=()):
    ids, mask = left_padded_prompts()
    return fastdoctor.generate(patient, ids, attention_mask=mask, doctors=list(doctors), max_new_tokens=6,
                               temperature=0.0)


def q_key(part: str = "A", layer: int = 0) -> str:
    return f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{part}.weight"


def test_an_extra_base_weight_in_the_file_is_refused_and_the_patient_is_untouched(tmp_path):
    patient = tiny_model("llama", seed=0)
    folder = saved_adapter(patient, tmp_path / "a")
    rewrite_weights(folder, lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(211, 64)}))
    before, tokens = snapshot_of(patient), greedy(patient)
    with pytest.raises(ValueError, match=rf"{WEIGHTS}: key 'base_model.model.lm_head.weight' is not a LoRA"):
        adapters.load_adapter(folder, patient)
    assert_bitwise_unchanged(patient, before)
    assert torch.equal(greedy(patient), tokens)


def test_a_lora_tensor_swapped_for_a_base_weight_is_refused(tmp_path):
    """Same tensor count as a valid file: counting the tensors is no check."""
    patient = tiny_model("llama", seed=0)
    folder = saved_adapter(patient, tmp_path / "a")
    base_key = "base_model.model.model.layers.0.self_attn.q_proj.weight"
    rewrite_weights(folder, lambda t: t.update({base_key: torch.zeros(64, 64)}) or t.pop(q_key("B")))
    before = snapshot_of(patient)
    with pytest.raises(ValueError, match=f"key '{base_key}' is not a LoRA"):
        fastdoctor.load_doctor(folder, patient)
    assert_bitwise_unchanged(patient, before)


def test_a_lora_tensor_renamed_to_a_module_that_does_not_exist_is_refused(tmp_path):
    patient = tiny_model("llama", seed=0)  # two layers: 0 and 1
    folder = saved_adapter(patient, tmp_path / "a")
    rewrite_weights(folder, lambda t: t.update({q_key("A", 7): t.pop(q_key("A"))}))
    with pytest.raises(ValueError, match=r"names 'model.layers.7.self_attn.q_proj', which is not a projection"):
        adapters.load_adapter(folder, patient)


def _peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_rank_in_the_config_is_refused_before_any_allocation(tmp_path):
    """r = 65536 in a 1 KB config: the file's tensor shapes are checked against it from the header, so the
    refusal costs no memory (peft allocated 512 MB for it on this 64-wide model)."""
    patient = tiny_model("llama", seed=0)
    folder = saved_adapter(patient, tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 65536, "lora_alpha": 65536}))
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM, the peak resident size
        handle.write("5")
    start = _peak_rss_mb()
    with pytest.raises(ValueError, match=r"has shape \[4, \d+\]; .* with r = 65536 needs \[65536, \d+\]"):
        adapters.load_adapter(folder, patient)
    assert _peak_rss_mb() - start < 64


@pytest.mark.parametrize("damage,match", [
    (lambda t: t.update({q_key("A"): t[q_key("A")][:, :32].contiguous()}), r"has shape \[4, 32\]"),
    (lambda t: t.pop(q_key("B")), r"q_proj has lora_A but no lora_B"),
    (lambda t: t.update({q_key("A"): t[q_key("A")].to(torch.int32)}), r"has dtype I32"),
    (lambda t: t[q_key("B")].view(-1).__setitem__(3, float("nan")), r"lora_B.weight' holds NaN|lora_B.weight holds NaN"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(64)}),
     r"lora_magnitude_vector' is not a LoRA"),
])
def test_every_other_damage_names_the_file_and_the_key(tmp_path, damage, match):
    patient = tiny_model("llama", seed=0)
    folder = saved_adapter(patient, tmp_path / "a")
    rewrite_weights(folder, damage)
    before = snapshot_of(patient)
    with pytest.raises(ValueError, match=match) as error:
        adapters.load_adapter(folder, patient)
    assert str(folder / WEIGHTS) in str(error.value)
    assert_bitwise_unchanged(patient, before)


@pytest.mark.parametrize("change,match", [
    ({"target_modules": ["v_proj"]}, "which adapter_config.json does not target"),
    ({"modules_to_save": ["lm_head"]}, "'modules_to_save' .* is not supported"),
    ({"lora_alpha": float("nan")}, "'lora_alpha' must be a finite"),
    ({"r": 0}, "'r' must be a positive integer"),
    ({"use_dora": True}, "DoRA adapters are not supported"),
])
def test_a_config_it_cannot_run_is_refused(tmp_path, change, match):
    patient = tiny_model("llama", seed=0)
    folder = saved_adapter(patient, tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=match):
        adapters.load_adapter(folder, patient)


def test_the_doctor_is_frozen_and_owns_its_tensors(tmp_path):
    patient = tiny_model("llama", seed=0)
    doctor = adapters.load_adapter(saved_adapter(patient, tmp_path / "a"), patient)
    storages = {t.untyped_storage().data_ptr() for t in patient.state_dict().values()}
    for projection in doctor.projections.values():
        for t in (projection.a, projection.b):
            assert t.untyped_storage().data_ptr() not in storages
    with pytest.raises(dataclasses.FrozenInstanceError):
        doctor.base_fingerprint = "x"
    with pytest.raises(TypeError):
        doctor.projections["model.layers.0.self_attn.q_proj"] = None
    assert not hasattr(doctor, "merge_and_unload") and not hasattr(doctor, "merge_adapter")


def test_peft_and_merging_work_on_copies_and_never_reach_the_patient(tmp_path):
    patient = tiny_model("llama", seed=0)
    doctor = fastdoctor.load_doctor(saved_adapter(patient, tmp_path / "a"), patient)
    before, patient_tokens = snapshot_of(patient), greedy(patient)
    doctor.peft_model(patient).merge_adapter()
    unloaded = doctor.peft_model(patient).merge_and_unload()
    merged = doctor.merged_model(patient)
    assert_bitwise_unchanged(patient, before)
    assert torch.equal(greedy(patient), patient_tokens)
    ids, mask = left_padded_prompts()
    with torch.no_grad():
        for model in (unloaded, merged):  # the doctor's own logits, three ways
            torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                       unloaded(input_ids=ids, attention_mask=mask).logits, rtol=1e-4, atol=1e-4)
    steered = greedy(patient, [doctor])
    assert torch.equal(steered, greedy(patient, [merged]))  # betas 1: the stacked doctor decodes as its merge


def test_a_reloaded_patient_takes_the_doctor_into_its_stacked_forward(tmp_path):
    """Equal weights in new tensors (saved and loaded again): the fingerprint matches, the plan stacks it."""
    from fastdoctor import shared_base

    patient = tiny_model("llama", seed=0)
    doctor = fastdoctor.load_doctor(saved_adapter(patient, tmp_path / "a"), patient)
    patient.save_pretrained(tmp_path / "patient")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "patient").eval()
    assert reloaded.model.embed_tokens.weight.data_ptr() != patient.model.embed_tokens.weight.data_ptr()
    plan = shared_base.plan(reloaded, [doctor])
    assert plan.stacked == (0,) and "doctors[0]: in the patient's stacked forward" in plan.describe()
    assert torch.equal(greedy(reloaded, [doctor]), greedy(patient, [doctor]))
    with pytest.raises(ValueError, match=r"doctors\[0\]: .* adapts another base model"):
        greedy(tiny_model("llama", seed=9), [doctor])


@pytest.mark.parametrize("spec,match", [
    ("bundled:nothing", "no bundled doctor 'nothing' \\(bundled: concision, positivity\\)"),
    ("bundled:../doctors/positivity", "no bundled doctor '../doctors/positivity'"),
    ("bundled:/etc", "no bundled doctor '/etc'"),
    ("/no/such/folder", "/no/such/folder: no such doctor folder"),
])
def test_the_library_loader_raises_value_errors_that_name_the_spec(spec, match):
    with pytest.raises(ValueError, match=match):  # a library call never exits the process
        fastdoctor.load_doctor(spec, tiny_model("llama", seed=0))
