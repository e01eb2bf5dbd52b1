"""routed_sampling_from_logits (TARo router gating): the compiled op against the pure-PyTorch oracle, the
feature layout against an nn.Module router, ties, truncation, bad input, opcheck, and exact sampling."""
from __future__ import annotations

import pytest
import torch

from fastdoctor import ops, reference
from conftest import CASES, make_router, random_logits, row_params, run_op, run_reference, varied_row_params

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.mark.parametrize("batch,vocab,k,base_dtype,rm_dtype", CASES)
def test_kernel_matches_reference(batch, vocab, k, base_dtype, rm_dtype, generator):
    base = random_logits(batch, vocab, base_dtype, generator)
    rm = random_logits(batch, vocab, rm_dtype, generator, scale=2.0)
    router = make_router(vocab, k, d=8, hidden=24, generator=generator)
    params = varied_row_params(batch, vocab, generator)  # greedy, plain, top-k, top-p and both, per row
    tokens, logprobs, alpha = run_op(base, rm, router, params, k)
    ref_tokens, ref_logprobs, ref_alpha = run_reference(base, rm, router, params, k)
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32 and alpha.dtype == torch.float32
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert ((alpha > 0) & (alpha < 1)).all()
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-4, atol=1e-4)


def test_default_sizes_k20_d32_h128(generator):
    base, rm = random_logits(8, 49152, BF16, generator), random_logits(8, 49152, BF16, generator)
    router = make_router(49152, 20, d=32, hidden=128, generator=generator)
    params = row_params(8, temperature=0.8, top_p=0.9, seed=torch.arange(8), step=3)
    tokens, logprobs, alpha = run_op(base, rm, router, params, 20)
    ref_tokens, ref_logprobs, ref_alpha = run_reference(base, rm, router, params, 20)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-4, atol=1e-4)


class TinyRouter(torch.nn.Module):
    """The router as a trainer writes it (METHODS.md §3.3): the layout every caller must agree on."""

    def __init__(self, vocab: int, k: int, d: int, hidden: int):
        super().__init__()
        self.k = k
        self.embedding = torch.nn.Embedding(vocab, d)
        self.hidden = torch.nn.Linear(2 * k * (d + 1), hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, base_logits, rm_logits):
        parts = []
        for logits in (base_logits, rm_logits):
            values, ids = torch.topk(logits.float(), self.k, dim=-1)
            parts.append(torch.cat([values.unsqueeze(-1), self.embedding(ids)], dim=-1).flatten(1))
        return torch.sigmoid(self.out(torch.tanh(self.hidden(torch.cat(parts, dim=1))))).squeeze(-1)


def test_alpha_of_an_nn_module_router(generator):
    torch.manual_seed(0)
    module = TinyRouter(vocab=500, k=7, d=6, hidden=32)
    base, rm = random_logits(9, 500, F32, generator), random_logits(9, 500, F32, generator)
    with torch.no_grad():
        expected = module(base, rm)
        _, _, alpha = ops.routed_sampling_from_logits(
            base, rm, module.embedding.weight, module.hidden.weight, module.hidden.bias, module.out.weight,
            module.out.bias, top_k_features=7, temperature=0.0)
        from_reference = reference.router_alpha(base, rm, module.embedding.weight, module.hidden.weight,
                                                          module.hidden.bias, module.out.weight, module.out.bias, 7)
    torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_reference, expected, rtol=0, atol=1e-6)


def test_feature_layout_by_hand():
    base = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    rm = torch.tensor([[5.0, -1.0, 4.0, 4.0]])  # a tie: id 2 ranks before id 3
    embedding = torch.tensor([[10.0, 11.0], [20.0, 21.0], [30.0, 31.0], [40.0, 41.0]])
    h = reference.router_features(base, rm, embedding, k=2)
    assert h.tolist() == [[3.0, 20.0, 21.0, 2.0, 40.0, 41.0, 5.0, 10.0, 11.0, 4.0, 30.0, 31.0]]
    # The op reads the same layout: a w1 that picks out one feature at a time recovers h exactly.
    width = h.shape[1]
    w1 = torch.eye(width) * 1e-3
    b1 = torch.zeros(width)
    for f in range(width):
        w2 = torch.zeros(width)
        w2[f] = 1e3  # alpha = sigmoid(1e3 * tanh(1e-3 * h_f)) ~ sigmoid(h_f)
        _, _, alpha = ops.routed_sampling_from_logits(base, rm, embedding, w1, b1, w2, torch.zeros(1),
                                                      top_k_features=2, temperature=0.0)
        torch.testing.assert_close(alpha, torch.sigmoid(h[:, f]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("vocab,k", [(111, 5), (111, 20), (5000, 20), (5000, 64), (64, 64)])
def test_ties_rank_by_the_lower_token_id(vocab, k, generator):
    base = torch.randint(0, 4, (6, vocab), generator=generator).float()  # heavy ties at every rank
    rm = torch.randint(-2, 2, (6, vocab), generator=generator).to(BF16)
    base[0] = 1.0  # a row of one value: the top-K are ids 0..K-1
    base[1, ::2] = -0.0  # -0 and +0 are equal logits: ties by id, like the reference's stable sort
    base[1, 1::2] = 0.0
    router = make_router(vocab, k, d=4, hidden=16, generator=generator)
    params = row_params(6, temperature=torch.tensor([0.0, 1.0, 0.7, 0.0, 1.2, 1.0]), seed=torch.arange(6))
    tokens, _, alpha = run_op(base, rm, router, params, k)
    ref_tokens, _, ref_alpha = run_reference(base, rm, router, params, k)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
    values, ids = reference.router_top_k(base, k)
    assert ids[0].tolist() == list(range(k))


def test_zero_and_full_guidance_reduce_to_one_model(generator):
    """alpha = 0 samples the base model alone, alpha = 1 the reward model alone (METHODS.md §4 test (i))."""
    base, rm = random_logits(16, 3000, F32, generator), random_logits(16, 3000, BF16, generator)
    params = varied_row_params(16, 3000, generator)
    for bias, alone in ((-200.0, base), (200.0, rm)):
        router = make_router(3000, 5, d=4, hidden=8, generator=generator)
        router["b2"] = torch.tensor([bias])
        tokens, logprobs, alpha = run_op(base, rm, router, params, 5)
        assert torch.all(alpha == (0.0 if bias < 0 else 1.0))
        expected_tokens, expected_logprobs = ops.mixed_sampling_from_logits([alone], [1.0], **params)
        assert torch.equal(tokens, expected_tokens)
        torch.testing.assert_close(logprobs, expected_logprobs, rtol=0, atol=0)


def test_vocab_size_truncates_padded_vocabularies(generator):
    base = random_logits(5, 1000, F32, generator)
    rm = random_logits(5, 1024, BF16, generator)
    rm[:, 1000:] = 1e4  # padding columns that must never enter the top-K or the mix
    router = make_router(1024, 20, d=4, hidden=16, generator=generator)
    params = varied_row_params(5, 1000, generator)
    padded = run_op(base, rm, router, params, 20, vocab_size=1000)
    trimmed = run_op(base, rm[:, :1000].contiguous(), router, params, 20)
    for a, b in zip(padded, trimmed):
        assert torch.equal(a, b)
    reference_alpha = run_reference(base, rm, router, params, 20, vocab_size=1000)[2]
    torch.testing.assert_close(padded[2], reference_alpha, rtol=0, atol=1e-5)


def test_strided_rows_and_batch_independence(generator):
    base = random_logits(6, 5 * 700, F32, generator).view(6, 5, 700)[:, -1, :]  # a forward's last position
    rm = random_logits(6, 700, F16, generator)
    router = make_router(700, 10, d=6, hidden=20, generator=generator)
    params = varied_row_params(6, 700, generator)
    tokens, logprobs, alpha = run_op(base, rm, router, params, 10)
    contiguous = run_op(base.contiguous(), rm, router, params, 10)
    assert torch.equal(tokens, contiguous[0]) and torch.equal(alpha, contiguous[2])
    for row in (0, 3, 5):
        alone = run_op(base[row : row + 1], rm[row : row + 1], router,
                       {n: v[row : row + 1] for n, v in params.items()}, 10)
        assert alone[0].item() == tokens[row].item() and alone[2].item() == alpha[row].item()
        assert alone[1].item() == logprobs[row].item()


def test_masked_tokens_are_never_drawn(generator):
    base = random_logits(1, 300, F32, generator).expand(2000, 300).clone()
    base[:, ::3] = float("-inf")  # 200 finite logits: more than K
    rm = random_logits(1, 300, F32, generator).expand(2000, 300).clone()
    router = make_router(300, 20, d=4, hidden=16, generator=generator)
    params = row_params(2000, seed=torch.arange(2000), top_p=0.95)
    tokens, logprobs, alpha = run_op(base, rm, router, params, 20)
    assert (tokens % 3 != 0).all() and torch.isfinite(logprobs).all()
    ref_tokens, _, ref_alpha = run_reference(base[:50], rm[:50], router, {n: v[:50] for n, v in params.items()}, 20)
    torch.testing.assert_close(alpha[:50], ref_alpha, rtol=0, atol=1e-5)
    assert torch.equal(tokens[:50], ref_tokens)


# --- bad input --------------------------------------------------------------------------------------------

Z = torch.randn(2, 30)
ROUTER = make_router(30, 5, d=3, hidden=8, generator=torch.Generator().manual_seed(5))


def call(base=None, rm=None, router=None, k=5, **kwargs):
    return ops.routed_sampling_from_logits(Z if base is None else base, Z if rm is None else rm,
                                           **(ROUTER if router is None else router), top_k_features=k, **kwargs)


def with_param(**changes):
    return {**ROUTER, **changes}


def test_top_k_features_out_of_range():
    with pytest.raises(ValueError, match="top_k_features: K = 40 exceeds the vocabulary size V = 30"):
        call(router=make_router(30, 40, 3, 8, torch.Generator().manual_seed(0)), k=40)
    with pytest.raises(ValueError, match=r"top_k_features: expected K in \[1, 64\], got 0"):
        call(k=0)
    with pytest.raises(ValueError, match=r"top_k_features: expected K in \[1, 64\], got 65"):
        call(k=65)
    with pytest.raises(TypeError, match="top_k_features: expected an int"):
        call(k=5.0)


def test_a_router_built_for_another_k_or_d():
    with pytest.raises(ValueError, match=r"w1: expected shape \[H, 2\*K\*\(d\+1\)\] = \[H, 48\] for "
                                         r"top_k_features K = 6 and embedding dim d = 3, got \[8, 40\] "
                                         r"\(a router built for another K"):
        call(k=6)
    with pytest.raises(ValueError, match=r"w1: expected shape \[H, 2\*K\*\(d\+1\)\] = \[H, 50\]"):
        call(router=with_param(embedding=torch.randn(30, 4)))


def test_router_parameter_shapes():
    with pytest.raises(ValueError, match=r"embedding: expected at least V = 30 rows"):
        call(router=with_param(embedding=torch.randn(20, 3)))
    with pytest.raises(ValueError, match=r"embedding: expected shape \[num_embeddings, d\]"):
        call(router=with_param(embedding=torch.randn(30)))
    with pytest.raises(ValueError, match=r"b1: expected shape \[8\]"):
        call(router=with_param(b1=torch.randn(7)))
    with pytest.raises(ValueError, match=r"w2: expected shape \[8\]"):
        call(router=with_param(w2=torch.randn(9)))
    with pytest.raises(ValueError, match=r"b2: expected shape \[1\]"):
        call(router=with_param(b2=torch.randn(2)))
    # nn.Linear(H, 1) shapes are accepted: weight [1, H], bias [1]; and a 0-dim bias.
    call(router=with_param(w2=ROUTER["w2"].reshape(1, -1), b2=ROUTER["b2"].reshape(())))


def test_dtypes():
    with pytest.raises(TypeError, match="base_logits: expected float32, bfloat16 or float16"):
        call(base=Z.double())
    with pytest.raises(TypeError, match="rm_logits: expected float32, bfloat16 or float16"):
        call(rm=Z.to(torch.int64))
    with pytest.raises(TypeError, match=r"w1: expected dtype float32 \(router parameters are fp32\)"):
        call(router=with_param(w1=ROUTER["w1"].bfloat16()))
    with pytest.raises(TypeError, match="embedding: expected dtype float32"):
        call(router=with_param(embedding=ROUTER["embedding"].half()))
    with pytest.raises(TypeError, match="b2: expected a tensor"):
        call(router=with_param(b2=0.5))


def test_mismatched_vocabularies_and_batches():
    with pytest.raises(ValueError, match="rm_logits: vocabulary size 32 differs from base_logits' 30"):
        call(rm=torch.randn(2, 32))
    with pytest.raises(ValueError, match="vocab_size: expected at most 30"):
        call(rm=torch.randn(2, 32), vocab_size=31)
    tokens, _, _ = call(rm=torch.randn(2, 32), vocab_size=30)
    assert (tokens < 30).all()
    with pytest.raises(ValueError, match=r"rm_logits: expected shape \[2, vocab\]"):
        call(rm=torch.randn(3, 30))
    with pytest.raises(ValueError, match=r"base_logits: expected shape \[batch, vocab\]"):
        call(base=torch.randn(2, 1, 30))


def test_mismatched_devices():
    with pytest.raises(ValueError, match="rm_logits: expected device cpu"):
        call(rm=torch.empty(2, 30, device="meta"))
    with pytest.raises(ValueError, match="w1: expected device cpu"):
        call(router=with_param(w1=torch.empty(8, 40, device="meta")))
    with pytest.raises(ValueError, match="seed: expected device cpu"):
        call(seed=torch.zeros(2, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize("which", ["base", "rm"])
def test_nan_and_inf_logits_name_the_tensor_and_row(which):
    bad = Z.clone()
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=rf"{which}_logits: row 1 contains NaN"):
        call(**{which: bad})
    bad[1, 4] = float("inf")
    with pytest.raises(ValueError, match=rf"{which}_logits: row 1 contains \+inf"):
        call(**{which: bad})
    tokens, logprobs, alpha = call(**{which: bad}, validate=False)
    assert tokens[1].item() == -1 and torch.isnan(logprobs[1]) and torch.isnan(alpha[1])
    assert 0 <= tokens[0].item() < 30 and torch.isfinite(logprobs[0]) and 0 < alpha[0].item() < 1


def test_fewer_finite_logits_than_k():
    masked = Z.clone()
    masked[0, 3:] = float("-inf")  # 3 finite logits, K = 5: -inf features
    _, _, alpha = call(base=masked, validate=False)
    expected = reference.router_alpha(masked, Z, *ROUTER.values(), k=5)
    torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-5, equal_nan=True)
    with pytest.raises(ValueError, match="router: alpha of row 0 is NaN"):
        call(base=masked)


def test_nan_router_weights():
    with pytest.raises(ValueError, match="w1: the router's parameters hold NaN"):
        call(router=with_param(w1=torch.full_like(ROUTER["w1"], float("nan"))))


def test_sampling_parameters_are_checked():
    with pytest.raises(ValueError, match=r"top_p: expected values in \(0, 1\]"):
        call(top_p=1.5)
    with pytest.raises(ValueError, match="temperature: expected finite values >= 0"):
        call(temperature=-1.0)
    with pytest.raises(ValueError, match=r"seed: expected one value per row, shape \[2\]"):
        call(seed=[1, 2, 3])


def op_args(batch=3, vocab=50, k=4, d=3, hidden=8):
    g = torch.Generator().manual_seed(0)
    router = make_router(vocab, k, d, hidden, g)
    params = row_params(batch, temperature=torch.tensor([0.0, 1.0, 0.5]), top_k=torch.tensor([0, 5, 0]),
                        top_p=torch.tensor([1.0, 1.0, 0.8]), seed=torch.arange(batch), step=2)
    return (torch.randn(batch, vocab, generator=g), torch.randn(batch, vocab, generator=g).bfloat16(),
            *router.values(), *params.values(), k, -1)


def test_the_raw_op_checks_metadata_too():
    op = torch.ops.fastdoctor.routed_sampling_from_logits
    args = list(op_args())
    bad_w1 = args.copy()
    bad_w1[3] = torch.randn(8, 33)
    with pytest.raises(ValueError, match="w1: expected shape"):
        op(*bad_w1)
    bad_k = args.copy()
    bad_k[-2] = 51
    with pytest.raises(ValueError, match="top_k_features"):
        op(*bad_k)
    bad_seed = args.copy()
    bad_seed[10] = torch.zeros(3)
    with pytest.raises(TypeError, match="seed: expected dtype Long"):
        op(*bad_seed)


def test_opcheck():
    torch.library.opcheck(torch.ops.fastdoctor.routed_sampling_from_logits.default, op_args())


# --- sampling is exact ------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 7, 1.0), (1.3, 0, 0.8), (1.0, 20, 0.9)])
@pytest.mark.parametrize("dtypes", [(F32, F32), (BF16, F16)])
def test_draws_follow_the_exact_routed_distribution(temperature, top_k, top_p, dtypes):
    pytest.importorskip("scipy.stats")
    from conftest import DRAWS, assert_follows, exact_distribution
    g = torch.Generator().manual_seed(17)
    vocab, k = 111, 5
    base = (torch.randn(1, vocab, generator=g) * 1.5).to(dtypes[0])
    rm = (torch.randn(1, vocab, generator=g) * 1.5).to(dtypes[1])
    router = make_router(vocab, k, d=4, hidden=16, generator=g)
    alpha = reference.router_alpha(base, rm, *router.values(), k=k)
    probs = exact_distribution([base, rm], reference.routed_mix_weights(alpha), temperature, top_k, top_p)
    tokens, logprobs, kernel_alpha = ops.routed_sampling_from_logits(
        base.expand(DRAWS, vocab), rm.expand(DRAWS, vocab), **router, top_k_features=k, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=torch.arange(DRAWS), step=1)
    assert torch.all(kernel_alpha == kernel_alpha[0])
    torch.testing.assert_close(kernel_alpha[:1], alpha, rtol=0, atol=1e-5)
    assert_follows(tokens, probs)
    torch.testing.assert_close(logprobs.double(), probs[tokens].log(), rtol=1e-4, atol=1e-5)
