"""fastdoctor.generate: equality with HF generate, mixing identities, seeds, EOS, streaming, bad input."""
from __future__ import annotations

import copy

import pytest
import torch

import fastdoctor
from conftest import VOCAB, RecordingStreamer, left_padded_prompts, tiny_model

FAMILIES = ["llama", "qwen2", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_patient_alone_matches_hf_generate(family):
    model = tiny_model(family)
    ids, mask = left_padded_prompts()
    expected = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=0,
                              eos_token_id=None)
    ours = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=20)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_stops_a_row_and_pads_it_like_hf(family):
    model = tiny_model(family)
    ids, mask = left_padded_prompts()
    free = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=0,
                          eos_token_id=None)
    eos = int(free[1, ids.shape[1] + 4])  # row 1 emits this at its fifth new token
    expected = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=0,
                              eos_token_id=eos)
    ours = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=20,
                               eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, expected)
    new = ours[1, ids.shape[1]:]
    stop = int((new == eos).nonzero()[0])
    assert (new[stop + 1:] == 0).all()


def test_every_row_finishing_ends_generation_early():
    model = tiny_model("llama")
    ids, mask = left_padded_prompts(batch=1)
    free = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=10)
    eos = int(free[0, ids.shape[1] + 2])
    out = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=10, eos_token_id=eos,
                              eos_check_interval=4)
    assert out.shape[1] == ids.shape[1] + 3 and int(out[0, -1]) == eos


@pytest.mark.parametrize("family", FAMILIES)
def test_a_doctor_at_beta_zero_changes_nothing(family):
    patient, doctor = tiny_model(family, seed=0), tiny_model(family, seed=1)
    ids, mask = left_padded_prompts()
    kwargs = dict(attention_mask=mask, max_new_tokens=16, top_p=0.9, seed=[5, 6, 7])
    alone = fastdoctor.generate(patient, ids, **kwargs)
    guided = fastdoctor.generate(patient, ids, doctors=[doctor], alpha=1.0, betas=[0.0], **kwargs)
    assert torch.equal(alone, guided)
    steered = fastdoctor.generate(patient, ids, doctors=[doctor], alpha=1.0, betas=[3.0], **kwargs)
    assert not torch.equal(alone, steered)  # the doctor does act when its weight is not zero


def test_a_doctor_identical_to_the_patient_at_half_weights_is_the_patient():
    patient = tiny_model("qwen2")
    twin = copy.deepcopy(patient)
    ids, mask = left_padded_prompts()
    alone = fastdoctor.generate(patient, ids, attention_mask=mask, temperature=0.0, max_new_tokens=20)
    mixed = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[twin], alpha=0.5, betas=[0.5],
                                temperature=0.0, max_new_tokens=20)
    assert torch.equal(alone, mixed)


def test_per_row_betas_serve_different_preferences_in_one_batch():
    patient, doctor = tiny_model("llama", seed=0), tiny_model("llama", seed=3)
    ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2)).expand(2, 6)
    batch = fastdoctor.generate(patient, ids, doctors=[doctor], betas=[[0.0, 2.0]], temperature=0.0,
                                max_new_tokens=12)
    row0 = fastdoctor.generate(patient, ids[:1], doctors=[doctor], betas=[0.0], temperature=0.0, max_new_tokens=12)
    row1 = fastdoctor.generate(patient, ids[:1], doctors=[doctor], betas=[2.0], temperature=0.0, max_new_tokens=12)
    assert torch.equal(batch[0], row0[0]) and torch.equal(batch[1], row1[0])


def test_a_seeded_row_samples_the_same_tokens_alone_and_in_a_mixed_batch():
    patient, doctor = tiny_model("llama", seed=0), tiny_model("llama", seed=4)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, VOCAB, (4, 9), generator=g)
    params = dict(doctors=[doctor], betas=[[0.5, 1.0, 0.0, 2.0]], temperature=[1.0, 0.7, 1.3, 1.0],
                  top_p=[0.9, 1.0, 0.8, 0.95], top_k=[0, 20, 0, 5], seed=[101, 202, 303, 404], max_new_tokens=16)
    batch = fastdoctor.generate(patient, ids, **params)
    for row in range(4):
        alone = fastdoctor.generate(
            patient, ids[row : row + 1], doctors=[doctor], betas=[params["betas"][0][row]],
            temperature=params["temperature"][row], top_p=params["top_p"][row], top_k=params["top_k"][row],
            seed=[params["seed"][row]], max_new_tokens=16)
        assert torch.equal(alone[0], batch[row])


def test_seed_generator_and_global_seed_make_runs_repeatable():
    model = tiny_model("gpt2")
    ids, mask = left_padded_prompts()
    a = fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, seed=7)
    b = fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, seed=7)
    c = fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, generator=g1),
                       fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, generator=g2))


def test_router_hook_sets_the_weights_per_step():
    patient, doctor = tiny_model("llama", seed=0), tiny_model("llama", seed=5)
    ids, mask = left_padded_prompts()
    seen = []

    def router(logits):
        seen.append(len(logits))
        return torch.tensor([[1.0, 0.0]]).expand(logits[0].shape[0], 2)

    routed = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], router=router, seed=1,
                                 max_new_tokens=10)
    alone = fastdoctor.generate(patient, ids, attention_mask=mask, seed=1, max_new_tokens=10)
    assert torch.equal(routed, alone) and seen == [2] * 10


def test_streamer_gets_prompt_then_each_step_then_end():
    model = tiny_model("llama")
    ids, mask = left_padded_prompts()
    streamer = RecordingStreamer()
    out = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=5, streamer=streamer)
    kinds = [kind for kind, _ in streamer.events]
    assert kinds == ["put"] * 6 + ["end"]
    assert torch.equal(streamer.events[0][1], ids)
    steps = torch.stack([value for _, value in streamer.events[1:6]], dim=1)
    assert torch.equal(steps, out[:, ids.shape[1]:])


def test_zero_new_tokens_returns_the_prompt():
    model = tiny_model("llama")
    ids, mask = left_padded_prompts()
    assert torch.equal(fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=0), ids)


def test_bad_input_gets_clear_errors():
    model = tiny_model("llama")
    ids, _ = left_padded_prompts()
    with pytest.raises(ValueError, match="doctors\\[0\\]: emits 300 logits per token but the patient emits 211"):
        fastdoctor.generate(model, ids, doctors=[tiny_model("llama", vocab=300)])
    with pytest.raises(ValueError, match="input_ids: expected a non-empty prompt"):
        fastdoctor.generate(model, ids[:, :0])
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 0"):
        fastdoctor.generate(model, ids, max_new_tokens=-1)
    with pytest.raises(TypeError, match="input_ids: expected dtype torch.int64"):
        fastdoctor.generate(model, ids.float())
    with pytest.raises(ValueError, match="doctors\\[0\\]: on meta, but the patient is on cpu"):
        fastdoctor.generate(model, ids, doctors=[tiny_model("llama").to("meta")])
    with pytest.raises(ValueError, match="betas: expected one weight per doctor"):
        fastdoctor.generate(model, ids, doctors=[tiny_model("llama")], betas=[1.0, 2.0])
    with pytest.raises(ValueError, match="top_p: expected values in"):
        fastdoctor.generate(model, ids, top_p=0.0)


@pytest.mark.slow
def test_compiled_static_cache_path_matches_hf_and_is_reusable():
    model = tiny_model("qwen2")
    ids, mask = left_padded_prompts()
    expected = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=0,
                              eos_token_id=None)
    first = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=12, compile=True)
    again = fastdoctor.generate(model, ids, attention_mask=mask, temperature=0.0, max_new_tokens=12, compile=True)
    assert torch.equal(first, expected) and torch.equal(again, expected)
    sampled = fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, seed=[1, 2, 3], compile=True)
    eager = fastdoctor.generate(model, ids, attention_mask=mask, max_new_tokens=12, seed=[1, 2, 3])
    assert torch.equal(sampled, eager)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_generate_warns_nothing(family):
    # The KV-cache keyword goes through fastdoctor.kv_cache: no deprecation warning from transformers or torch.
    import warnings

    patient, doctor = tiny_model(family, seed=0), tiny_model(family, seed=5)
    ids, mask = left_padded_prompts()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], betas=[0.5], seed=1,
                                  max_new_tokens=4)
    assert out.shape == (ids.shape[0], ids.shape[1] + 4)
