"""fastdoctor.load_doctor: the one loader of a doctor to decode with, from a folder or `bundled:NAME`.

  adapter folder   (adapter_config.json: a TFPO doctor, a GenARM ARM, a TARo reward model) an AdapterDoctor,
                   checked against the patient before any tensor is used (adapters.load_adapter); generate
                   runs it inside the patient's own forward
  model folder     any HF causal LM folder (a small or merged doctor): loaded like the patient, and refused
                   unless its tokenizer is the patient's

Every refusal is a ValueError that names the file; the command line turns it into a message and an exit code.
"""
from __future__ import annotations

import json
import os
import pathlib

from torch import nn

from . import adapters
from .models import check_same_tokenizer, load_model
from .tokens import check_vocab

BUNDLED = pathlib.Path(__file__).resolve().parent / "datasets" / "doctors"
RECORDS = ("doctor.json", "taro_rm.json")  # what LLMdoctor and TARo write beside a doctor's weights


def bundled_doctors() -> list[str]:
    """Names of the trained doctors that ship in the package (datasets/doctors/<name>/doctor.json)."""
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "doctor.json").is_file()) if BUNDLED.is_dir() else []


def bundled_doctor(name: str) -> pathlib.Path:
    """The folder of the bundled doctor `name` (a plain name: no path reaches outside the bundle)."""
    if name not in bundled_doctors():
        raise ValueError(f"no bundled doctor {name!r} (bundled: {', '.join(bundled_doctors()) or 'none'})")
    return BUNDLED / name


def doctor_folder(spec: str | os.PathLike) -> pathlib.Path:
    """The folder of a doctor spec: a path, or bundled:NAME for a doctor that ships in the package."""
    text = os.fspath(spec)
    path = bundled_doctor(text.removeprefix("bundled:")) if text.startswith("bundled:") else pathlib.Path(text)
    if not path.is_dir():
        raise ValueError(f"{text}: no such doctor folder")
    return path


def read_record(folder: pathlib.Path) -> dict:
    """The fastdoctor record beside a doctor's weights (doctor.json or taro_rm.json), {} when there is none."""
    for name in RECORDS:
        file = folder / name
        if file.is_file():
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{file}: not readable JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file}: expected a JSON object, got {type(record).__name__}")
            return record
    return {}


def load_doctor(spec: str | os.PathLike, patient: nn.Module, tokenizer=None, *, dtype=None, device=None,
                tp_size: int | None = None):
    """The doctor at `spec` (a folder, or bundled:NAME) for decoding with `patient`: an AdapterDoctor for an
    adapter folder (sharded with the patient when the patient is), else the HF model of the folder (in `dtype`
    on `device`, default the patient's; replicated on every rank, or sharded by its own plan with `tp_size`).
    With `tokenizer` (the patient's), a doctor made with another vocabulary is refused."""
    folder = doctor_folder(spec)
    if adapters.is_adapter_folder(folder):
        record = read_record(folder)
        check_vocab(record.get("vocab"), tokenizer, folder, "the doctor was trained")
        return adapters.load_adapter(folder, patient).with_record(record)
    first = next(patient.parameters())
    model, doctor_tokenizer = load_model(folder, dtype=dtype or first.dtype, device=device or first.device,
                                         tp_size=tp_size)
    if tokenizer is not None:
        check_same_tokenizer(tokenizer, doctor_tokenizer, name=os.fspath(spec))
    return model
