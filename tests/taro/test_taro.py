"""TARo: the router (layout, gradients, fused-op equality, checkpoints), generate with the router, the reward
model's training and saving, the fixed-alpha GenARM equivalence, bad input, and the `fastdoctor taro` CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import fastdoctor
from fastdoctor import adapters, ops, reference, shared_base, taro
from fastdoctor.sequences import pack_sequences, run_lm
from fastdoctor.taro.reasoning import Problem, StepPair
from fastdoctor.kv_cache import cache_kwargs, output_cache
from fastdoctor.steering import WeightsHook
from fastdoctor.train import TrainConfig
from conftest import VOCAB, left_padded_prompts, tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run many small ops; on a shared, busy machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from fastdoctor.models import default_patient_path

    return AutoTokenizer.from_pretrained(default_patient_path(), local_files_only=True)


def random_router(vocab=VOCAB, k=5, d=4, hidden=16, seed=0, scale=0.5):
    torch.manual_seed(seed)
    router = taro.Router(vocab, k=k, embed_dim=d, hidden=hidden)
    with torch.no_grad():
        router.out.weight.normal_(0.0, scale)  # spread alpha over (0, 1) instead of ~0.5
    return router


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------- router


def test_router_layout_and_initial_alpha():
    router = taro.Router(VOCAB, k=7, embed_dim=6, hidden=32)
    assert router.embedding.weight.shape == (VOCAB, 6)
    assert router.hidden.weight.shape == (32, 2 * 7 * (6 + 1)) and router.out.weight.shape == (1, 32)
    g = torch.Generator().manual_seed(0)
    base, rm = torch.randn(16, VOCAB, generator=g) * 3, torch.randn(16, VOCAB, generator=g) * 3
    alpha, mixed = router(base, rm)
    assert alpha.shape == (16,) and ((alpha - 0.5).abs() < 0.05).all()  # starts near 0.5 via the bias
    torch.testing.assert_close(mixed, (1 - alpha[:, None]) * base + alpha[:, None] * rm)
    assert taro.Router(VOCAB, k=3, init_alpha=0.2).out.bias.item() == pytest.approx(torch.logit(torch.tensor(0.2)).item())


def test_alpha_stays_in_the_open_interval():
    g = torch.Generator().manual_seed(1)
    for seed in range(3):
        router = random_router(seed=seed, scale=1.0)
        alpha, _ = router(torch.randn(64, VOCAB, generator=g) * 5, torch.randn(64, VOCAB, generator=g) * 5)
        assert ((alpha > 0) & (alpha < 1)).all()
        assert alpha.std() > 0.01  # and it varies per token


@pytest.mark.parametrize("vocab,k", [(VOCAB, 5), (1000, 20), (64, 64)])
def test_router_module_equals_reference_and_fused_op(vocab, k):
    router = random_router(vocab=vocab, k=k, d=8, hidden=24, seed=k)
    g = torch.Generator().manual_seed(k)
    base, rm = torch.randn(9, vocab, generator=g) * 4, torch.randn(9, vocab, generator=g) * 4
    weights = router.gating_weights()
    with torch.no_grad():
        alpha, mixed = router(base, rm)
    ref = reference.router_alpha(base, rm, weights["embedding"], weights["w1"], weights["b1"], weights["w2"],
                                           weights["b2"], k)
    tokens, _, fused = ops.routed_sampling_from_logits(base, rm, **weights, top_k_features=k, temperature=0.0)
    torch.testing.assert_close(alpha, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused, alpha, rtol=0, atol=1e-5)
    assert torch.equal(tokens, mixed.argmax(dim=-1))


def test_router_gets_gradients_while_base_and_rm_do_not():
    base, rm = frozen(tiny_model("llama", seed=0)), frozen(tiny_model("llama", seed=1))
    router = random_router()
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    z_base, z_rm = base(ids).logits[:, :-1].flatten(0, 1), rm(ids).logits[:, :-1].flatten(0, 1)
    alpha, mixed = router(z_base, z_rm)
    loss = torch.nn.functional.cross_entropy(mixed, ids[:, 1:].flatten()) + 0.1 * taro.bernoulli_entropy(alpha).mean()
    loss.backward()
    for name, p in router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in [*base.parameters(), *rm.parameters()])


def test_router_bad_input():
    with pytest.raises(ValueError, match="K <= vocab_size"):
        taro.Router(10, k=20)
    with pytest.raises(ValueError, match=r"k: expected K in \[1, 64\]"):
        taro.Router(1000, k=65)
    with pytest.raises(ValueError, match="init_alpha"):
        taro.Router(100, k=4, init_alpha=1.0)
    router = taro.Router(VOCAB, k=4)
    with pytest.raises(ValueError, match="must share a vocabulary"):
        router(torch.randn(2, VOCAB), torch.randn(2, VOCAB - 1))
    with pytest.raises(ValueError, match=f"router was built for a vocabulary of {VOCAB}"):
        router(torch.randn(2, VOCAB + 5), torch.randn(2, VOCAB + 5))


# ---------------------------------------------------------------------------------------------- checkpoints


class FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)


def test_router_checkpoint_round_trip(tmp_path):
    router = random_router(k=6, d=5, hidden=12)
    tok = FakeTokenizer({"a": 0, "b": 1})
    taro.save_router(router, tmp_path / "r", tok, info={"note": "x"})
    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    assert meta["format"] == taro.ROUTER_FORMAT and (meta["k"], meta["embed_dim"], meta["hidden"]) == (6, 5, 12)
    assert meta["vocab_size"] == VOCAB and meta["info"] == {"note": "x"}
    loaded = taro.load_router(tmp_path / "r", vocab_size=VOCAB, k=6, tokenizer=tok)
    for (name, a), (_, b) in zip(router.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    g = torch.Generator().manual_seed(0)
    base, rm = torch.randn(3, VOCAB, generator=g), torch.randn(3, VOCAB, generator=g)
    torch.testing.assert_close(loaded(base, rm)[0], router(base, rm)[0], rtol=0, atol=0)
    assert not list(tmp_path.glob(".r.*")), "no staging folder left behind"


def test_loading_a_router_built_for_another_k_vocabulary_or_tokenizer(tmp_path):
    taro.save_router(random_router(k=6), tmp_path / "r", FakeTokenizer({"a": 0}))
    with pytest.raises(ValueError, match="top-K = 6 features, not K = 20"):
        taro.load_router(tmp_path / "r", k=20)
    with pytest.raises(ValueError, match=f"vocabulary of {VOCAB} tokens, but the models emit 49152"):
        taro.load_router(tmp_path / "r", vocab_size=49152)
    with pytest.raises(ValueError, match="another tokenizer"):
        taro.load_router(tmp_path / "r", tokenizer=FakeTokenizer({"a": 1}))
    # weights that do not match router.json, a corrupt JSON, a missing folder
    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    (tmp_path / "r" / "router.json").write_text(json.dumps({**meta, "k": 7}))
    with pytest.raises(ValueError, match="do not match router.json"):
        taro.load_router(tmp_path / "r")
    (tmp_path / "r" / "router.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        taro.load_router(tmp_path / "r")
    with pytest.raises(ValueError, match="no router.json"):
        taro.load_router(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------- generate


@torch.no_grad()
def stepwise_reference(base, rm, router, ids, mask, steps):
    """HF forwards with KV caches, Router.forward and argmax of the routed logits, one step at a time."""
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    outs = [m(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True) for m in (base, rm)]
    tokens, alphas = [], []
    next_position = positions[:, -1:] + 1
    for _ in range(steps):
        alpha, mixed = router(outs[0].logits[:, -1], outs[1].logits[:, -1])
        token = mixed.argmax(dim=-1)
        tokens.append(token)
        alphas.append(alpha)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        outs = [m(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                  **cache_kwargs(m, output_cache(o)), use_cache=True) for m, o in zip((base, rm), outs)]
        next_position = next_position + 1
    return torch.stack(tokens, 1), torch.stack(alphas, 1)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_with_the_router_equals_a_stepwise_reference(family):
    base, rm = tiny_model(family, seed=0), tiny_model(family, seed=1)
    router = random_router(scale=1.0)
    ids, mask = left_padded_prompts()
    steering = taro.RoutedSteering(router)
    out = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], router=steering, temperature=0.0,
                              max_new_tokens=12)
    trace = steering.trace
    expected_tokens, expected_alpha = stepwise_reference(base, rm, router, ids, mask, 12)
    assert torch.equal(out[:, ids.shape[1]:], expected_tokens)
    assert len(trace) == out.shape[1] - ids.shape[1] == 12
    torch.testing.assert_close(torch.stack(trace, 1), expected_alpha, rtol=0, atol=1e-5)
    assert ((expected_alpha > 0) & (expected_alpha < 1)).all() and expected_alpha.std() > 0.01


def test_the_steering_trace_is_trimmed_with_the_tokens_at_eos():
    base, rm = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    router = random_router(scale=1.0)
    ids, mask = left_padded_prompts(batch=1)
    steering = taro.RoutedSteering(router)
    free = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], router=steering, temperature=0.0,
                               max_new_tokens=10)
    assert len(steering.trace) == 10
    eos = int(free[0, ids.shape[1] + 3])
    out = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], router=steering, temperature=0.0,
                              max_new_tokens=10, eos_token_id=eos, eos_check_interval=4)
    assert out.shape[1] == ids.shape[1] + 4 and len(steering.trace) == 4  # reset per call, then trimmed


def test_sampling_with_the_router_matches_the_reference_op():
    """Temperature 1, top-p 0.9: generate's draws equal routed_sampling_from_logits's on the same logits."""
    base, rm = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    router = random_router(scale=1.0)
    ids, mask = left_padded_prompts()
    out = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], router=taro.RoutedSteering(router),
                              temperature=1.0, top_p=0.9, seed=[3, 4, 5], max_new_tokens=1)
    w = router.gating_weights()
    with torch.no_grad():
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        zb, zr = (m(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1] for m in (base, rm))
    n = ids.shape[0]
    tokens, _, _ = reference.routed_sampling_from_logits(zb, zr, w["embedding"], w["w1"], w["b1"], w["w2"], w["b2"],
                                                       torch.ones(n), torch.zeros(n, dtype=torch.int64),
                                                       torch.full((n,), 0.9), torch.tensor([3, 4, 5]),
                                                       torch.zeros(n, dtype=torch.int64), top_k_features=5)
    assert torch.equal(out[:, -1], tokens)


def test_generate_bad_router_input():
    base, rm = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    ids, mask = left_padded_prompts()
    with pytest.raises(ValueError, match="must share a vocabulary"):
        fastdoctor.generate(base, ids, doctors=[tiny_model("llama", vocab=VOCAB - 8)],
                            router=taro.RoutedSteering(random_router()), max_new_tokens=2)
    with pytest.raises(ValueError, match="router: built for a vocabulary of 300 tokens"):
        fastdoctor.generate(base, ids, doctors=[rm], router=taro.RoutedSteering(taro.Router(300, k=4)), max_new_tokens=2)
    with pytest.raises(ValueError, match="exactly one reward model"):
        fastdoctor.generate(base, ids, doctors=[rm, rm], router=taro.RoutedSteering(random_router()), max_new_tokens=2)
    with pytest.raises(TypeError, match="RoutedSteering"):  # the bare module is not a weights hook
        fastdoctor.generate(base, ids, doctors=[rm], router=random_router(), max_new_tokens=2)
    with pytest.raises(TypeError, match="expected a fastdoctor.taro.Router"):
        taro.RoutedSteering(lambda logits: logits)


def test_fixed_alpha_genarm_equals_the_convex_mix_at_matched_temperature():
    g = torch.Generator().manual_seed(0)
    zb, zr = torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g) * 3
    for a in (0.2, 0.5, 0.8):
        a_prime, t_matched = taro.genarm_equivalent(a, temperature=0.7)
        convex = torch.softmax(((1 - a) * zb + a * zr) / 0.7, -1)
        genarm = torch.softmax((zb + a_prime * zr) / t_matched, -1)
        torch.testing.assert_close(convex, genarm)
        assert taro.convex_equivalent(a_prime, t_matched) == pytest.approx((a, 0.7))
    # In generate: GenARM weights (1, a') and convex weights (1 - a, a) decode the same greedy tokens.
    base, rm = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    ids, mask = left_padded_prompts()
    genarm = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], alpha=1.0, betas=[1.0],
                                 temperature=0.0, max_new_tokens=10)
    hook = WeightsHook(lambda logits: torch.tensor([[0.5, 0.5]]).expand(3, 2))
    convex = fastdoctor.generate(base, ids, attention_mask=mask, doctors=[rm], temperature=0.0, max_new_tokens=10,
                                 router=hook)
    trace = hook.trace
    assert torch.equal(genarm, convex) and len(trace) == 10 and trace[0].shape == (3, 2)


def test_next_step_criterion():
    from fastdoctor.taro.evaluate import next_step_correct

    chosen = "Adding the 8 apples gives 4 + 8 = 12 apples."
    assert next_step_correct("Adding 8 apples: 4 + 8 = 12.\nThe answer is 12.", chosen)
    assert next_step_correct("To solve it, we add. So 8 + 4 = 12 apples.", chosen)
    assert not next_step_correct("4 + 8 = 13 apples, so 13 - 1 = 12.", chosen)  # the first equation is wrong
    assert not next_step_correct("4 * 3 = 12 apples.", "He has 12 - 2 = 10 apples.")  # exact, wrong result
    assert not next_step_correct("He has twelve apples.", chosen)


def test_mcnemar_equals_the_exact_binomial_test():
    from scipy.stats import binomtest

    from fastdoctor.taro.evaluate import mcnemar

    g = torch.Generator().manual_seed(0)
    for n, p_first, p_second in [(200, 0.5, 0.6), (60, 0.3, 0.3), (40, 0.1, 0.9), (7, 0.5, 0.5)]:
        first = (torch.rand(n, generator=g) < p_first).tolist()
        second = (torch.rand(n, generator=g) < p_second).tolist()
        got = mcnemar(first, second)
        assert got["first_only"] == sum(a and not b for a, b in zip(first, second))
        assert got["second_only"] == sum(b and not a for a, b in zip(first, second))
        discordant = got["first_only"] + got["second_only"]
        expected = binomtest(got["first_only"], discordant, 0.5).pvalue if discordant else 1.0
        assert got["p"] == pytest.approx(expected, rel=2e-3)  # three significant digits
    assert mcnemar([True] * 6, [False] * 6)["p"] == pytest.approx(0.0312, abs=1e-4)
    with pytest.raises(ValueError, match="same problems"):
        mcnemar([True], [True, False])


def test_paired_comparisons_pair_the_same_problems():
    from fastdoctor.taro.evaluate import best_fixed, first_step_scores, paired_comparisons

    def variant(name, kind, correct, accuracy):
        records = [{"id": f"p{i}", "level": 5 + i % 2, "correct": c, "text": f"{i} + 1 = {i + 1 if c else i}."}
                   for i, c in enumerate(correct)]
        return {"name": name, "kind": kind, "records": records, "accuracy": {"all": {"accuracy": accuracy}}}

    variants = [variant("base", "base", [False, False, True, False], 0.25),
                variant("genarm a'=0.5", "genarm", [True, False, True, False], 0.5),
                variant("genarm a'=1", "genarm", [False, False, False, False], 0.0),
                variant("taro router", "router", [True, True, True, False], 0.75)]
    assert best_fixed(variants) == "genarm a'=0.5"
    rows = paired_comparisons(variants, against=["base", "genarm a'=0.5"])
    overall = {r["against"]: r for r in rows if r["level"] == "all"}
    assert (overall["base"]["router_only"], overall["base"]["other_only"], overall["base"]["n"]) == (2, 0, 4)
    assert (overall["genarm a'=0.5"]["router_only"], overall["genarm a'=0.5"]["other_only"]) == (1, 0)
    assert {r["level"] for r in rows} == {"5", "6", "all"}
    shuffled = [dict(v, records=v["records"][::-1]) if v["name"] == "base" else v for v in variants]
    with pytest.raises(ValueError, match="other problems"):
        paired_comparisons(shuffled, against=["base"])
    problems = [Problem(f"p{i}", "q", (f"{i} + 1 = {i + 1}.",), i + 1, 5 + i % 2) for i in range(4)]
    scored = first_step_scores({"variants": variants}, problems)
    assert [r["correct"] for r in scored["variants"][3]["records"]] == [True, True, True, False]


def test_out_of_domain_reports_each_variants_rm_weight(tokenizer):
    from fastdoctor.taro.evaluate import evaluate_out_of_domain

    vocab = len(tokenizer)
    patient, rm = tiny_model("llama", vocab=vocab, seed=0), tiny_model("llama", vocab=vocab, seed=1)
    router = random_router(vocab=vocab)
    result = evaluate_out_of_domain(patient, tokenizer, rm=rm, router=router, prompts=["My bus was late.", "It rains."],
                                    genarm_alphas=[1.0], samples=1, max_new_tokens=5, progress=False)
    rows = {r["variant"]: r for r in result["variants"]}
    assert list(rows) == ["base", "genarm a'=1", "taro router"]
    assert rows["base"]["rm_weight"] == 0.0 and rows["genarm a'=1"]["rm_weight"] == 0.5  # convex a' / (1 + a')
    trace = result["router_trace"]
    assert len(trace["alpha"]) == len(trace["token_ids"]) > 0 and all(0.0 < a < 1.0 for a in trace["alpha"])
    assert 0.0 < rows["taro router"]["rm_weight"] < 1.0
    for row in rows.values():
        assert row["perplexity"] > 0 and -1.0 <= row["vader"] <= 1.0


# ---------------------------------------------------------------------------------------------- reward model


def synthetic_pairs(count, seed):
    """Chosen steps count apples, rejected ones pears: a preference a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(count):
        a, b = (int(x) for x in torch.randint(1, 50, (2,), generator=g))
        question = f"Sam has {a} apples and finds {b} more. How many apples does he have?"
        prefix = f"Sam starts with {a} apples." if i % 2 else ""
        pairs.append(StepPair(question, prefix, f"So he has {a + b} apples.", f"So he has {a + b} pears.",
                              "", "", a + b, 1 + i % 2, "wrong_operand"))
    return pairs


def test_reward_model_training_raises_pair_accuracy_and_saves(tmp_path, tokenizer):
    patient = tiny_model("llama", vocab=len(tokenizer), seed=0)
    config = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, log_every=100, checkpoint_every=100)
    summary = taro.train_reward_model(patient, tokenizer, tmp_path / "rm", pairs=synthetic_pairs(48, 0),
                                      eval_pairs=synthetic_pairs(16, 1), config=config, beta_r=0.5)
    before, after = summary["held_out_before"], summary["held_out_after"]
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before["accuracy"], (before, after)
    assert after["margin"] > before["margin"] + 1.0
    assert set(after["by_level"]) == {"1", "2"}
    assert (tmp_path / "rm" / "adapter_model.safetensors").is_file()  # peft's adapter files, not a copy
    with pytest.raises(ValueError, match="pass it"):
        taro.load_reward_model(tmp_path / "rm", tokenizer=tokenizer)
    rm, _ = taro.load_reward_model(tmp_path / "rm", tokenizer=tokenizer, patient=patient)
    assert isinstance(rm, adapters.AdapterDoctor) and shared_base.plan(patient, [rm]).stacked == (0,)
    # The saved RM scores like the trained one (as a model of its own: peft over a copy of the base).
    examples = taro.step_pair_tokens(tokenizer, synthetic_pairs(16, 1))
    assert taro.pair_accuracy(rm.peft_model(patient), examples, beta_r=0.5)["accuracy"] == after["accuracy"]
    assert (tmp_path / "rm.train" / "checkpoint" / "state.json").is_file()
    # The patient itself was not touched (the RM is a copy).
    assert all(p.requires_grad for p in patient.parameters())


def test_reward_model_context_and_bad_input(tmp_path, tokenizer):
    pair = synthetic_pairs(2, 0)[1]
    context = taro.step_context(tokenizer, pair)
    assert context.endswith("<|im_start|>assistant\n" + pair.initial_reason_steps + "\n")
    assert taro.step_context(tokenizer, synthetic_pairs(1, 0)[0]).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="beta_r"):
        taro.train_reward_model(tiny_model("llama", vocab=len(tokenizer)), tokenizer, tmp_path / "x", beta_r=0.0)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a TARo reward model"):
        taro.load_reward_model(tmp_path / "plain")
    taro.save_reward_model(tiny_model("llama", vocab=len(tokenizer)), tmp_path / "rm", tokenizer)
    with pytest.raises(ValueError, match="another tokenizer"):
        taro.load_reward_model(tmp_path / "rm", tokenizer=FakeTokenizer({"a": 0}))


# ---------------------------------------------------------------------------------------------- router training


def tiny_problems():
    return [Problem(f"p{i}", f"Sam has {i + 2} apples and eats 1. How many are left?",
                    (f"Eating 1 leaves {i + 2} - 1 = {i + 1} apples.",), i + 1, 1 + i % 2) for i in range(6)]


def test_router_cache_and_training_lower_the_routed_nll(tmp_path, tokenizer):
    base = frozen(tiny_model("llama", vocab=len(tokenizer), seed=0))
    rm = frozen(tiny_model("llama", vocab=len(tokenizer), seed=1))
    cache = taro.build_router_cache(base, rm, tokenizer, tiny_problems(), tmp_path / "cache", progress=False)
    prompt, response = taro.solution_tokens(tokenizer, tiny_problems()[0])
    assert response[-1] == tokenizer.eos_token_id and len(cache) == 6
    assert cache.tokens == sum(taro.solution_tokens(tokenizer, p)[1].numel() for p in tiny_problems())
    # The cached features equal the live models' top-K, and the cached logits their float16 values.
    batch = pack_sequences([prompt], [response])
    with torch.no_grad():
        live = run_lm(rm, batch).logits[0, : response.numel()]
    rows = cache.rows(cache.items()[:1])
    values, ids = reference.router_top_k(live, reference.MAX_ROUTER_TOP_K)
    assert torch.equal(rows["rm_ids"], ids) and torch.equal(rows["targets"], response)
    torch.testing.assert_close(rows["rm_logits"], live.half().float())
    # Reused when nothing changed (same object content, no rebuild).
    assert taro.build_router_cache(base, rm, tokenizer, tiny_problems(), tmp_path / "cache").tokens == cache.tokens
    config = TrainConfig(steps=25, batch_size=3, lr=1e-2, warmup_steps=2, log_every=100, checkpoint_every=100)
    summary = taro.train_router(cache, tmp_path / "router", k=8, embed_dim=4, hidden=16, config=config,
                                tokenizer=tokenizer, eval_cache=cache, entropy_weight=0.01)
    before, after = summary["held_out_before"]["nll"]["router"]["all"], summary["held_out_after"]["nll"]["router"]["all"]
    assert after < before, (before, after)
    router = taro.load_router(tmp_path / "router", vocab_size=len(tokenizer), k=8, tokenizer=tokenizer)
    assert router.config() == {"vocab_size": len(tokenizer), "k": 8, "embed_dim": 4, "hidden": 16}
    with pytest.raises(ValueError, match="fewer than K = 65"):
        taro.train_router(cache, tmp_path / "bad", k=65)


def test_router_cache_refuses_models_with_different_vocabularies(tmp_path, tokenizer):
    base = tiny_model("llama", vocab=len(tokenizer), seed=0)
    with pytest.raises(ValueError, match="must share a vocabulary"):
        taro.build_router_cache(base, tiny_model("llama", vocab=VOCAB), tokenizer, tiny_problems(), tmp_path / "c")


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastdoctor.cli", "taro", *args, "--threads", "1"],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tokenizer):
    """train-rm, train-router and eval on a tiny patient with the default tokenizer, a few examples each."""
    root = tmp_path_factory.mktemp("taro_cli")
    # 1024 positions: the chat prompt of a step-pair context is ~270 tokens (generate refuses to run past them)
    tiny_model("llama", vocab=len(tokenizer), seed=0, positions=1024).save_pretrained(root / "patient")
    tokenizer.save_pretrained(root / "patient")
    models = ("--patient", str(root / "patient"))
    runs = {"train-rm": run_cli("train-rm", *models, "--out", str(root / "rm"), "--steps", "2", "--batch-size", "2",
                                "--limit", "4", "--eval-limit", "4", "--warmup-steps", "1", "--lora-layers", "1")}
    models += ("--rm", str(root / "rm"))
    runs["train-router"] = run_cli("train-router", *models, "--out", str(root / "router"), "--steps", "2",
                                   "--batch-size", "2", "--limit", "3", "--eval-per-level", "1", "--k", "4",
                                   "--embed-dim", "4", "--hidden", "8", "--warmup-steps", "1")
    runs["eval"] = run_cli("eval", *models, "--router", str(root / "router"), "--per-level", "1", "--max-new-tokens",
                           "3", "--genarm-alpha", "1", "--out", str(root / "eval.json"), "--plot", str(root / "a.png"),
                           "--next-step", "--next-step-tokens", "2")
    runs["eval-no-rm"] = run_cli("eval", "--patient", str(root / "patient"), "--router", str(root / "router"))
    return root, runs


@pytest.mark.slow
def test_cli_train_rm(cli_runs):
    root, runs = cli_runs
    assert runs["train-rm"].returncode == 0, runs["train-rm"].stderr
    assert "held-out pair accuracy" in runs["train-rm"].stdout and "[taro-rm] step=2/2" in runs["train-rm"].stderr
    meta = json.loads((root / "rm" / "taro_rm.json").read_text())
    assert meta["format"] == taro.RM_FORMAT and meta["info"]["train_pairs"] == 4 and meta["info"]["lora"]["layers"] == 1
    assert (root / "rm.train" / "checkpoint" / "state.json").is_file() and (root / "rm.train" / "loss.png").is_file()


@pytest.mark.slow
def test_cli_train_router(cli_runs):
    root, runs = cli_runs
    assert runs["train-router"].returncode == 0, runs["train-router"].stderr
    assert "held-out NLL/token" in runs["train-router"].stdout and "[taro-router] step=2/2" in runs["train-router"].stderr
    meta = taro.read_router_meta(root / "router")
    assert (meta["k"], meta["embed_dim"], meta["hidden"]) == (4, 4, 8)
    assert (root / "router.cache" / "train" / "cache.json").is_file()


@pytest.mark.slow
def test_cli_eval(cli_runs):
    root, runs = cli_runs
    assert runs["eval"].returncode == 0, runs["eval"].stderr
    results = json.loads((root / "eval.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["base", "genarm a'=1", "taro router", "rm alone"]
    assert results["subset"]["ids"] == [f"test-L{level}-000" for level in taro.reasoning.LEVELS]
    assert all(len(r["alpha"]) == r["new_tokens"] for r in results["variants"][2]["records"])
    assert results["next_step"]["contexts"] > 0 and len(results["next_step"]["variants"]) == 4
    assert (root / "a.png").stat().st_size > 0
    assert runs["eval-no-rm"].returncode != 0 and "--router needs --rm" in runs["eval-no-rm"].stderr


def test_a_router_with_a_nan_weight_is_refused_naming_it():
    torch.manual_seed(0)
    router = taro.Router(50, k=5, embed_dim=4, hidden=16)
    with torch.no_grad():
        router.out.weight[0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"router: its parameter out.weight holds NaN or inf"):
        taro.RoutedSteering(router)
