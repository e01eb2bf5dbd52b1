"""fastdoctor.guided as HF's `custom_generate`: token-identical to fastdoctor.generate with the same settings
(greedy and seeded sampling, EOS and padding, the streamer), on tiny Llama, Qwen2 and GPT-2; refuses what it
cannot honour."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from conftest import RecordingStreamer, left_padded_prompts, tiny_model

FAMILIES = ["llama", "qwen2", "gpt2"]


def models(family):
    return tiny_model(family, seed=0), tiny_model(family, seed=5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_alone_equals_hf_and_fastdoctor(family):
    patient, _ = models(family)
    ids, mask = left_padded_prompts()
    ours = patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(), do_sample=False,
                            max_new_tokens=8)
    hf = patient.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=8)
    direct = fastdoctor.generate(patient, ids, attention_mask=mask, temperature=0.0, max_new_tokens=8,
                                 eos_token_id=2, pad_token_id=0)
    assert torch.equal(ours, direct) and torch.equal(ours, hf)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_with_a_doctor_equals_fastdoctor_generate(family):
    patient, doctor = models(family)
    ids, mask = left_padded_prompts()
    ours = patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(doctors=[doctor], betas=[0.5]),
                            do_sample=False, max_new_tokens=8)
    direct = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], betas=[0.5], temperature=0.0,
                                 max_new_tokens=8, eos_token_id=2, pad_token_id=0)
    assert torch.equal(ours, direct)


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_sampling_equals_fastdoctor_generate(family):
    patient, doctor = models(family)
    ids, mask = left_padded_prompts()
    steer = fastdoctor.guided(doctors=[doctor], betas=[0.5], seed=[3, 4, 5])
    ours = patient.generate(ids, attention_mask=mask, custom_generate=steer, do_sample=True, temperature=0.8,
                            top_p=0.9, max_new_tokens=10)
    direct = fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], betas=[0.5], seed=[3, 4, 5],
                                 temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=10, eos_token_id=2,
                                 pad_token_id=0)  # top_k 50: HF's default once do_sample is on
    assert torch.equal(ours, direct)
    other = patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(doctors=[doctor], betas=[0.5],
                             seed=[6, 7, 8]), do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=10)
    assert not torch.equal(ours, other)


def test_eos_pad_and_max_length_come_from_the_generation_config():
    patient, doctor = models("llama")
    ids, mask = left_padded_prompts()
    free = fastdoctor.generate(patient, ids, attention_mask=mask, temperature=0.0, max_new_tokens=8)
    eos = int(free[0, ids.shape[1] + 2])
    ours = patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(), do_sample=False,
                            eos_token_id=eos, pad_token_id=7, max_length=ids.shape[1] + 8)
    direct = fastdoctor.generate(patient, ids, attention_mask=mask, temperature=0.0, max_new_tokens=8,
                                 eos_token_id=eos, pad_token_id=7)
    assert torch.equal(ours, direct) and int(ours[0, ids.shape[1] + 3]) == 7


def test_the_streamer_given_to_guided_sees_the_whole_protocol():
    patient, doctor = models("llama")
    ids, mask = left_padded_prompts()
    ours, direct = RecordingStreamer(), RecordingStreamer()
    patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(doctors=[doctor], streamer=ours),
                     do_sample=False, max_new_tokens=5)
    fastdoctor.generate(patient, ids, attention_mask=mask, doctors=[doctor], temperature=0.0, max_new_tokens=5,
                        eos_token_id=2, pad_token_id=0, streamer=direct)
    assert [e for e, _ in ours.events] == [e for e, _ in direct.events] == ["put"] * 6 + ["end"]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours.events[:-1], direct.events[:-1]))


def test_a_streamer_given_to_model_generate_gets_every_token_and_the_end():
    from transformers import TextIteratorStreamer

    patient, doctor = models("llama")
    ids, _ = left_padded_prompts(batch=1)
    ours, direct = RecordingStreamer(), RecordingStreamer()
    out = patient.generate(ids, custom_generate=fastdoctor.guided(doctors=[doctor]), do_sample=False,
                           max_new_tokens=5, streamer=ours)
    fastdoctor.generate(patient, ids, doctors=[doctor], temperature=0.0, max_new_tokens=5, eos_token_id=2,
                        pad_token_id=0, streamer=direct)
    assert [e for e, _ in ours.events] == ["put"] * 6 + ["end"]  # HF's prompt put, five steps, the end
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours.events[1:-1], direct.events[1:-1]))
    assert torch.equal(torch.cat([v for _, v in ours.events[1:-1]]), out[0, ids.shape[1]:])

    class Tokens:  # what a TextIteratorStreamer needs of a tokenizer
        def decode(self, ids, **_):
            return "".join(f"<{i}>" for i in ids)

    text = TextIteratorStreamer(Tokens(), skip_prompt=True, timeout=10)  # a hang would raise queue.Empty
    patient.generate(ids, custom_generate=fastdoctor.guided(doctors=[doctor]), do_sample=False, max_new_tokens=5,
                     streamer=text)
    assert "".join(text) == "".join(f"<{i}>" for i in out[0, ids.shape[1]:].tolist())
    with pytest.raises(ValueError, match="streamer: given to both"):
        patient.generate(ids, custom_generate=fastdoctor.guided(streamer=RecordingStreamer()), max_new_tokens=2,
                         streamer=RecordingStreamer())


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_beams=2), "num_beams=2"),
    (dict(repetition_penalty=1.3), "repetition_penalty=1.3"),
    (dict(min_new_tokens=3), "min_length=10|min_new_tokens=3"),  # HF turns it into min_length
    (dict(no_repeat_ngram_size=2), "no_repeat_ngram_size=2"),
    (dict(num_return_sequences=2, do_sample=True), "num_return_sequences=2"),
    (dict(return_dict_in_generate=True, output_scores=True), "output_scores|return_dict_in_generate"),
])
def test_unsupported_generation_settings_are_errors(kwargs, match):
    patient, _ = models("llama")
    ids, mask = left_padded_prompts()
    with pytest.raises(ValueError, match=match):
        patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(), max_new_tokens=4, **kwargs)


def test_a_user_logits_processor_is_an_error():
    from transformers import LogitsProcessor, LogitsProcessorList

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    patient, _ = models("llama")
    ids, mask = left_padded_prompts()
    with pytest.raises(ValueError, match=r"logits_processor: \['Ban'\]"):
        patient.generate(ids, attention_mask=mask, custom_generate=fastdoctor.guided(), max_new_tokens=4,
                         logits_processor=LogitsProcessorList([Ban()]))
