"""What stage 1 refuses, in one place: a rewards file with non-finite values, disagreeing row counts or
missing tensors, and NaN face log-probs given to the reward op."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastdoctor import ops
from fastdoctor.llmdoctor import rewards


def rewards_tensors(pairs=4, length=5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"prompt_ids": torch.randint(3, 50, (pairs, 6), generator=g), "prompt_mask": torch.ones(pairs, 6, dtype=torch.bool)}
    for side in ("chosen", "rejected"):
        out[f"{side}_ids"] = torch.randint(3, 50, (pairs, length), generator=g)
        out[f"{side}_mask"] = torch.ones(pairs, length, dtype=torch.bool)
        for kind in ("rewards", "logp_pos", "logp_neg"):
            out[f"{side}_{kind}"] = -torch.rand(pairs, length, generator=g)
    return out


def write(path, tensors):
    metadata = {"format": rewards.FORMAT, "settings": json.dumps({}), "summary": json.dumps({})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_a_valid_file_loads(tmp_path):
    tensors, _ = rewards.load_rewards(write(tmp_path / "r.safetensors", rewards_tensors()))
    assert tensors["chosen_rewards"].shape == (4, 5)


@pytest.mark.parametrize("name", ["chosen_rewards", "rejected_logp_pos", "chosen_logp_neg"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_naming_tensor_and_row(tmp_path, name, value):
    tensors = rewards_tensors()
    tensors[name][2, 3] = value
    with pytest.raises(ValueError, match=rf"r.safetensors: {name} holds NaN or inf \(first in row 2\)"):
        rewards.load_rewards(write(tmp_path / "r.safetensors", tensors))


def test_non_finite_values_under_padding_are_ignored(tmp_path):
    tensors = rewards_tensors()
    tensors["chosen_mask"][1, 4] = False
    tensors["chosen_rewards"][1, 4] = float("nan")
    loaded, _ = rewards.load_rewards(write(tmp_path / "r.safetensors", tensors))
    assert not bool(loaded["chosen_mask"][1, 4]) and torch.isnan(loaded["chosen_rewards"][1, 4])  # kept, masked
    kept = loaded["chosen_mask"]
    assert torch.equal(loaded["chosen_rewards"][kept], tensors["chosen_rewards"][kept])


def test_tensors_that_disagree_in_row_count_are_refused(tmp_path):
    tensors = rewards_tensors()
    tensors["rejected_rewards"] = tensors["rejected_rewards"][:3]  # used to train on 3 of 4 pairs silently
    with pytest.raises(ValueError, match="disagree in row count"):
        rewards.load_rewards(write(tmp_path / "r.safetensors", tensors))


def test_a_missing_tensor_is_refused(tmp_path):
    tensors = rewards_tensors()
    del tensors["chosen_logp_neg"]
    with pytest.raises(ValueError, match=r"missing tensors \['chosen_logp_neg'\]"):
        rewards.load_rewards(write(tmp_path / "r.safetensors", tensors))


def test_the_reward_op_refuses_nan_face_logprobs():
    lp_pos, lp_neg = -torch.rand(2, 4), -torch.rand(2, 4)
    mask, sign = torch.ones(2, 4, dtype=torch.bool), torch.tensor([1.0, -1.0])
    lp_neg[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"logp_neg: NaN at a valid position \(first in row 1\)"):
        ops.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign)
    mask[1, 2] = False  # padding may hold anything
    assert torch.isfinite(ops.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign)).all()


class NoTokenising:
    """A tokenizer whose vocabulary is known but which must never be asked to tokenise."""

    def get_vocab(self):
        return {"ab": 0, "abcd": 1}

    def apply_chat_template(self, *args, **kwargs):
        raise AssertionError("tokenised a text that could be refused from its size alone")


def test_a_huge_response_is_refused_before_it_is_tokenised():
    from conftest import tiny_model
    from fastdoctor.llmdoctor.data import PreferencePair

    model = tiny_model("llama")  # 256 positions, so at most 256 * 16 bytes fit with 4-character tokens
    pair = PreferencePair("hello", "x" * 40_000, "fine")
    with pytest.raises(ValueError, match="pair 0: the chosen text is 40000 bytes, more than 256 tokens"):
        rewards.score_pair(model, NoTokenising(), pair, rewards.RewardSettings())
