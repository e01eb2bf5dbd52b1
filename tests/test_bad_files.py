"""What the core refuses or repairs on disk, in one place: non-finite training, damaged or mismatched
checkpoints, a cut-short log, a commit killed between its two renames, pickle-only model folders, damaged
JSON and JSONL (issue 15's probe cases for train.py, files.py and models.py)."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastdoctor
from fastdoctor import files
from fastdoctor.train import TrainConfig, train


def linear_model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


EXAMPLES = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(8)]


def mse(model, batch):
    x = torch.stack(batch)
    return (model(x) ** 2).mean(), {}


def config(steps=4):
    return TrainConfig(steps=steps, batch_size=2, lr=1e-2, warmup_steps=0, log_every=1, checkpoint_every=1)


def test_a_non_finite_loss_stops_training_at_its_step_and_saves_nothing_after(tmp_path):
    calls = []

    def loss(model, batch):
        calls.append(1)
        value, metrics = mse(model, batch)
        return (value * float("nan") if len(calls) == 3 else value), metrics

    model = linear_model()
    with pytest.raises(FloatingPointError, match="not finite at step 3"):
        train(model, EXAMPLES, lambda b: loss(model, b), config(), tmp_path)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2  # the last good step
    weights = load_file(str(tmp_path / "checkpoint" / "trainable.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_an_infinite_gradient_is_caught_too(tmp_path):
    model = linear_model()

    def loss(batch):
        value, metrics = mse(model, batch)
        return value + 0 * model.weight.sum() * float("inf"), metrics  # finite-looking graph, inf gradient

    with pytest.raises(FloatingPointError, match="at step 1"):
        train(model, EXAMPLES, loss, config(), tmp_path)


def trained(tmp_path, steps=2):
    model = linear_model()
    train(model, EXAMPLES, lambda b: mse(model, b), config(), tmp_path, stop_after=steps)
    return tmp_path / "checkpoint"


def resume(tmp_path):
    model = linear_model()
    return train(model, EXAMPLES, lambda b: mse(model, b), config(), tmp_path)


def test_a_checkpoint_tensor_of_another_shape_is_refused(tmp_path):
    checkpoint = trained(tmp_path)
    weights = load_file(str(checkpoint / "trainable.safetensors"))
    weights["weight"] = torch.zeros(1)  # broadcast into [1, 3] would have "worked"
    save_file(weights, str(checkpoint / "trainable.safetensors"))
    with pytest.raises(ValueError, match=r"trainable.safetensors: weight is \(1,\), the model's is \(1, 3\)"):
        resume(tmp_path)


@pytest.mark.parametrize("step", [0, 99, "2", True])
def test_a_checkpoint_step_outside_the_run_is_refused(tmp_path, step):
    checkpoint = trained(tmp_path)
    state = json.loads((checkpoint / "state.json").read_text())
    state["step"] = step
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="outside this run's 1..4"):
        resume(tmp_path)


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    checkpoint = trained(tmp_path)
    weights = load_file(str(checkpoint / "trainable.safetensors"))
    weights["bias"] = torch.full_like(weights["bias"], float("nan"))
    save_file(weights, str(checkpoint / "trainable.safetensors"))
    with pytest.raises(ValueError, match="bias holds NaN or inf"):
        resume(tmp_path)


def test_a_cut_short_last_log_line_is_dropped_with_a_warning(tmp_path):
    trained(tmp_path)
    with (tmp_path / "log.jsonl").open("a") as handle:
        handle.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match="dropped a cut-short last line"):
        history = resume(tmp_path)
    assert [r["step"] for r in history] == [1, 2, 3, 4]


def test_a_damaged_log_line_before_the_last_is_an_error(tmp_path):
    trained(tmp_path)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    (tmp_path / "log.jsonl").write_text("\n".join(["{oops", *lines]) + "\n")
    with pytest.raises(ValueError, match=r"log.jsonl:1: damaged log line"):
        resume(tmp_path)


def test_a_commit_killed_between_its_renames_keeps_the_previous_checkpoint(tmp_path):
    checkpoint = trained(tmp_path)
    # What a SIGKILL after the first rename leaves: no checkpoint/, the old one beside it, a staged new one.
    os.replace(checkpoint, tmp_path / ".checkpoint.old-abc123")
    (tmp_path / ".checkpoint.stage-def456").mkdir()
    history = resume(tmp_path)
    assert history[0]["step"] == 1 and len(history) == 4  # resumed from step 2, not restarted
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_committed_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with files.staged_directory(tmp_path / "out") as staging:
            (staging / "a.json").write_text("{}")
        files.write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_a_pickle_only_model_folder_is_refused_with_the_conversion(tmp_path):
    from conftest import tiny_model

    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()  # transformers 5 writes only safetensors: make the old format
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle-format weights .*save_pretrained"):
        fastdoctor.load_model(tmp_path)


@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "expected a JSON object, got list"),
    (b"\xff\xfe{", "corrupt"),
    ("{", "corrupt"),
])
def test_a_damaged_format_json_is_refused(tmp_path, content, match):
    path = tmp_path / "doctor.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        files.read_format_json(tmp_path, "doctor.json", "fastdoctor.doctor/1", "fastdoctor doctor")


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(ValueError, match=r"prefs.jsonl:2: not UTF-8"):
        list(files.read_jsonl_objects(pathlib.Path(path)))


def test_a_doctor_with_nan_weights_is_neither_saved_nor_loaded(tmp_path):
    from conftest import tiny_model
    from fastdoctor.llmdoctor import doctor as doctor_lib

    doc = doctor_lib.Doctor(tiny_model("llama"))
    with torch.no_grad():
        doc.value_head[0].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="save_doctor: value_head.0.bias holds NaN"):
        doctor_lib.save_doctor(doc, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with torch.no_grad():
        doc.value_head[0].bias.zero_()
    doctor_lib.save_doctor(doc, tmp_path / "d")
    from safetensors.torch import load_file
    head = load_file(str(tmp_path / "d" / "value_head.safetensors"))
    head["0.bias"] = torch.full_like(head["0.bias"], float("inf"))
    save_file(head, str(tmp_path / "d" / "value_head.safetensors"))
    with pytest.raises(ValueError, match="0.bias holds NaN or inf"):
        doctor_lib.load_doctor(tmp_path / "d")


def test_a_lone_surrogate_in_jsonl_names_the_line_and_field(tmp_path):
    from fastdoctor.files import read_jsonl_objects

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "hi", "chosen": "ok"}\n{"prompt": "hi", "chosen": "bad \\ud800 text"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: field 'chosen' holds a lone surrogate"):
        list(read_jsonl_objects(path))


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    import errno

    from fastdoctor.files import atomic_file, staged_directory

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"writing .*out.json: No space left on device"):
        with atomic_file(tmp_path / "out.json") as temporary:
            full(temporary)
    with pytest.raises(OSError, match=r"writing .*folder: No space left on device"):
        with staged_directory(tmp_path / "folder"):
            full()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left behind
