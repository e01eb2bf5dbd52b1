"""What fastdoctor.generate refuses, in one place: each bad input gets an error that names the argument,
before the first decode step (probe-style cases, one line each)."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from conftest import VOCAB, left_padded_prompts, tiny_model

PATIENT = tiny_model("llama", seed=0)
DOCTOR = tiny_model("llama", seed=1)
IDS, MASK = left_padded_prompts()


def run(**kwargs):
    args = dict(attention_mask=MASK, max_new_tokens=3, seed=0)
    args.update(kwargs)
    ids = args.pop("input_ids", IDS)
    return fastdoctor.generate(PATIENT, ids, **args)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(eos_token_id=VOCAB), ValueError, r"eos_token_id: \[211\] outside the vocabulary"),
    (dict(eos_token_id=[2, -1]), ValueError, r"eos_token_id: \[-1\] outside"),
    (dict(eos_token_id=torch.tensor(2)), TypeError, "eos_token_id: expected an int or a list of ints"),
    (dict(eos_token_id=2.0), TypeError, "eos_token_id: expected an int"),
    (dict(eos_token_id=True), TypeError, "eos_token_id: expected an int"),
    (dict(eos_token_id=2, pad_token_id=VOCAB + 5), ValueError, "pad_token_id: .* outside the vocabulary"),
    (dict(pad_token_id="0"), TypeError, "pad_token_id: expected an int"),
    (dict(seed="7"), TypeError, "seed: expected a number, a per-row sequence or a tensor"),
    (dict(seed=2**64), ValueError, "seed: expected an int64"),
    (dict(seed=[1, 2, 2**64]), ValueError, "seed: .* does not fit"),
    (dict(seed=["a", "b", "c"]), TypeError, "seed: expected numbers"),
    (dict(top_k=2**64), ValueError, "top_k: .* does not fit in int64"),
    (dict(top_k=True), TypeError, "top_k: expected a number or a per-row sequence, got bool"),
    (dict(vocab_size=True), ValueError, "vocab_size: expected 1.."),
    (dict(max_new_tokens=True), ValueError, "max_new_tokens: expected an int >= 0"),
    (dict(max_new_tokens=250), ValueError, r"max_new_tokens: .* needs \d+ positions, more than the patient's 256"),
    (dict(eos_check_interval=0), ValueError, "eos_check_interval: expected an int >= 1"),
    (dict(attention_mask=torch.zeros_like(MASK)), ValueError, r"attention_mask: rows \[0, 1, 2\] are all padding"),
    (dict(attention_mask=MASK.flip(1)), ValueError, "attention_mask: rows .* are right-padded"),
    (dict(attention_mask=MASK * 2), ValueError, "attention_mask: expected 0 .* and 1 .* only"),
    (dict(attention_mask=MASK.tolist()), ValueError, "attention_mask: expected a tensor"),
    (dict(input_ids=IDS.masked_fill(MASK == 1, VOCAB + 1)), ValueError, "input_ids: token ids outside"),
    (dict(input_ids=IDS.float()), TypeError, "input_ids: expected dtype torch.int64"),
    (dict(input_ids=IDS[:0], attention_mask=MASK[:0]), ValueError, r"input_ids: expected a non-empty prompt"),
    (dict(attention_mask=MASK[:, 1:]), ValueError, r"attention_mask: expected a tensor of shape \[3, 7\] on cpu, "
                                                   r"got shape \[3, 6\]"),
    (dict(temperature=-1.0), ValueError, "temperature: expected finite values >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature: expected finite values"),
    (dict(temperature="1"), TypeError, "temperature: expected a number"),
    (dict(top_p=0.0), ValueError, r"top_p: expected values in \(0, 1\]"),
    (dict(top_p=float("nan")), ValueError, r"top_p: expected values in \(0, 1\]"),
    (dict(top_k=-1), ValueError, "top_k: expected values >= 0"),
    (dict(seed=torch.tensor([1.5, 2.0, 3.0])), TypeError, "seed: expected an integer tensor"),
    (dict(seed=[1, 2]), ValueError, r"seed: expected one value per row, shape \[3\]"),
    (dict(alpha=float("nan")), ValueError, "alpha: expected finite mixing weights"),
    (dict(doctors=[DOCTOR], betas=[float("inf")]), ValueError, r"betas\[0\]: expected finite mixing weights"),
    (dict(doctors=[DOCTOR], betas=["a"]), TypeError, r"betas\[0\]: expected a number"),
    (dict(doctors=[DOCTOR], betas=[1.0, 2.0]), ValueError, r"betas: expected one weight per doctor \(1\), got 2"),
    (dict(doctors=DOCTOR), TypeError, r"doctors: expected a list of doctors \(AdapterDoctors or HF causal LMs\), got LlamaForCausalLM"),
    (dict(doctors=[None]), TypeError, r"doctors\[0\]: expected an AdapterDoctor or an HF causal LM, got NoneType"),
    (dict(doctors=[DOCTOR], betas=[0.5], router=lambda z: torch.ones(z[0].shape[0], 2)), ValueError,
     r"router: it chooses the weights of every token, so alpha and betas would be ignored"),
    (dict(doctors=[DOCTOR], alpha=0.5, router=lambda z: torch.ones(z[0].shape[0], 2)), ValueError,
     r"leave alpha and betas at their defaults"),
    (dict(streamer=5), TypeError, r"streamer: expected an HF streamer \(with put\(\) and end\(\)\), got int"),
])
def test_generate_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        run(**kwargs)


def test_a_doctor_with_a_shorter_context_is_named():
    short = tiny_model("llama", seed=2)
    short.config.max_position_embeddings = 8
    with pytest.raises(ValueError, match=r"more than doctors\[0\]'s 8"):
        fastdoctor.generate(PATIENT, IDS, attention_mask=MASK, doctors=[short], max_new_tokens=3)


@pytest.mark.parametrize("returned,match", [
    (lambda logits: None, "the weights hook must return a float tensor of shape"),
    (lambda logits: torch.ones(3, 3), r"shape \[3, 2\]"),
    (lambda logits: torch.ones(3, 2, dtype=torch.int64), "float tensor"),
    (lambda logits: torch.full((3, 2), float("nan")), "the weights hook returned NaN or inf at step 0"),
])
def test_a_bad_weights_hook_is_named(returned, match):
    with pytest.raises(ValueError, match=match):
        fastdoctor.generate(PATIENT, IDS, attention_mask=MASK, doctors=[DOCTOR], router=returned, max_new_tokens=3)


def test_the_refusals_still_let_valid_input_through():
    # Guards the checks above against refusing too much: the same call with good values runs.
    out = run(eos_token_id=[2, 3], pad_token_id=0, seed=[1, 2, 3], top_k=5, vocab_size=VOCAB, eos_check_interval=2)
    assert out.shape[0] == 3 and out.shape[1] <= IDS.shape[1] + 3
