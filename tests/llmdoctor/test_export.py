"""export_merged (and `fastdoctor export`) never deletes or hides what the user owns: an existing folder that is
not an earlier export of the same doctor is refused, the doctor's own folder is refused, an export a kill
interrupted is recovered, and an unwritable target fails before the merge."""
from __future__ import annotations

import copy

import pytest
import torch

from fastdoctor.adapters import AdapterDoctor
from fastdoctor.llmdoctor import doctor as doctor_lib
from fastdoctor.lora import attach_lora
from conftest import tiny_model


@pytest.fixture
def adapter_doctor(tmp_path):
    patient = tiny_model("llama", seed=5)
    doctor = doctor_lib.Doctor(attach_lora(copy.deepcopy(patient), rank=4))
    with torch.no_grad():
        for n, p in doctor.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return patient, doctor_lib.save_doctor(doctor.eval(), tmp_path / "doctor")


def test_an_existing_folder_of_the_users_is_refused_and_kept(adapter_doctor, tmp_path):
    patient, path = adapter_doctor
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="exists and is not an earlier export"):
        doctor_lib.export_merged(path, patient, target)
    assert (target / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor", "mine"]  # nothing staged or hidden


@pytest.mark.parametrize("where", ["same", "inside"])
def test_the_doctors_own_folder_is_refused(adapter_doctor, where):
    patient, path = adapter_doctor
    target = path if where == "same" else path / "merged"
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(ValueError, match="is the doctor's own folder"):
        doctor_lib.export_merged(path, patient, target)
    assert sorted(p.name for p in path.iterdir()) == before
    assert doctor_lib.read_doctor_meta(path)["kind"] == "adapter"


def test_an_earlier_export_of_the_same_doctor_is_replaced(adapter_doctor, tmp_path):
    patient, path = adapter_doctor
    first = doctor_lib.export_merged(path, patient, tmp_path / "merged")
    again = doctor_lib.export_merged(path, patient, tmp_path / "merged")
    assert first == again and doctor_lib.read_doctor_meta(again)["kind"] == "model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor", "merged"]


def test_an_export_killed_between_its_renames_is_recovered(adapter_doctor, tmp_path):
    patient, path = adapter_doctor
    merged = doctor_lib.export_merged(path, patient, tmp_path / "merged")
    hidden = tmp_path / ".merged.old-killed"  # a kill after the first rename: the earlier export, hidden
    merged.rename(hidden)
    (tmp_path / ".merged.stage-killed").mkdir()  # and the new one, half written
    doctor_lib.export_merged(path, patient, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor", "merged"]
    assert doctor_lib.read_doctor_meta(tmp_path / "merged")["kind"] == "model"


def test_an_unwritable_target_fails_before_the_merge(adapter_doctor, tmp_path, monkeypatch):
    patient, path = adapter_doctor
    (tmp_path / "a-file").write_text("not a folder")
    merges = []
    monkeypatch.setattr(AdapterDoctor, "merged_model", lambda self, p: merges.append(1))
    with pytest.raises(OSError):
        doctor_lib.export_merged(path, patient, tmp_path / "a-file" / "merged")
    assert merges == []


def test_the_cli_refuses_an_existing_folder_with_a_message(tmp_path):
    from conftest import run_cli

    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    result = run_cli("export", "--doctor", "bundled:positivity", "--merged", str(target))
    assert result.returncode == 1 and "exists and is not an earlier export" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (target / "notes.txt").read_text() == "my notes"
    from fastdoctor.doctors import bundled_doctor

    own = bundled_doctor("positivity")
    before = sorted(p.name for p in own.iterdir())
    same = run_cli("export", "--doctor", "bundled:positivity", "--merged", str(own))
    assert same.returncode == 1 and "is the doctor's own folder" in same.stderr, same.stderr
    assert sorted(p.name for p in own.iterdir()) == before
