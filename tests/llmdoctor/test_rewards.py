"""LLMdoctor stage 1 on a tiny random model with the default patient's tokenizer and chat template."""
from __future__ import annotations

import json

import pytest
import torch

import fastdoctor
from fastdoctor.llmdoctor import data, rewards
from fastdoctor.llmdoctor.data import PreferencePair
from conftest import tiny_model

PAIRS = [
    PreferencePair("My bus was late. Any thoughts?", "That sounds annoying, but you made it! Great job.",
                   "Buses are always late. Nothing you can do."),
    PreferencePair("It rained all day.", "Rainy days are cosy: tea, a book and a warm blanket!", "Rain is bad."),
    PreferencePair("My phone died.", "Time for a little break from screens. Enjoy it!",
                   "That is unlucky and there is no fix, you will miss your calls and messages today."),
]


@pytest.fixture(scope="module")
def patient():
    _, tokenizer = fastdoctor.load_model("default")
    return tiny_model("llama", vocab=len(tokenizer), layers=2, seed=0), tokenizer


def test_reward_signs_and_sparsity(patient, tmp_path):
    model, tokenizer = patient
    settings = rewards.RewardSettings(theta=0.5, faces=rewards.FACES["positivity"])
    summary = rewards.acquire_rewards(model, tokenizer, PAIRS, tmp_path / "r.safetensors", settings)
    tensors, meta = rewards.load_rewards(tmp_path / "r.safetensors")
    chosen, rejected = tensors["chosen_rewards"], tensors["rejected_rewards"]
    assert (chosen >= 0).all() and (rejected <= 0).all()
    assert (chosen[~tensors["chosen_mask"]] == 0).all()
    # Exactly the tokens whose strength S = tanh(dhat / tau) is at or below theta are zeroed.
    for name in ("chosen", "rejected"):
        delta = (tensors[f"{name}_logp_pos"] - tensors[f"{name}_logp_neg"]).abs()
        mask = tensors[f"{name}_mask"]
        mean = (delta * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        strength = torch.tanh(delta / (mean + settings.eps) / settings.tau)
        assert torch.equal(tensors[f"{name}_rewards"] != 0, mask & (strength > settings.theta))
    assert 0 < summary["nonzero_fraction"] < 1
    assert meta["settings"]["theta"] == 0.5 and meta["summary"]["pairs"] == 3
    assert tensors["chosen_ids"][0, tensors["chosen_mask"][0].sum() - 1] == tokenizer.eos_token_id


def test_prefix_sharing_changes_nothing(patient):
    model, tokenizer = patient
    settings = rewards.RewardSettings()
    for index, pair in enumerate(PAIRS):
        shared = rewards.score_pair(model, tokenizer, pair, settings, index, share_prefix=True)
        separate = rewards.score_pair(model, tokenizer, pair, settings, index, share_prefix=False)
        for a, b in zip(shared.logp_pos + shared.logp_neg, separate.logp_pos + separate.logp_neg):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for a, b in zip(shared.rewards, separate.rewards):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_face_log_probs_match_a_plain_forward(patient):
    """The chunked hidden-state path gives the log-probs of an ordinary full forward with log_softmax."""
    model, tokenizer = patient
    pair = PAIRS[0]
    scored = rewards.score_pair(model, tokenizer, pair, rewards.RewardSettings())
    messages = [{"role": "system", "content": rewards.FACES["general"].positive},
                {"role": "user", "content": pair.prompt}]
    prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    response = scored.response_ids[0]
    ids = torch.tensor([list(prefix) + response.tolist()])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prefix) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, response.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(scored.logp_pos[0], expected, rtol=1e-5, atol=1e-5)


def test_resume_equals_an_uninterrupted_run(patient, tmp_path):
    model, tokenizer = patient
    settings = rewards.RewardSettings(theta=0.3)
    rewards.acquire_rewards(model, tokenizer, PAIRS, tmp_path / "full.safetensors", settings)
    out = tmp_path / "not-yet-made" / "resumed.safetensors"  # the folder is created before the partial file
    assert rewards.acquire_rewards(model, tokenizer, PAIRS, out, settings, stop_after=2) == {"stopped_at": 2}
    assert not out.exists() and out.with_name("resumed.safetensors.partial").exists()
    rewards.acquire_rewards(model, tokenizer, PAIRS, out, settings)
    assert not out.with_name("resumed.safetensors.partial").exists()
    full, _ = rewards.load_rewards(tmp_path / "full.safetensors")
    resumed, _ = rewards.load_rewards(out)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_a_partial_file_from_other_settings_is_not_reused(patient, tmp_path):
    model, tokenizer = patient
    out = tmp_path / "r.safetensors"
    rewards.acquire_rewards(model, tokenizer, PAIRS, out, rewards.RewardSettings(theta=0.1), stop_after=1)
    rewards.acquire_rewards(model, tokenizer, PAIRS, out, rewards.RewardSettings(theta=0.6))
    fresh = tmp_path / "fresh.safetensors"
    rewards.acquire_rewards(model, tokenizer, PAIRS, fresh, rewards.RewardSettings(theta=0.6))
    a, _ = rewards.load_rewards(out)
    b, _ = rewards.load_rewards(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input(patient, tmp_path):
    model, tokenizer = patient
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        data.load_preferences(bad)
    bad.write_text(json.dumps({"prompt": "a", "chosen": "  ", "rejected": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'chosen' is empty"):
        data.load_preferences(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="no preference pairs"):
        data.load_preferences(bad)
    long_pair = PreferencePair("hi", "word " * 400, "no")  # the tiny model's context is 256 positions
    with pytest.raises(ValueError, match="pair 0: face prompt \\+ response is .* more than the patient's context"):
        rewards.score_pair(model, tokenizer, long_pair, rewards.RewardSettings())
    truncated = rewards.score_pair(model, tokenizer, long_pair, rewards.RewardSettings(truncate=True))
    assert truncated.response_ids[0].numel() < 400
    other = tiny_model("llama", vocab=300)
    with pytest.raises(ValueError, match="tokenizer: .* the tokenizer does not belong to this patient"):
        rewards.acquire_rewards(other, tokenizer, PAIRS, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="pairs: the preference data set is empty"):
        rewards.acquire_rewards(model, tokenizer, [], tmp_path / "x.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        rewards.load_rewards(tmp_path / "junk.safetensors")


def test_token_pairs_are_the_rewards_files_ids(patient, tmp_path):
    """GenARM trains on recipes.token_pairs, which skips stage 1: the ids must be the ones a rewards file holds,
    cut-off replies (no end-of-turn token) included."""
    from fastdoctor.llmdoctor import recipes, tfpo

    model, tokenizer = patient
    concision = data.bundled_preferences("train", "concision")
    unfinished = [p for p in concision if not (p.extra.get("chosen_finished", True)
                                               and p.extra.get("rejected_finished", True))]
    pairs = PAIRS + concision[:2] + unfinished[:2]
    assert unfinished, "the concision set should hold cut-off replies"
    rewards.acquire_rewards(model, tokenizer, pairs, tmp_path / "r.safetensors")
    stored = tfpo.examples_from_rewards(rewards.load_rewards(tmp_path / "r.safetensors")[0])
    ids = recipes.token_pairs(tokenizer, pairs, model)
    assert len(ids) == len(stored) == len(pairs)
    for a, b in zip(ids, stored):
        for name in ("prompt", "chosen", "rejected"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert any(int(p.chosen[-1]) != tokenizer.eos_token_id or int(p.rejected[-1]) != tokenizer.eos_token_id
               for p in ids[-2:])
    with pytest.raises(ValueError, match="no pairs"):
        recipes.token_pairs(tokenizer, [], model)
    too_long = PreferencePair("Hi.", "word " * 400, "No.")  # the tiny model's context is 256 positions
    with pytest.raises(ValueError, match="pair 0: prompt \\+ reply is .* the patient's context of 256"):
        recipes.token_pairs(tokenizer, [too_long], model)
