"""A patient that transformers shards with its own tensor-parallel plan (DistributedConfig(tp_size=2), two gloo
processes under torchrun): generate runs unchanged on every rank and gives the single-process tokens, alone, with
a separate doctor, and with adapter doctors stacked into the sharded forward (their LoRA tensors split by the
patient's plan: B by output rows for column-parallel projections, A by input columns for row-parallel ones,
whose partial deltas ride the projection's own all-reduce)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent

WORKER = """
import sys
sys.path.insert(0, {tests!r})
import torch
import fastdoctor
from transformers import AutoModelForCausalLM, DistributedConfig
from conftest import left_padded_prompts

rank = int(__import__("os").environ["RANK"])
single = AutoModelForCausalLM.from_pretrained({patient!r}).eval()
sharded = AutoModelForCausalLM.from_pretrained({patient!r}, distributed_config=DistributedConfig(tp_size=2)).eval()
assert type(sharded.model.layers[0].self_attn.q_proj.weight).__name__ == "DTensor"
doctor = AutoModelForCausalLM.from_pretrained({doctor!r}).eval()
ids, mask = left_padded_prompts()
for sampling in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=[3, 4, 5])):
    for doctors in ([], [doctor]):
        kwargs = dict(attention_mask=mask, doctors=doctors, betas=[0.7] * len(doctors), max_new_tokens=6, **sampling)
        assert torch.equal(fastdoctor.generate(sharded, ids, **kwargs), fastdoctor.generate(single, ids, **kwargs))
first = fastdoctor.load_doctor({adapter!r}, sharded)  # the fingerprint of the gathered weights matches
second = fastdoctor.load_doctor({adapter2!r}, single)
from fastdoctor import shared_base
assert shared_base.plan(sharded, [first, doctor, second]).stacked == (0, 2)
for sampling in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=[3, 4, 5])):
    for doctors in ([first], [first, second], [first, doctor, second]):
        kwargs = dict(attention_mask=mask, doctors=doctors, betas=[0.7] * len(doctors), max_new_tokens=6, **sampling)
        ours, reference = fastdoctor.generate(sharded, ids, **kwargs), fastdoctor.generate(single, ids, **kwargs)
        assert torch.equal(ours, reference), (len(doctors), sampling, ours, reference)
# a separate doctor sharded by its own plan
sharded_doctor = AutoModelForCausalLM.from_pretrained({doctor!r}, distributed_config=DistributedConfig(tp_size=2)).eval()
assert type(sharded_doctor.model.layers[0].self_attn.q_proj.weight).__name__ == "DTensor"
mixed = dict(attention_mask=mask, betas=[0.7, 0.4], max_new_tokens=6, temperature=1.0, seed=[3, 4, 5])
assert torch.equal(fastdoctor.generate(sharded, ids, doctors=[sharded_doctor, first], **mixed),
                   fastdoctor.generate(single, ids, doctors=[doctor, first], **mixed))
# per-row weights, EOS mid-batch (row 0 stops at its third token), and the TARo router
both = [first, doctor]
rows = dict(attention_mask=mask, doctors=both, alpha=[1.0, 0.5, 0.2], betas=[[0.3, 0.9, 1.4], [0.5, 0.1, 0.0]],
            max_new_tokens=6, temperature=0.0)
eos = int(fastdoctor.generate(single, ids, **rows)[0, ids.shape[1] + 2])
rows.update(eos_token_id=eos, pad_token_id=0)
assert torch.equal(fastdoctor.generate(sharded, ids, **rows), fastdoctor.generate(single, ids, **rows))
from fastdoctor import taro
torch.manual_seed(0)
router = taro.Router(single.config.vocab_size, k=5, embed_dim=4, hidden=16)
with torch.no_grad():
    router.out.weight.normal_(0.0, 1.0)
routed = [fastdoctor.generate(model, ids, attention_mask=mask, doctors=[first], router=taro.RoutedSteering(router),
                              temperature=1.0, seed=[1, 2, 3], max_new_tokens=6) for model in (sharded, single)]
assert torch.equal(routed[0], routed[1])
parallel = {{stacked.parallel for entry in shared_base._POOL[sharded] for _, stacked in entry.built.projections}}
assert parallel == {{"col", "row"}}, parallel  # q/k/v/gate/up split by output rows, o/down by input columns
from fastdoctor.sequences import pack_sequences
batch = pack_sequences([torch.tensor([5, 6, 7])], [torch.tensor([8, 9, 10])])
with torch.no_grad():
    for a, b in zip(shared_base.teacher_forced_logits(sharded, [first, second], batch),
                    shared_base.teacher_forced_logits(single, [first, second], batch)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
try:
    fastdoctor.generate(sharded, ids, attention_mask=mask, doctors=[first], max_new_tokens=2, compile=True)
except ValueError as error:
    assert "compile: the stacked forward of a tensor-parallel patient runs eagerly" in str(error), error
else:
    raise AssertionError("compile=True with a sharded stacked forward was not refused")
torch.manual_seed(100 + rank)  # each rank's own generator differs: seed=None takes rank 0's draws everywhere
drawn = fastdoctor.generate(sharded, ids, attention_mask=mask, doctors=[first], temperature=1.0, max_new_tokens=6)
everyone = [None, None]
torch.distributed.all_gather_object(everyone, drawn.tolist())
assert everyone[0] == everyone[1]
print(f"rank {{rank}} ok", flush=True)  # one write: the two ranks share the pipe
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])  # Qwen2's q/k/v carry biases: split with the rows
def test_a_tensor_parallel_patient_decodes_like_one_process(tmp_path, family):
    from fastdoctor import adapters
    from conftest import random_lora, tiny_model

    patient = tiny_model(family, seed=0)
    patient.save_pretrained(tmp_path / "patient")
    tiny_model(family, seed=1).save_pretrained(tmp_path / "doctor")
    for name, seed in (("adapter", 1), ("adapter2", 2)):
        (tmp_path / name).mkdir()
        adapters.save_adapter(random_lora(patient, seed=seed), tmp_path / name)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(HERE), patient=str(tmp_path / "patient"), doctor=str(tmp_path / "doctor"),
                                    adapter=str(tmp_path / "adapter"), adapter2=str(tmp_path / "adapter2")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 ok" in result.stdout and "rank 1 ok" in result.stdout


@pytest.mark.slow
def test_the_cli_decodes_under_torchrun_and_prints_once(model_folders, tmp_path):
    """`torchrun --nproc_per_node 2 -m fastdoctor.cli generate --tp 2`: the single-process text, printed once."""
    from fastdoctor import adapters
    from fastdoctor.models import load_model
    from conftest import random_lora

    patient, _ = load_model(model_folders["patient"])
    (tmp_path / "adapter").mkdir()
    adapters.save_adapter(random_lora(patient, seed=1), tmp_path / "adapter")
    args = ["generate", "--patient", str(model_folders["patient"]), "--doctor", str(tmp_path / "adapter"),
            "--prompt", "My bus was late.", "--max-new-tokens", "6", "--temperature", "0", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "fastdoctor.cli", *args], capture_output=True, text=True, env=env)
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "fastdoctor.cli", *args, "--tp", "2"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert single.returncode == 0 and sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout == single.stdout and single.stdout.strip()  # the streamed text, once
    assert sharded.stderr.count("new tokens in") == 1 and "2 tensor-parallel ranks" in sharded.stderr


@pytest.mark.parametrize("env,tp,family,match", [
    ({}, 2, "llama", "start it with torchrun --nproc_per_node 2"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, 3, "llama", "does not divide the 2 processes torchrun started"),
    ({"RANK": "0", "WORLD_SIZE": "3"}, 3, "llama", r"does not divide the model's num_attention_heads \(4\)"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, 2, "gpt2", "no tensor-parallel plan for gpt2 models"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, 0, "llama", "tp_size: expected an int >= 1, got 0"),
])
def test_tensor_parallel_loading_refuses_what_it_cannot_shard(monkeypatch, env, tp, family, match):
    from fastdoctor.models import _check_tensor_parallel
    from conftest import tiny_model

    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        _check_tensor_parallel(tiny_model(family).config, tp)


def test_the_cli_refuses_tp_without_torchrun(model_folders):
    from conftest import run_cli

    result = run_cli("generate", "--patient", str(model_folders["patient"]), "--prompt", "hi", "--tp", "2")
    assert result.returncode == 1 and "--tp: tp_size=2: tensor parallelism runs one process per shard" in result.stderr
