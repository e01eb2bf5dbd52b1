"""The token-scoring CUDA kernels (csrc/kernels/token_scoring.cuh) against reference.py and the CPU kernels:
the three logit dtypes, odd sizes, strided rows, ignored targets, -inf masks, vocabulary chunks that do not
divide V, empty responses, and bad input. Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import _C, ops, reference
from conftest import random_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# From logits: the kernel and the oracle read the same fp32 values, so only the order of the sums differs
# (tests/test_token_scoring.py uses the same bound for the CPU kernel).
LOGITS_TOL = {"rtol": 1e-5, "atol": 2e-5}
# From hidden states the chunk logits are made in the input dtype, so each is rounded once to bf16/fp16 (the
# oracle keeps fp32): about half an ulp of a logit of size ~4.
HIDDEN_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}
REWARD_TOL = {"rtol": 1e-5, "atol": 1e-6}


def test_cuda_kernels_were_compiled():
    assert _C.build_info()["cuda_compiled"], "a CUDA device is present but fastdoctor was built without CUDA"


def ignored_and_edge_targets(tokens: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[0] = vocab - 1  # the last column: the end of the row (and of the last, partial chunk)
    targets[2::3] = -100  # padding positions
    return targets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,vocab", [(3, 1), (1, 111), (7, 32000), (99, 49152), (257, 128256), (257, 111)])
def test_from_logits_match_reference_and_cpu(tokens, vocab, dtype, generator):
    logits = random_logits(tokens, vocab, dtype, generator, scale=4.0)
    targets = ignored_and_edge_targets(tokens, vocab, generator)
    ours = ops.target_log_probs_from_logits(logits.cuda(), targets.cuda())
    assert ours.dtype == torch.float32 and ours.device.type == "cuda" and ours.shape == (tokens,)
    ours = ours.cpu()
    torch.testing.assert_close(ours, reference.target_log_probs_from_logits(logits, targets), **LOGITS_TOL)
    torch.testing.assert_close(ours, ops.target_log_probs_from_logits(logits, targets), **LOGITS_TOL)
    assert (ours[2::3] == 0).all()
    if vocab == 1:
        assert (ours == 0).all()  # a one-token vocabulary has probability 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_logits_strided_rows_masks_and_ignore_index(dtype, generator):
    tokens, vocab = 37, 5003
    wide = random_logits(tokens, vocab + 41, dtype, generator, scale=3.0)
    wide[:, 17 + 5] = float("-inf")  # a banned token (column 17 of the slice below)
    wide[4, 5:vocab + 5] = float("-inf")
    wide[4, 5 + 99] = 2.5  # row 4: every token but 99 is masked
    logits = wide[:, 5:vocab + 5]  # a column slice: rows vocab + 41 apart, not contiguous
    assert logits.stride() == (vocab + 41, 1) and not logits.is_contiguous()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    targets[targets == 17] = 18  # only row 1 targets the banned token
    targets[1], targets[4], targets[6] = 17, 99, -1
    targets[10:20] = -1  # ignore_index below
    ours = ops.target_log_probs_from_logits(logits.cuda(), targets.cuda(), ignore_index=-1).cpu()
    expected = reference.target_log_probs_from_logits(logits, targets, ignore_index=-1)
    torch.testing.assert_close(ours, expected, **LOGITS_TOL)
    torch.testing.assert_close(ours, ops.target_log_probs_from_logits(logits, targets, ignore_index=-1), **LOGITS_TOL)
    assert ours[1] == float("-inf")  # the banned target
    assert ours[4] == 0  # the only unmasked token of its row
    assert (ours[10:20] == 0).all() and ours[6] == 0
    assert torch.isfinite(ours[[0, 2, 3, 5]]).all()
    # Columns not contiguous (a transposed view) take the launcher's copy; same values.
    transposed = logits.t().contiguous().t()
    torch.testing.assert_close(ops.target_log_probs_from_logits(transposed.cuda(), targets.cuda(), ignore_index=-1).cpu(),
                               ours, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,hidden,vocab,chunk", [
    (1, 16, 7, 4),            # chunk does not divide V
    (7, 64, 111, 50),         # two whole chunks and one of 11 columns
    (99, 64, 32000, 4096),    # does not divide
    (257, 96, 49152, 4096),   # divides exactly
    (33, 64, 5000, 5000),     # one chunk, exactly V
    (9, 32, 100, 1000),       # chunk larger than V
    (257, 64, 128256, 8192),  # Llama-3 vocabulary, does not divide
])
def test_from_hidden_match_reference_and_cpu(tokens, hidden, vocab, chunk, dtype, generator):
    h = torch.randn(tokens, hidden, generator=generator).to(dtype)
    w = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).to(dtype)
    targets = ignored_and_edge_targets(tokens, vocab, generator)
    if tokens > 1 and chunk < vocab:
        targets[1] = chunk  # the first column of the second chunk
    ours = ops.target_log_probs_from_hidden(h.cuda(), w.cuda(), targets.cuda(), chunk_size=chunk)
    assert ours.dtype == torch.float32 and ours.device.type == "cuda"
    ours = ours.cpu()
    tol = HIDDEN_TOL[dtype]
    torch.testing.assert_close(ours, reference.target_log_probs_from_hidden(h, w, targets), rtol=tol, atol=tol)
    torch.testing.assert_close(ours, ops.target_log_probs_from_hidden(h, w, targets, chunk_size=chunk),
                               rtol=tol, atol=tol)
    assert (ours[2::3] == 0).all()
    if dtype == torch.float32:  # fp32 chunk logits are not rounded: the chunking must not matter
        whole = ops.target_log_probs_from_hidden(h.cuda(), w.cuda(), targets.cuda(), chunk_size=vocab).cpu()
        torch.testing.assert_close(ours, whole, **LOGITS_TOL)


def face_logprobs(batch: int, length: int, lengths: list[int], generator: torch.Generator):
    lp_pos = -torch.rand(batch, length, generator=generator) * 5
    lp_neg = -torch.rand(batch, length, generator=generator) * 5
    mask = torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    sign = torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)
    return lp_pos, lp_neg, mask, sign


@pytest.mark.parametrize("batch,length,lengths", [
    (1, 1, [1]),
    (1, 7, [0]),                                  # the only response is empty
    (7, 23, [23, 1, 0, 17, 5, 0, 22]),            # two empty responses
    (33, 1001, [1001] + [(37 * i) % 1002 for i in range(32)]),  # rows longer than a block; full, empty
])
@pytest.mark.parametrize("tau,theta", [(1.0, 0.0), (0.5, 0.6), (2.0, 0.3), (0.1, 0.95)])
def test_rewards_match_reference_and_cpu(batch, length, lengths, tau, theta, generator):
    lp_pos, lp_neg, mask, sign = face_logprobs(batch, length, lengths, generator)
    ours = ops.token_rewards_from_face_logprobs(lp_pos.cuda(), lp_neg.cuda(), mask.cuda(), sign.cuda(),
                                                tau=tau, theta=theta)
    assert ours.dtype == torch.float32 and ours.device.type == "cuda" and ours.shape == (batch, length)
    ours = ours.cpu()
    expected = reference.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=tau, theta=theta)
    cpu = ops.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=tau, theta=theta)
    # A strength within rounding of theta may land on either side of the threshold in each implementation;
    # those tokens must be either 0 or the reference's unthresholded reward.
    unthresholded = reference.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=tau, theta=0.0)
    near = mask & ((unthresholded.abs() - theta).abs() < 1e-5)
    assert near.sum() <= 3, "the data put too many strengths on the threshold for this check to mean anything"
    far = ~near
    torch.testing.assert_close(ours[far], expected[far], **REWARD_TOL)
    torch.testing.assert_close(ours[far], cpu[far], **REWARD_TOL)
    for got, full in zip(ours[near].tolist(), unthresholded[near].tolist()):
        assert got == 0 or abs(got - full) <= 1e-5
    assert (ours[~mask] == 0).all()
    empty = torch.tensor(lengths) == 0
    assert (ours[empty] == 0).all()
    assert (ours[sign > 0] >= 0).all() and (ours[sign < 0] <= 0).all()
    if theta > 0:
        assert (ours[mask & (unthresholded.abs() <= theta - 1e-5)] == 0).all()


def test_rewards_accept_non_contiguous_inputs(generator):
    lp_pos, lp_neg, mask, sign = face_logprobs(9, 301, [301, 0, 5, 150, 299, 1, 64, 300, 2], generator)
    # Transposed storage: the same values, column-major.
    args = [t.t().contiguous().t().cuda() for t in (lp_pos, lp_neg, mask)] + [sign.cuda()]
    assert not args[0].is_contiguous()
    ours = ops.token_rewards_from_face_logprobs(*args, tau=0.7, theta=0.2).cpu()
    expected = reference.token_rewards_from_face_logprobs(lp_pos, lp_neg, mask, sign, tau=0.7, theta=0.2)
    torch.testing.assert_close(ours, expected, **REWARD_TOL)


def test_out_of_range_targets_on_cuda():
    logits = torch.randn(4, 50, device="cuda")
    targets = torch.tensor([0, 50, -100, -7], device="cuda")
    with pytest.raises(ValueError, match=r"targets: ids must lie in \[0, 50\)"):
        ops.target_log_probs_from_logits(logits, targets)
    raw = ops.target_log_probs_from_logits(logits, targets, validate=False).cpu()
    assert torch.isfinite(raw[0]) and torch.isnan(raw[1]) and raw[2] == 0 and torch.isnan(raw[3])


def test_bad_input_on_cuda():
    logits = torch.randn(3, 10, device="cuda")
    with pytest.raises(ValueError, match=r"targets: expected device cuda:0, got cpu"):
        ops.target_log_probs_from_logits(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="targets: expected dtype int64"):
        ops.target_log_probs_from_logits(logits, torch.tensor([0, 1, 2], dtype=torch.int32, device="cuda"))
    with pytest.raises(TypeError, match="logits: expected float32, bfloat16 or float16"):
        ops.target_log_probs_from_logits(logits.double(), torch.tensor([0, 1, 2], device="cuda"))
    with pytest.raises(ValueError, match="logits: the vocabulary is empty"):
        ops.target_log_probs_from_logits(logits[:, :0], torch.tensor([-100] * 3, device="cuda"))
    hidden, targets = torch.randn(3, 8, device="cuda"), torch.tensor([0, 1, 2], device="cuda")
    with pytest.raises(ValueError, match=r"weight: expected device cuda:0, got cpu"):
        ops.target_log_probs_from_hidden(hidden, torch.randn(10, 8), targets)
    with pytest.raises(TypeError, match=r"weight: expected dtype Float \(that of hidden\), got Half"):
        ops.target_log_probs_from_hidden(hidden, torch.randn(10, 8, device="cuda").half(), targets)
    with pytest.raises(ValueError, match="chunk_size: expected > 0"):
        ops.target_log_probs_from_hidden(hidden, torch.randn(10, 8, device="cuda"), targets, chunk_size=0)
    lp = -torch.rand(3, 6, device="cuda")
    with pytest.raises(ValueError, match=r"logp_neg, mask and sign: expected device cuda:0, got cpu"):
        ops.token_rewards_from_face_logprobs(lp, lp, torch.ones(3, 6, dtype=torch.bool), torch.ones(3, device="cuda"))
    with pytest.raises(TypeError, match="mask: expected bool"):
        ops.token_rewards_from_face_logprobs(lp, lp, lp, torch.ones(3, device="cuda"))


def test_opcheck_token_scoring_ops_on_cuda():
    g = torch.Generator().manual_seed(2)
    targets = torch.tensor([0, 3, -100, 39, 7], device="cuda")
    torch.library.opcheck(torch.ops.fastdoctor.target_log_probs_from_logits.default,
                          (torch.randn(5, 40, generator=g).cuda(), targets, -100))
    torch.library.opcheck(torch.ops.fastdoctor.target_log_probs_from_hidden.default,
                          (torch.randn(5, 8, generator=g).cuda(), torch.randn(40, 8, generator=g).cuda(), targets,
                           16, -100))
    lp = -torch.rand(3, 6, generator=g).cuda()
    torch.library.opcheck(torch.ops.fastdoctor.token_rewards_from_face_logprobs.default,
                          (lp, lp.flip(1), torch.ones(3, 6, dtype=torch.bool, device="cuda"),
                           torch.tensor([1.0, -1.0, 1.0], device="cuda"), 1.0, 0.2, 1e-6))
