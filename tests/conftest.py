"""Shared helpers: run the compiled op and the pure-PyTorch oracle on the same per-row parameters."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from fastdoctor import reference


def row_params(batch: int, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, step=0, device="cpu") -> dict:
    """Per-row parameter tensors in the dtypes the op takes; scalars are broadcast."""

    def full(value, dtype):
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=dtype)
        return torch.full((batch,), value, dtype=dtype, device=device)

    return {
        "temperature": full(temperature, torch.float32),
        "top_k": full(top_k, torch.int64),
        "top_p": full(top_p, torch.float32),
        "seed": full(seed, torch.int64),
        "step": full(step, torch.int64),
    }


def run_kernel_and_reference(logits, weights, params, vocab_size=None):
    """(kernel tokens, kernel logprobs, reference tokens, reference logprobs), all on the CPU."""
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits(logits, weights, vocab_size=vocab_size, **params)
    cpu_logits = [z.cpu() for z in logits]
    cpu_params = {k: v.cpu() for k, v in params.items()}
    ref_tokens, ref_logprobs = reference.mixed_sampling_from_logits(
        cpu_logits, weights.cpu(), cpu_params["temperature"], cpu_params["top_k"], cpu_params["top_p"],
        cpu_params["seed"], cpu_params["step"], vocab_size)
    return tokens.cpu(), logprobs.cpu(), ref_tokens, ref_logprobs


def random_logits(batch: int, vocab: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 3.0,
                  device: str = "cpu") -> torch.Tensor:
    return (torch.randn(batch, vocab, generator=generator) * scale).to(dtype).to(device)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def cuda_available() -> bool:
    return torch.cuda.is_available()
