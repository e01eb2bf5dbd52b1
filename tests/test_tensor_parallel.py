"""A patient that transformers shards with its own tensor-parallel plan (DistributedConfig(tp_size=2), two gloo
processes under torchrun): generate runs unchanged on every rank and gives the single-process tokens, alone and
with a separate doctor; an adapter doctor of the sharded patient is refused with a clear error (not yet run)."""
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
adapter = fastdoctor.load_doctor({adapter!r}, single)
try:
    fastdoctor.generate(sharded, ids, attention_mask=mask, doctors=[adapter], max_new_tokens=2)
except ValueError as error:
    assert "adapter doctor of a tensor-parallel patient" in str(error), error
else:
    raise AssertionError("an adapter doctor of a sharded patient was not refused")
print("rank", rank, "ok", flush=True)
"""


@pytest.mark.slow
def test_a_tensor_parallel_patient_decodes_like_one_process(tmp_path):
    import torch

    from fastdoctor import adapters, weights
    from fastdoctor.lora import attach_lora
    from conftest import tiny_model

    patient = tiny_model("llama", seed=0)
    patient.save_pretrained(tmp_path / "patient")
    tiny_model("llama", seed=1).save_pretrained(tmp_path / "doctor")
    lm = attach_lora(weights.weight_sharing_copy(patient), rank=4)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    (tmp_path / "adapter").mkdir()
    adapters.save_adapter(lm.eval(), tmp_path / "adapter")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(HERE), patient=str(tmp_path / "patient"),
                                    doctor=str(tmp_path / "doctor"), adapter=str(tmp_path / "adapter")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 ok" in result.stdout and "rank 1 ok" in result.stdout
