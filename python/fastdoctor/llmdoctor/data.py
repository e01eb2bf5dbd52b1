"""Preference data: JSONL with prompt / chosen / rejected (TRL's convention), validated line by line.

The bundled positivity set lives in fastdoctor/datasets/ (see fastdoctor/datasets/make_positivity.py for
how it was generated, and positivity.meta.json for the settings and seed)."""
from __future__ import annotations

import dataclasses
import pathlib

from ..files import read_jsonl_objects

DATASETS = pathlib.Path(__file__).resolve().parent.parent / "datasets"
_FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    extra: dict = dataclasses.field(default_factory=dict, compare=False)


def load_preferences(path: str | pathlib.Path) -> list[PreferencePair]:
    """Reads a JSONL file of {"prompt", "chosen", "rejected", ...} objects. Raises ValueError naming the
    file and line number of the first malformed line; an empty file is an error too."""
    path = pathlib.Path(path)
    pairs = []
    for number, record in read_jsonl_objects(path, f"a JSON object with {', '.join(_FIELDS)}"):
        for field in _FIELDS:
            value = record.get(field)
            if not isinstance(value, str):
                raise ValueError(f"{path}:{number}: field '{field}' is missing or not a string")
            if not value.strip():
                raise ValueError(f"{path}:{number}: field '{field}' is empty")
        pairs.append(PreferencePair(record["prompt"], record["chosen"], record["rejected"],
                                    {k: v for k, v in record.items() if k not in _FIELDS}))
    if not pairs:
        raise ValueError(f"{path}: no preference pairs (the file is empty)")
    return pairs


def bundled_preferences(split: str = "train") -> list[PreferencePair]:
    """The bundled positivity preference set: split 'train' or 'test' (held-out prompts)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return load_preferences(DATASETS / f"positivity_{split}.jsonl")
