"""The bundled positivity preference set: present, well-formed, verifiable against its metadata."""
from __future__ import annotations

import hashlib
import json

import pytest

from fastdoctor.llmdoctor import data
from fastdoctor.datasets import make_positivity


def test_bundled_set_loads_and_matches_its_metadata():
    meta = json.loads((data.DATASETS / "positivity.meta.json").read_text())
    for split in ("train", "test"):
        body = (data.DATASETS / f"positivity_{split}.jsonl").read_bytes()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"][split]
        pairs = data.bundled_preferences(split)
        assert len(pairs) == meta["pairs"][split] > 0
        for pair in pairs:
            assert pair.extra["chosen_score"] > pair.extra["rejected_score"]  # VADER labels, ties dropped
    assert meta["seed"] == 0 and meta["samples_per_prompt"] >= 2


def test_train_and_test_prompts_come_from_disjoint_situations():
    situation = lambda p: p.prompt.split(". ")[0]  # noqa: E731
    train = {situation(p) for p in data.bundled_preferences("train")}
    test = {situation(p) for p in data.bundled_preferences("test")}
    assert train and test and not train & test


def test_the_prompt_list_is_fixed():
    prompts = make_positivity.prompts()
    assert len(prompts) == 300 == len(set(prompts))
    assert prompts == make_positivity.prompts()


def test_the_concision_set_matches_its_metadata_and_was_chosen_by_measurement():
    from fastdoctor import judges

    meta = json.loads((data.DATASETS / "concision.meta.json").read_text())
    positivity = json.loads((data.DATASETS / "positivity.meta.json").read_text())
    assert meta["held_out_situations"] == positivity["held_out_situations"]  # the same split by situation
    for split in ("train", "test"):
        body = (data.DATASETS / f"concision_{split}.jsonl").read_bytes()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"][split]
        pairs = data.bundled_preferences(split, "concision")
        assert len(pairs) == meta["pairs"][split] > 0
        for pair in pairs:  # the recorded labels are the judge's own scores, recomputed here
            assert judges.concision_score(pair.chosen) == pytest.approx(pair.extra["chosen_score"], abs=1e-4)
            assert judges.concision_score(pair.rejected) == pytest.approx(pair.extra["rejected_score"], abs=1e-4)
            assert pair.extra["chosen_score"] > pair.extra["rejected_score"]
    chosen = next(c for c in meta["candidates"] if c["judge"] == "concision")
    assert chosen["qualifies"] and abs(chosen["spearman_with_vader"]) <= 0.5 and chosen["gain_in_se"] >= 2
    assert not chosen["degenerate_wins"]
    train = {p.prompt for p in data.bundled_preferences("train", "concision")}
    assert train <= set(make_positivity.prompts())


def test_an_unknown_dimension_is_refused():
    with pytest.raises(ValueError, match="dimension: expected one of positivity, concision"):
        data.bundled_preferences("train", "tone")


def test_a_reply_cut_off_at_the_token_limit_trains_without_an_end_of_turn_token():
    import fastdoctor
    from fastdoctor.tokens import reply_finished, split_response

    _, tokenizer = fastdoctor.load_model("default")
    messages = [{"role": "user", "content": "My train was late."}]
    prefix, done = split_response(tokenizer, messages, "So sorry to hear that.", 0, "chosen")
    _, cut = split_response(tokenizer, messages, "So sorry to hear that.", 0, "chosen", finished=False)
    assert done[-1] == tokenizer.eos_token_id and cut == done[:-1] and prefix
    pair = data.PreferencePair("p", "a", "b", {"chosen_finished": True, "rejected_finished": False})
    assert reply_finished(pair, "chosen") and not reply_finished(pair, "rejected")
    assert reply_finished(data.PreferencePair("p", "a", "b"), "rejected")  # plain JSONL pairs: finished
    with pytest.raises(ValueError, match="rejected_finished: expected true or false"):
        reply_finished(data.PreferencePair("p", "a", "b", {"rejected_finished": "no"}), "rejected")
    concision = data.bundled_preferences("train", "concision")
    assert all(isinstance(p.extra["chosen_finished"], bool) for p in concision)
    assert any(not p.extra["rejected_finished"] for p in concision)
