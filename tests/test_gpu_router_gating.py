"""routed_sampling_from_logits on CUDA against the reference and the CPU kernel; ties, a router too wide for
shared memory, invalid rows, exact sampling and CUDA-graph capture. Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import _C, ops, reference
from conftest import random_logits, row_params
from conftest import varied_row_params
from conftest import CASES, make_router, run_op, run_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]


def to_cuda(router: dict) -> dict:
    return {name: value.cuda() for name, value in router.items()}


def test_cuda_kernels_were_compiled():
    assert _C.build_info()["cuda_compiled"], "a CUDA device is present but fastdoctor was built without CUDA"


@pytest.mark.parametrize("batch,vocab,k,base_dtype,rm_dtype", CASES)
def test_cuda_matches_reference_and_cpu(batch, vocab, k, base_dtype, rm_dtype, generator):
    base = random_logits(batch, vocab, base_dtype, generator)
    rm = random_logits(batch, vocab, rm_dtype, generator, scale=2.0)
    router = make_router(vocab, k, d=8, hidden=24, generator=generator)
    params = varied_row_params(batch, vocab, generator)
    cuda_params = {n: v.cuda() for n, v in params.items()}
    tokens, logprobs, alpha = (t.cpu() for t in run_op(base.cuda(), rm.cuda(), to_cuda(router), cuda_params, k))
    ref_tokens, ref_logprobs, ref_alpha = run_reference(base, rm, router, params, k)
    cpu_tokens, _, cpu_alpha = run_op(base, rm, router, params, k)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    torch.testing.assert_close(alpha, cpu_alpha, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(tokens, cpu_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vocab,k", [(111, 5), (5000, 20), (5000, 64), (64, 64), (49152, 20)])
def test_cuda_ties_rank_by_the_lower_token_id(vocab, k, generator):
    base = torch.randint(0, 4, (6, vocab), generator=generator).float()
    rm = torch.randint(-2, 2, (6, vocab), generator=generator).to(torch.bfloat16)
    base[0] = 1.0
    base[1, ::2] = -0.0
    base[1, 1::2] = 0.0
    router = make_router(vocab, k, d=4, hidden=16, generator=generator)
    params = row_params(6, temperature=0.0)
    _, _, alpha = run_op(base.cuda(), rm.cuda(), to_cuda(router), {n: v.cuda() for n, v in params.items()}, k)
    ref_alpha = reference.router_alpha(base, rm, *router.values(), k=k)
    torch.testing.assert_close(alpha.cpu(), ref_alpha, rtol=0, atol=1e-5)


def test_router_too_wide_for_shared_memory(generator):
    """2K(d+1) = 25728 features: gathered on the fly instead of staged in shared memory."""
    base, rm = random_logits(5, 32000, torch.float32, generator), random_logits(5, 32000, torch.float16, generator)
    router = make_router(32000, 64, d=200, hidden=40, generator=generator)
    params = row_params(5, temperature=0.0)
    _, _, alpha = run_op(base.cuda(), rm.cuda(), to_cuda(router), {n: v.cuda() for n, v in params.items()}, 64)
    ref_alpha = reference.router_alpha(base, rm, *router.values(), k=64)
    torch.testing.assert_close(alpha.cpu(), ref_alpha, rtol=0, atol=1e-5)


def test_cuda_draws_follow_the_exact_routed_distribution():
    from conftest import DRAWS, assert_follows, exact_distribution
    g = torch.Generator().manual_seed(17)
    vocab, k = 111, 5
    base, rm = torch.randn(1, vocab, generator=g) * 1.5, torch.randn(1, vocab, generator=g) * 1.5
    router = make_router(vocab, k, d=4, hidden=16, generator=g)
    alpha = reference.router_alpha(base, rm, *router.values(), k=k)
    probs = exact_distribution([base, rm], reference.routed_mix_weights(alpha), 1.0, 20, 0.9)
    tokens, _, _ = ops.routed_sampling_from_logits(
        base.cuda().expand(DRAWS, vocab), rm.cuda().expand(DRAWS, vocab), **to_cuda(router), top_k_features=k,
        top_k=20, top_p=0.9, seed=torch.arange(DRAWS, device="cuda"), step=1)
    assert_follows(tokens.cpu(), probs)


def test_invalid_rows_on_cuda(generator):
    base, rm = torch.randn(3, 1000, device="cuda"), torch.randn(3, 1000, device="cuda")
    rm[1, 5] = float("nan")
    router = to_cuda(make_router(1000, 20, d=4, hidden=16, generator=generator))
    tokens, logprobs, alpha = ops.routed_sampling_from_logits(base, rm, **router, validate=False)
    assert tokens[1].item() == -1 and torch.isnan(logprobs[1]).item() and torch.isnan(alpha[1]).item()
    assert torch.isfinite(alpha[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"rm_logits: row 1 contains NaN"):
        ops.routed_sampling_from_logits(base, rm, **router)


def test_capture_in_a_cuda_graph_and_replay_with_new_seeds(generator):
    batch, vocab = 8, 49152
    base = torch.randn(batch, vocab, device="cuda").bfloat16()
    rm = torch.randn(batch, vocab, device="cuda").bfloat16()
    router = to_cuda(make_router(vocab, 20, d=32, hidden=128, generator=generator))
    params = {"temperature": torch.full((batch,), 0.9, device="cuda"),
              "top_k": torch.tensor([0, 50] * 4, device="cuda"), "top_p": torch.full((batch,), 0.9, device="cuda"),
              "seed": torch.arange(batch, device="cuda"), "step": torch.zeros(batch, dtype=torch.int64, device="cuda")}
    op = torch.ops.fastdoctor.routed_sampling_from_logits
    args = (base, rm, *router.values(), *params.values(), 20, -1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up the caching allocator outside capture
            op(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens, logprobs, alpha = op(*args)
    for step in range(3):
        params["step"].fill_(step)
        graph.replay()
        eager_tokens, eager_logprobs, eager_alpha = op(*args)
        assert torch.equal(tokens, eager_tokens)
        assert torch.equal(alpha, eager_alpha)
        torch.testing.assert_close(logprobs, eager_logprobs)
