"""Preference data: JSONL with prompt / chosen / rejected (TRL's convention), validated line by line.

The bundled sets live in fastdoctor/datasets/, one per preference dimension on the same 300 prompts:
positivity (make_positivity.py, positivity.meta.json) and concision (make_concision.py, concision.meta.json,
which also records why concision was chosen); each meta file holds the settings, seed and SHA-256s."""
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


DIMENSIONS = ("positivity", "concision")


def bundled_preferences(split: str = "train", dimension: str = "positivity") -> list[PreferencePair]:
    """A bundled preference set: split 'train' or 'test' (held-out situations) of `dimension`."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if dimension not in DIMENSIONS:
        raise ValueError(f"dimension: expected one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    return load_preferences(DATASETS / f"{dimension}_{split}.jsonl")
