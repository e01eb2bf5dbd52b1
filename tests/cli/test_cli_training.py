"""`fastdoctor train` end to end on tiny models that use the default patient's tokenizer: TFPO and GenARM
doctors that `fastdoctor generate` then takes, the small (distilled) init, and refusals of rewards made
with another tokenizer."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def rewards_file(model_folders, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("rewards")
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"Situation {i}", "chosen": "What a lovely day, cheer up!",
                                         "rejected": "Terrible. Nothing works."}) + "\n" for i in range(6)))
    out = root / "r.safetensors"
    result = run_cli("rewards", "--data", str(prefs), "--out", str(out), "--patient", str(model_folders["patient"]),
                     "--theta", "0.2")
    assert result.returncode == 0, result.stderr
    return out


TRAIN = ("--steps", "3", "--batch-size", "2", "--log-every", "1", "--device", "cpu")


@pytest.mark.parametrize("method", ["tfpo", "genarm"])
def test_train_writes_a_doctor_that_generate_takes(model_folders, rewards_file, tmp_path, method):  # noqa: F811
    out = tmp_path / method
    result = run_cli("train", "--rewards", str(rewards_file), "--out", str(out), "--patient",
                     str(model_folders["patient"]), "--method", method, "--lora-rank", "2", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert f"[{method}] step=3/3" in result.stderr
    assert len((out / "log.jsonl").read_text().splitlines()) == 3 and (out / "loss.png").exists()
    meta = json.loads((out / "doctor/doctor.json").read_text())
    assert meta["info"]["method"] == method
    if method == "tfpo":  # the reference flow by default: its reference log-probs first, and no position ramp
        assert "[tfpo] reference log-probs of" in result.stderr and "value ramp" not in result.stderr
        assert not meta["value_ramp"] and meta["info"]["settings"]["flow"] == "reference"
        assert meta["info"]["decoding"] == {"convention": "advantage"}
        assert (out / "reference_logp.safetensors").exists()
    gen = run_cli("generate", "--prompt", "Hello", "--patient", str(model_folders["patient"]), "--doctor",
                  str(out / "doctor"), "--beta", "1", "--max-new-tokens", "4", "--device", "cpu")
    assert gen.returncode == 0, gen.stderr


def test_train_with_the_rewards_flow_fits_the_value_ramp(model_folders, rewards_file, tmp_path):  # noqa: F811
    out = tmp_path / "rewards_flow"
    result = run_cli("train", "--rewards", str(rewards_file), "--out", str(out), "--patient",
                     str(model_folders["patient"]), "--flow", "rewards", "--lora-rank", "2", *TRAIN)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "doctor/doctor.json").read_text())
    assert meta["value_ramp"] and "[tfpo] value ramp: slope=" in result.stderr
    assert meta["info"]["value_ramp_fit"]["subtb_after"] <= meta["info"]["value_ramp_fit"]["subtb_before"]
    assert meta["info"]["settings"]["flow"] == "rewards" and meta["info"]["decoding"] == {"convention": "normalised"}
    assert "reference log-probs" not in result.stderr


def test_train_small_doctor_distils_first(model_folders, rewards_file, tmp_path):  # noqa: F811
    out = tmp_path / "small"
    result = run_cli("train", "--rewards", str(rewards_file), "--out", str(out), "--patient",
                     str(model_folders["patient"]), "--init", "small", "--layers", "1", "--keep-last", "1",
                     "--distill-steps", "2", "--distill-samples", "1", "--no-value-ramp", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "[distill] step=2/2" in result.stderr and "[tfpo] step=3/3" in result.stderr
    assert "value ramp" not in result.stderr and not json.loads((out / "doctor/doctor.json").read_text())["value_ramp"]
    assert json.loads((out / "doctor/config.json").read_text())["num_hidden_layers"] == 1


def test_train_refuses_rewards_from_another_tokenizer(model_folders, rewards_file, tmp_path):  # noqa: F811
    result = run_cli("train", "--rewards", str(rewards_file), "--out", str(tmp_path / "x"), "--patient",
                     str(model_folders["other"]), *TRAIN)
    assert result.returncode != 0
    assert "computed with another tokenizer" in result.stderr


def test_train_refuses_a_file_that_is_not_a_rewards_file(model_folders, tmp_path):  # noqa: F811
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not safetensors")
    result = run_cli("train", "--rewards", str(bogus), "--out", str(tmp_path / "x"), "--patient",
                     str(model_folders["patient"]), *TRAIN)
    assert result.returncode != 0 and "not a readable safetensors file" in result.stderr
