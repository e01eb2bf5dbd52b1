"""The CUDA kernel against the reference and the CPU kernel; CUDA-graph capture. Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

import fastdoctor
from fastdoctor import _C
from conftest import random_logits, run_kernel_and_reference
from conftest import SHAPES, varied_row_params
from conftest import DRAWS, assert_follows, exact_distribution

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]


def test_cuda_kernels_were_compiled():
    assert _C.build_info()["cuda_compiled"], "a CUDA device is present but fastdoctor was built without CUDA"


@pytest.mark.parametrize("vocab,batch,dtypes", SHAPES)
def test_cuda_matches_reference_and_cpu(vocab, batch, dtypes, generator):
    logits = [random_logits(batch, vocab, dt, generator, scale=2.0 + k) for k, dt in enumerate(dtypes)]
    weights = torch.rand(batch, len(dtypes), generator=generator) * 1.5
    params = varied_row_params(batch, vocab, generator)
    cuda_logits = [z.cuda() for z in logits]
    cuda_params = {k: v.cuda() for k, v in params.items()}
    tokens, logprobs, ref_tokens, ref_logprobs = run_kernel_and_reference(cuda_logits, weights.cuda(), cuda_params)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-4, atol=1e-4)
    cpu_tokens, _ = fastdoctor.mixed_sampling_from_logits(logits, weights, **params)
    assert torch.equal(tokens, cpu_tokens)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (1.3, 0, 0.8), (1.0, 20, 0.9)])
def test_cuda_draws_follow_the_exact_distribution(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(99)
    z = torch.randn(1, 111, generator=g) * 1.5
    probs = exact_distribution([z], torch.ones(1, 1), temperature, top_k, top_p)
    tokens, _ = fastdoctor.mixed_sampling_from_logits(
        [z.cuda().expand(DRAWS, 111)], [1.0], temperature=temperature, top_k=top_k, top_p=top_p,
        seed=torch.arange(DRAWS, device="cuda"), step=1)
    assert_follows(tokens.cpu(), probs)


def test_invalid_rows_on_cuda():
    z = torch.randn(3, 1000, device="cuda")
    z[1, 5] = float("nan")
    tokens, logprobs = fastdoctor.mixed_sampling_from_logits([z], [1.0], validate=False)
    assert tokens[1].item() == -1 and torch.isnan(logprobs[1]).item()
    with pytest.raises(ValueError, match=r"logits\[0\]: row 1 contains NaN"):
        fastdoctor.mixed_sampling_from_logits([z], [1.0])


def test_capture_in_a_cuda_graph_and_replay_with_new_seeds():
    batch, vocab = 8, 49152
    logits = [torch.randn(batch, vocab, device="cuda") * 3, torch.randn(batch, vocab, device="cuda").half()]
    weights = torch.rand(batch, 2, device="cuda")
    params = {"temperature": torch.full((batch,), 0.9, device="cuda"),
              "top_k": torch.tensor([0, 50] * 4, device="cuda"),
              "top_p": torch.tensor([0.9] * 8, device="cuda"),
              "seed": torch.arange(batch, device="cuda"), "step": torch.zeros(batch, dtype=torch.int64, device="cuda")}
    op = torch.ops.fastdoctor.mixed_sampling_from_logits
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up the caching allocator outside capture
            op(logits, weights, *params.values(), -1)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, logprobs = op(logits, weights, *params.values(), -1)
    for step in range(3):
        params["step"].fill_(step)
        graph.replay()
        eager_tokens, eager_logprobs = op(logits, weights, *params.values(), -1)
        assert torch.equal(tokens, eager_tokens)
        torch.testing.assert_close(logprobs, eager_logprobs)
