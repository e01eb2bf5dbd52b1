"""The bundled positivity preference set: present, well-formed, verifiable against its metadata."""
from __future__ import annotations

import hashlib
import json

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
