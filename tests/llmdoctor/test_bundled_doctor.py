"""The bundled doctors (datasets/doctors/positivity and concision): their files match bundle.json, they load
offline over the default patient, steer it (the greedy reply differs from the patient's), and refuse another
base."""
from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch

import fastdoctor
from fastdoctor import adapters, shared_base
from fastdoctor.doctors import doctor_folder
from fastdoctor.llmdoctor.doctor import load_doctor
from conftest import run_cli, tiny_model

DOCTORS = pathlib.Path(fastdoctor.__file__).parent / "datasets" / "doctors"
BUNDLED = DOCTORS / "positivity"


@pytest.mark.parametrize("dimension", ["positivity", "concision"])
def test_the_files_match_their_recorded_hashes(dimension):
    BUNDLED = DOCTORS / dimension
    record = json.loads((BUNDLED / "bundle.json").read_text())
    assert record["seed"] == 0 and record["command"].startswith("python -m fastdoctor.datasets.make_bundled_doctor")
    files = sorted(p.name for p in BUNDLED.iterdir() if p.is_file() and p.name != "bundle.json")
    assert files == sorted(record["sha256"]) and "adapter_model.safetensors" in files
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((BUNDLED / name).read_bytes()).hexdigest() == digest, name
    assert adapters.folder_size(BUNDLED) < 8e6  # a few MB, not a copy of the patient


@pytest.mark.parametrize("dimension", ["positivity", "concision"])
def test_it_steers_the_default_patient(dimension):
    patient, tokenizer = fastdoctor.load_model("default")
    doctor = load_doctor(doctor_folder(f"bundled:{dimension}"), patient=patient, tokenizer=tokenizer)
    assert shared_base.plan(patient, [doctor.lm]).stacked == (0,)  # decoded inside the patient's forward
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "My train was late again today."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    alone = fastdoctor.generate(patient, ids, max_new_tokens=24, temperature=0.0)
    steered = fastdoctor.generate(patient, ids, doctors=[doctor.lm], betas=[1.0], max_new_tokens=24, temperature=0.0)
    assert not torch.equal(alone, steered)


def test_it_is_refused_on_another_base():
    with pytest.raises(ValueError, match="another base model"):
        adapters.load_adapter(BUNDLED, tiny_model("llama", seed=0))
    with pytest.raises(ValueError, match="another base model"):
        fastdoctor.load_doctor("bundled:positivity", tiny_model("llama", seed=0))


def test_the_cli_steers_with_it():
    result = run_cli("generate", "--doctor", "bundled:positivity", "--beta", "1", "--prompt", "My phone died.",
                     "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert "2 model(s)" in result.stderr
    missing = run_cli("generate", "--doctor", "bundled:nothing", "--prompt", "hi", "--max-new-tokens", "2")
    assert missing.returncode != 0 and "bundled: concision, positivity" in missing.stderr


def test_the_quickstart_shows_it_before_training(capsys):
    from fastdoctor.llmdoctor import quickstart

    patient, tokenizer = fastdoctor.load_model("default")
    settings = quickstart.QuickstartSettings(max_new_tokens=8, temperature=0.0)  # greedy: the replies must differ
    example = quickstart._show_bundled_doctor(patient, tokenizer, "My train was late again today.", settings)
    assert example["patient"] and example["doctor"] and example["patient"] != example["doctor"]
    assert "0/5 the bundled positivity doctor" in capsys.readouterr().err
