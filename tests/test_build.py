"""The installed package: build information, the CLI, torch.library registration and torch.compile."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

import fastdoctor
from fastdoctor import _C


def test_extension_comes_from_the_installed_package():
    module_path = pathlib.Path(_C.__file__)
    assert module_path.parent == pathlib.Path(fastdoctor.__file__).parent
    if os.environ.get("FASTDOCTOR_TEST_INSTALLED") == "1":  # set by tests/run.sh after installing the wheel
        assert "site-packages" in module_path.parts


def test_build_info():
    info = _C.build_info()
    assert info["version"] == fastdoctor.__version__
    assert info["cpu_kernels"] is True
    assert isinstance(info["cuda_compiled"], bool)


def test_env_command_reports_versions_and_kernels():
    out = subprocess.run([sys.executable, "-m", "fastdoctor.cli", "env"], capture_output=True, text=True, check=True)
    assert f"torch: {torch.__version__}" in out.stdout
    assert f"fastdoctor: {fastdoctor.__version__}" in out.stdout
    assert "CPU kernels: loaded" in out.stdout
    assert "ops run on: " + ("cuda" if torch.cuda.is_available() and _C.build_info()["cuda_compiled"] else "cpu") \
        in out.stdout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = "bfloat16" if fastdoctor.models.native_bf16(device) else "float32"
    assert f"generate dtype: {chosen} (" in out.stdout


def test_the_default_decode_dtype_follows_the_hardware():
    from fastdoctor.models import decode_dtype, native_bf16

    flags = pathlib.Path("/proc/cpuinfo").read_text().split() if pathlib.Path("/proc/cpuinfo").is_file() else None
    if flags is not None:  # torch's probe and the kernel's CPU flags agree
        assert native_bf16("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert decode_dtype("cpu") == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    assert native_bf16("meta") is False


def op_args(batch=3, vocab=50, device="cpu"):
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(batch, vocab, generator=g).to(device),
              torch.randn(batch, vocab, generator=g).to(torch.bfloat16).to(device)]
    return (logits, torch.rand(batch, 2, generator=g).to(device), torch.full((batch,), 0.8, device=device),
            torch.tensor([0, 5, 10], device=device), torch.tensor([1.0, 0.9, 0.5], device=device),
            torch.arange(batch, device=device), torch.full((batch,), 4, device=device), -1)


def test_opcheck():
    torch.library.opcheck(torch.ops.fastdoctor.mixed_sampling_from_logits.default, op_args())


def test_torch_compile_fullgraph():
    def step(*args):
        tokens, logprobs = torch.ops.fastdoctor.mixed_sampling_from_logits(*args)
        return tokens + 1, logprobs * 2

    args = op_args()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_tokens, eager_logprobs = step(*args)
    tokens, logprobs = compiled(*args)
    assert torch.equal(tokens, eager_tokens) and torch.equal(logprobs, eager_logprobs)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        args = op_args()
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                          ([mode.from_tensor(t) for t in a] if isinstance(a, list) else a) for a in args)
        tokens, logprobs = torch.ops.fastdoctor.mixed_sampling_from_logits(*fake_args)
    assert tokens.shape == (3,) and tokens.dtype == torch.int64
    assert logprobs.shape == (3,) and logprobs.dtype == torch.float32
