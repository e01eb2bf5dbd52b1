"""The trainer: resume equals an uninterrupted run, checkpoints refuse corruption and mismatches, the logs,
the schedule, and a 2-process gloo run (torchrun) that makes the same update as one process."""
from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from fastdoctor.llmdoctor import doctor as doctor_lib
from fastdoctor.llmdoctor import tfpo
from fastdoctor.train import TrainConfig, batch_indices, train
from conftest import tiny_model

from conftest import synthetic_examples

HERE = pathlib.Path(__file__).resolve().parent


def _setup(seed=0):
    doc = doctor_lib.Doctor(tiny_model("llama", seed=seed), value_hidden=8)
    # Dropout makes the RNG state part of what a resume must restore.
    doc.lm.config.attention_dropout = 0.1
    for layer in doc.lm.model.layers:
        layer.self_attn.attention_dropout = 0.1
    loss = functools.partial(tfpo.tfpo_batch_loss, doc, settings=tfpo.TFPOSettings(flow="rewards"))
    return doc, loss


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


CONFIG = dict(steps=6, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=2, log_every=1, checkpoint_every=100)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    examples = synthetic_examples(10)
    doc, loss = _setup()
    full = train(doc, examples, loss, TrainConfig(**CONFIG), tmp_path / "full")
    doc2, loss2 = _setup()
    train(doc2, examples, loss2, TrainConfig(**CONFIG), tmp_path / "split", stop_after=3)
    assert json.loads((tmp_path / "split/checkpoint/state.json").read_text())["step"] == 3
    doc3, loss3 = _setup()  # a fresh process would rebuild the model from its initialisation, then resume
    resumed = train(doc3, examples, loss3, TrainConfig(**CONFIG), tmp_path / "split")
    for name, value in _params(doc).items():
        torch.testing.assert_close(value, _params(doc3)[name], atol=0, rtol=0, msg=name)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert len((tmp_path / "split/log.jsonl").read_text().splitlines()) == 6
    assert (tmp_path / "split/loss.png").stat().st_size > 1000


def test_training_lowers_the_loss_and_logs_parseable_lines(tmp_path, capsys):
    doc, loss = _setup()
    history = train(doc, synthetic_examples(16), loss,
                    TrainConfig(**{**CONFIG, "steps": 40, "lr": 3e-3, "log_every": 5}), tmp_path / "run")
    first, last = (sum(r["loss"] for r in part) / 5 for part in (history[:5], history[-5:]))
    assert last < 0.5 * first, (first, last)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[train] ")]
    assert len(lines) == 8
    fields = dict(kv.split("=") for kv in lines[-1].split()[1:])
    assert fields["step"] == "40/40" and float(fields["loss"]) == pytest.approx(history[-1]["loss"], rel=1e-3)
    assert {"subtb", "value", "lr", "grad_norm", "tokens_per_s"} <= set(history[-1])


def test_schedule_warms_up_then_decays():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    rates = [config.learning_rate(s) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_batches_cover_every_example_once_per_epoch():
    seen = [i for step in range(5) for i in batch_indices(step, 10, 2, seed=3)]
    assert sorted(seen) == list(range(10))
    assert seen != [i for step in range(5) for i in batch_indices(step, 10, 2, seed=4)]


def test_bad_input_and_bad_checkpoints(tmp_path):
    doc, loss = _setup()
    with pytest.raises(ValueError, match="training set is empty"):
        train(doc, [], loss, TrainConfig(**CONFIG), tmp_path / "a")
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    examples = synthetic_examples(6)
    train(doc, examples, loss, TrainConfig(**CONFIG), tmp_path / "b", stop_after=1)
    with pytest.raises(ValueError, match="another model, data set or configuration"):
        train(doc, examples, loss, TrainConfig(**{**CONFIG, "lr": 5e-4}), tmp_path / "b")
    (tmp_path / "b/checkpoint/trainable.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        train(doc, examples, loss, TrainConfig(**CONFIG), tmp_path / "b")
    train(doc, examples, loss, TrainConfig(**CONFIG), tmp_path / "b", resume=False, stop_after=1)  # starts over


WORKER = """
import functools, sys, torch
sys.path.insert(0, {tests!r})
from fastdoctor.llmdoctor import doctor as doctor_lib, tfpo
from fastdoctor.train import TrainConfig, init_distributed, shutdown_distributed, train
from conftest import tiny_model
from conftest import synthetic_examples
from safetensors.torch import save_file
rank, world = init_distributed()
doc = doctor_lib.Doctor(tiny_model("llama", seed=0), value_hidden=8)
loss = functools.partial(tfpo.tfpo_batch_loss, doc, settings=tfpo.TFPOSettings(flow="rewards"))
train(doc, synthetic_examples(10), loss, TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1,
      micro_batch_size={micro}), {out!r})
if rank == 0:
    save_file({{n: p.detach().contiguous() for n, p in doc.named_parameters()}}, {out!r} + "/params.safetensors")
shutdown_distributed()
"""


def _run(tmp_path, name, nproc, micro):
    script = tmp_path / f"{name}.py"
    out = tmp_path / name
    script.write_text(WORKER.format(tests=str(HERE), micro=micro, out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(script)] if nproc > 1 else [sys.executable, str(script)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    return load_file(str(out / "params.safetensors"))


@pytest.mark.slow
def test_two_gloo_processes_make_the_single_process_update(tmp_path):
    single = _run(tmp_path, "single", 1, micro=2)  # two micro-batches of 2, accumulated
    double = _run(tmp_path, "double", 2, micro=0)  # two processes with 2 examples each
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-6, rtol=1e-5, msg=name)
