"""Token-level scoring kernels against their pure-PyTorch oracles."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,vocab", [(1, 1), (37, 111), (129, 49152), (5, 151936)])
def test_target_log_probs_from_logits(tokens, vocab, dtype):
    g = torch.Generator().manual_seed(tokens + vocab)
    logits = (torch.randn(tokens, vocab, generator=g) * 4).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    targets[::3] = -100  # padding positions
    ours = ops.target_log_probs_from_logits(logits, targets)
    expected = reference.target_log_probs_from_logits(logits, targets)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=TOL[dtype])
    assert (ours[::3] == 0).all()


def test_target_log_probs_handle_strided_rows_and_masked_logits():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(4, 9, 300, generator=g)
    full[:, :, 17] = float("-inf")  # a banned token
    logits = full[:, -1, :]  # rows 9 * 300 apart
    targets = torch.tensor([1, 17, 299, 0])
    ours = ops.target_log_probs_from_logits(logits, targets)
    torch.testing.assert_close(ours, reference.target_log_probs_from_logits(logits, targets))
    assert ours[1] == float("-inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,hidden,vocab,chunk", [(1, 16, 7, 4), (33, 64, 1000, 256), (257, 96, 49152, 4096),
                                                        (12, 32, 5000, 5000), (9, 32, 100, 1000)])
def test_target_log_probs_from_hidden_match_the_full_logits(tokens, hidden, vocab, chunk, dtype):
    g = torch.Generator().manual_seed(vocab)
    h = torch.randn(tokens, hidden, generator=g).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    targets[-1] = -100
    ours = ops.target_log_probs_from_hidden(h, w, targets, chunk_size=chunk)
    expected = reference.target_log_probs_from_hidden(h, w, targets)
    tol = 1e-5 if dtype == torch.float32 else 3e-2  # bf16 matmuls round per chunk shape
    torch.testing.assert_close(ours, expected, rtol=tol, atol=tol)


def test_rewards_match_reference_and_respect_sign_and_threshold():
    g = torch.Generator().manual_seed(1)
    batch, length = 6, 23
    lp_pos = -torch.rand(batch, length, generator=g) * 5
    lp_neg = -torch.rand(batch, length, generator=g) * 5
    lengths = torch.tensor([23, 1, 10, 17, 5, 0])  # one empty row
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    for tau, theta in [(1.0, 0.0), (0.5, 0.6), (2.0, 0.3)]:
        ours = ops.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=tau, theta=theta)
        expected = reference.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=tau, theta=theta)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
        assert (ours[~mask] == 0).all()
        assert (ours[sign > 0] >= 0).all() and (ours[sign < 0] <= 0).all()
        strength = torch.tanh(((lp_pos - lp_neg).abs() * mask) /
                              (((lp_pos - lp_neg).abs() * mask).sum(1, keepdim=True) /
                               lengths.clamp_min(1).unsqueeze(1) + 1e-6) / tau)
        below = mask & (strength <= theta)
        assert (ours[below] == 0).all()  # exactly the tokens at or below theta are zeroed
        assert (ours[mask & (strength > theta)] != 0).all()


def test_bad_input():
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match=r"targets: ids must lie in \[0, 10\)"):
        ops.target_log_probs_from_logits(logits, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match=r"targets: expected shape \[3\]"):
        ops.target_log_probs_from_logits(logits, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets: expected dtype int64"):
        ops.target_log_probs_from_logits(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"weight: expected the LM head \[vocab, 8\]"):
        ops.target_log_probs_from_hidden(torch.randn(3, 8), torch.randn(10, 9), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="chunk_size: expected > 0"):
        ops.target_log_probs_from_hidden(torch.randn(3, 8), torch.randn(10, 8), torch.tensor([0, 1, 2]), chunk_size=0)
    with pytest.raises(ValueError, match="theta: expected a threshold in"):
        ops.token_rewards_from_face_logprobs(logits, logits, logits > 0, torch.ones(3), theta=1.5)
    with pytest.raises(TypeError, match="mask: expected bool"):
        ops.token_rewards_from_face_logprobs(logits, logits, logits, torch.ones(3))


def test_opcheck_token_scoring_ops():
    g = torch.Generator().manual_seed(2)
    torch.library.opcheck(torch.ops.fastdoctor.target_log_probs_from_logits.default,
                          (torch.randn(5, 40, generator=g), torch.tensor([0, 3, -100, 39, 7]), -100))
    torch.library.opcheck(torch.ops.fastdoctor.target_log_probs_from_hidden.default,
                          (torch.randn(5, 8, generator=g), torch.randn(40, 8, generator=g),
                           torch.tensor([0, 3, -100, 39, 7]), 16, -100))
    lp = -torch.rand(3, 6, generator=g)
    torch.library.opcheck(torch.ops.fastdoctor.token_rewards_from_face_logprobs.default,
                          (lp, lp.flip(1), torch.ones(3, 6, dtype=torch.bool), torch.tensor([1.0, -1.0, 1.0]),
                           1.0, 0.2, 1e-6))
