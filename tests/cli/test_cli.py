"""The `fastdoctor generate` command, end to end, on tiny models that use the default patient's tokenizer."""
from __future__ import annotations

import re

import pytest

import fastdoctor
from conftest import run_cli


def test_generate_streams_text_and_reports_tokens_per_second(model_folders):
    out = run_cli("generate", "--prompt", "Hello there", "--patient", str(model_folders["patient"]),
                  "--doctor", str(model_folders["doctor"]), "--beta", "0.5", "--max-new-tokens", "6", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "nothing was streamed"
    expected = "bfloat16" if fastdoctor.models.native_bf16("cpu") else "float32"  # --dtype auto
    assert "new tokens in" in out.stderr and f"tokens/s (2 model(s), cpu, {expected})" in out.stderr
    forced = run_cli("generate", "--prompt", "Hello there", "--patient", str(model_folders["patient"]),
                     "--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32")
    assert forced.returncode == 0 and "(1 model(s), cpu, float32)" in forced.stderr, forced.stderr


def test_generate_rejects_a_doctor_with_another_tokenizer(model_folders):
    out = run_cli("generate", "--prompt", "Hi", "--patient", str(model_folders["patient"]), "--doctor",
                  str(model_folders["other"]), "--max-new-tokens", "2", "--device", "cpu")
    assert out.returncode != 0
    assert "its tokenizer differs from the patient's" in out.stderr


def test_generate_needs_one_beta_per_doctor(model_folders):
    out = run_cli("generate", "--prompt", "Hi", "--patient", str(model_folders["patient"]), "--doctor",
                  str(model_folders["doctor"]), "--beta", "1", "--beta", "2", "--device", "cpu")
    assert out.returncode != 0 and "--beta: give one per --doctor" in out.stderr


def test_generate_strength_is_the_normalised_alpha_and_beta(model_folders):
    common = ["generate", "--prompt", "Hi", "--patient", str(model_folders["patient"]), "--doctor",
              str(model_folders["doctor"]), "--max-new-tokens", "6", "--device", "cpu", "--dtype", "float32"]
    by_strength = run_cli(*common, "--strength", "3")
    explicit = run_cli(*common, "--alpha", "0.25", "--beta", "0.75")
    assert by_strength.returncode == 0 and explicit.returncode == 0, by_strength.stderr + explicit.stderr
    assert by_strength.stdout == explicit.stdout and by_strength.stdout.strip()
    both = run_cli(*common, "--strength", "1", "--beta", "1")
    assert both.returncode != 0 and "--strength replaces --alpha and --beta" in both.stderr
    negative = run_cli(*common, "--strength", "-1")
    assert negative.returncode != 0 and "--strength: guidance weights: expected finite numbers >= 0" in negative.stderr
    two = run_cli(*common, "--strength", "1", "--strength", "2")
    assert two.returncode != 0 and "--strength: give one per --doctor (1), got 2" in two.stderr


def test_generate_strength_follows_the_doctors_recorded_convention(model_folders, tmp_path):
    """A doctor whose doctor.json records the advantage convention (a reference-flow TFPO doctor) decodes
    --strength g as alpha = 1 - g, beta = g; --convention overrides the record; doctors that record different
    conventions need --convention."""
    import json
    import shutil

    recorded = tmp_path / "advantage_doctor"
    shutil.copytree(model_folders["doctor"], recorded)
    (recorded / "doctor.json").write_text(json.dumps({"format": "fastdoctor.doctor/1", "kind": "model",
                                                      "info": {"decoding": {"convention": "advantage"}}}))
    common = ["generate", "--prompt", "Hi", "--patient", str(model_folders["patient"]), "--max-new-tokens", "6",
              "--device", "cpu", "--dtype", "float32"]
    by_strength = run_cli(*common, "--doctor", str(recorded), "--strength", "3")
    explicit = run_cli(*common, "--doctor", str(recorded), "--alpha", "-2", "--beta", "3")
    assert by_strength.returncode == 0 and explicit.returncode == 0, by_strength.stderr + explicit.stderr
    assert by_strength.stdout == explicit.stdout and by_strength.stdout.strip()
    overridden = run_cli(*common, "--doctor", str(recorded), "--strength", "3", "--convention", "normalised")
    normalised = run_cli(*common, "--doctor", str(recorded), "--alpha", "0.25", "--beta", "0.75")
    assert overridden.stdout == normalised.stdout and overridden.stdout != by_strength.stdout
    mixed = run_cli(*common, "--doctor", str(recorded), "--doctor", str(model_folders["doctor"]), "--strength", "1",
                    "--strength", "1")
    assert mixed.returncode != 0 and "record different conventions" in mixed.stderr
    (recorded / "doctor.json").write_text(json.dumps({"format": "fastdoctor.doctor/1",
                                                      "info": {"decoding": {"convention": "sideways"}}}))
    unknown = run_cli(*common, "--doctor", str(recorded), "--strength", "1")
    assert unknown.returncode != 0 and "unknown decoding convention 'sideways'" in unknown.stderr


def test_rewards_command_writes_a_rewards_file(model_folders, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "Hi there", "chosen": "Hello, lovely to see you!", "rejected": "What."}\n'
                     '{"prompt": "It rains", "chosen": "Cosy weather for tea!", "rejected": "Awful."}\n')
    out = tmp_path / "r.safetensors"
    result = run_cli("rewards", "--data", str(prefs), "--out", str(out), "--patient", str(model_folders["patient"]),
                     "--faces", "positivity", "--theta", "0.2")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "non-zero rewards" in result.stdout
    from fastdoctor.llmdoctor import rewards

    tensors, meta = rewards.load_rewards(out)
    assert tensors["chosen_ids"].shape[0] == 2 and meta["settings"]["theta"] == 0.2


def test_rewards_command_names_the_bad_line(model_folders, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    result = run_cli("rewards", "--data", str(prefs), "--out", str(tmp_path / "r.safetensors"), "--patient",
                     str(model_folders["patient"]))
    assert result.returncode != 0 and "prefs.jsonl:2: field 'rejected' is missing" in result.stderr


@pytest.mark.parametrize("args,match", [
    (["rewards", "--data", "bundled:train", "--out", "r.safetensors", "--limit", "0"], "--limit: expected a whole number >= 1"),
    (["rewards", "--data", "bundled:train", "--out", "r.safetensors", "--limit", "-2"], "--limit: expected a whole"),
    (["taro", "train-rm", "--steps", "1", "--out", "rm", "--limit", "0"], "--limit: expected a whole number"),
])
def test_zero_and_negative_limits_are_errors(args, match):
    out = run_cli(*args)
    assert out.returncode == 2 and re.search(match, out.stderr), out.stderr


def test_an_unwritable_out_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["rewards", "--data", "bundled:train"], ["train", "--rewards", "r.safetensors"],
                 ["taro", "train-router", "--steps", "1", "--rm", "x"]):
        out = run_cli(*args, "--out", str(blocker / "inside"))
        assert out.returncode == 2 and "is not a writable folder" in out.stderr, out.stderr


def test_a_prompt_that_is_not_utf8_names_the_argument_and_the_byte():
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fastdoctor.cli", "generate", "--prompt", b"caf\xe9".decode(
        "utf-8", "surrogateescape")], capture_output=True, text=True, env={**os.environ, "PYTHONUTF8": "1"})
    assert result.returncode == 2 and "argument --prompt: not UTF-8 text (byte 0xe9 at character 3)" in result.stderr
