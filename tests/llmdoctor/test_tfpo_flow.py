"""TFPO's two flows (METHODS.md decisions 1 and 4): the reference flow's zero-loss policy is the reference
tilted by the rewards; only replies that ended pin log V; the reference log-probs come from the doctor's
frozen start (the patient, for a LoRA doctor); and TFPO on short-and-ended against long-and-cut-off pairs
raises the doctor's end-of-turn probability where the chosen replies end."""
from __future__ import annotations

import functools
import itertools

import pytest
import torch

from fastdoctor.llmdoctor import doctor as doctor_lib
from fastdoctor.llmdoctor import tfpo
from fastdoctor.lora import attach_lora
from fastdoctor.sequences import pack_sequences, response_log_probs, run_lm
from fastdoctor.train import TrainConfig, train
from conftest import synthetic_examples, tiny_model


def _tabular_flow(vocab=3, depth=3, kappa=0.7, seed=0):
    """Every trajectory of `depth` tokens over `vocab`, with a random reference policy and random token
    rewards (both tables indexed by the prefix state), as the rows of one batch."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [p for t in range(depth) for p in itertools.product(range(vocab), repeat=t)]
    index = {p: i for i, p in enumerate(prefixes)}
    ref_table = torch.log_softmax(torch.randn(len(prefixes), vocab, generator=g, dtype=torch.float64) * 1.5, -1)
    reward_table = torch.randn(len(prefixes), vocab, generator=g, dtype=torch.float64)
    paths = list(itertools.product(range(vocab), repeat=depth))
    states = torch.tensor([[index[path[:t]] for t in range(depth)] for path in paths])  # s_0 .. s_{depth-1}
    tokens = torch.tensor(paths)
    ref_logp = ref_table[states, tokens]
    rewards = reward_table[states, tokens]
    target = torch.softmax((ref_logp + kappa * rewards).sum(1), 0)  # pi_ref(tau) exp(kappa sum r) / Z
    return len(prefixes), states, tokens, ref_logp, rewards, target


def test_reference_flow_zero_loss_policy_is_the_reference_tilted_by_the_rewards():
    """A tabular doctor (free logits and log V at every state) trained to zero SubTB loss over every
    trajectory samples each one with probability pi_ref(tau) * exp(kappa * sum r) / Z."""
    kappa = 0.7
    count, states, tokens, ref_logp, rewards, target = _tabular_flow(kappa=kappa)
    logits = torch.zeros(count, 3, dtype=torch.float64, requires_grad=True)
    values = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    mask = torch.ones_like(rewards, dtype=torch.bool)

    def loss_fn():
        token_logp = torch.log_softmax(logits, -1)[states, tokens]
        log_v = torch.cat([values[states], torch.zeros(len(tokens), 1, dtype=torch.float64)], 1)  # s_3 pinned anyway
        return tfpo.subtb_loss(rewards, token_logp, log_v, mask, kappa=kappa, ref_logp=ref_logp), token_logp

    optimizer = torch.optim.LBFGS([logits, values], lr=1, max_iter=500, tolerance_grad=1e-14,
                                  tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss, _ = loss_fn()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    loss, token_logp = loss_fn()
    assert float(loss.detach()) < 1e-14
    policy = token_logp.detach().sum(1).exp()
    torch.testing.assert_close(policy, target, rtol=1e-6, atol=1e-9)
    # The rewards flow's zero-loss policy ignores the reference: exp(kappa sum r) / Z, another distribution.
    assert not torch.allclose(torch.softmax(kappa * rewards.sum(1), 0), target, atol=1e-3)


def test_only_replies_that_ended_pin_their_last_state():
    """A cut-off reply's last log V is free (the loss depends on it); an ended reply's is pinned (it does not)."""
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(2, 5, generator=g, dtype=torch.float64)
    token_logp = -torch.rand(2, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    log_v = torch.randn(2, 6, generator=g, dtype=torch.float64)
    ends = [5, 3]
    for finished in ([True, False], [False, True]):
        flags = torch.tensor(finished)
        base = tfpo.subtb_loss(rewards, token_logp, log_v, mask, finished=flags)
        for row, end in enumerate(ends):
            moved = log_v.clone()
            moved[row, end] += 1.0
            changed = tfpo.subtb_loss(rewards, token_logp, moved, mask, finished=flags)
            assert (float(changed) == pytest.approx(float(base), abs=1e-12)) == finished[row], (finished, row)
    everything = tfpo.subtb_loss(rewards, token_logp, log_v, mask)
    assert float(everything) == pytest.approx(float(tfpo.subtb_loss(rewards, token_logp, log_v, mask,
                                                                     finished=torch.tensor([True, True]))))
    with pytest.raises(ValueError, match="finished: expected shape"):
        tfpo.subtb_loss(rewards, token_logp, log_v, mask, finished=torch.tensor([True]))
    with pytest.raises(ValueError, match="ref_logp: expected shape"):
        tfpo.subtb_loss(rewards, token_logp, log_v, mask, ref_logp=token_logp[:, :3])


def test_finished_flags_come_from_the_end_of_turn_id():
    examples = synthetic_examples(3, seed=3)
    eos = int(examples[0].chosen[-1])
    flow = tfpo.pack_scored_pairs(examples, 0, "cpu", eos_id=eos)
    ends = [e.chosen for e in examples] + [e.rejected for e in examples]
    assert flow.finished.tolist() == [int(r[-1]) == eos for r in ends]
    assert tfpo.pack_scored_pairs(examples, 0, "cpu").finished is None


def test_the_reference_flow_needs_reference_log_probs_and_a_known_flow():
    doc = doctor_lib.Doctor(tiny_model("llama", seed=1))
    with pytest.raises(ValueError, match="with_reference_log_probs"):
        tfpo.tfpo_batch_loss(doc, synthetic_examples(2), tfpo.TFPOSettings())
    with pytest.raises(ValueError, match="flow: expected one of"):
        tfpo.TFPOSettings(flow="patient")


def test_a_lora_doctors_reference_is_the_patient_at_any_point_of_training():
    patient = tiny_model("llama", seed=2)
    lm = attach_lora(tiny_model("llama", seed=2), rank=4)
    examples = synthetic_examples(3, seed=4)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a doctor that has moved away from its start
    scored = tfpo.with_reference_log_probs(lm, examples, batch_size=2)
    batch = pack_sequences([e.prompt for e in examples], [e.chosen for e in examples])
    with torch.no_grad():
        expected = response_log_probs(run_lm(patient, batch).logits, batch)
        moved = response_log_probs(run_lm(lm, batch).logits, batch)
    for i, e in enumerate(scored):
        torch.testing.assert_close(e.chosen_ref_logp, expected[i, : e.chosen.numel()], rtol=1e-5, atol=1e-5)
        assert e.rejected_ref_logp.shape == e.rejected.shape
    assert not torch.allclose(moved, expected, atol=1e-3)  # the adapters were really switched off
    assert lm.training  # the mode it was in is restored


def _concision_like_pairs(count, seed, eos):
    """Chosen: a short reply of 'good' tokens that ends with end-of-turn; rejected: a long reply cut off at
    the token limit (no end-of-turn). Rewards as stage 1 gives them: positive on chosen, negative on rejected."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        prompt = torch.randint(70, 200, (4,), generator=g)
        short = torch.cat([torch.randint(10, 30, (int(torch.randint(2, 5, (), generator=g)),), generator=g),
                           torch.tensor([eos])])
        long = torch.randint(10, 30, (12,), generator=g)
        out.append(tfpo.ScoredExample(prompt, short, long, torch.full((short.numel(),), 0.8),
                                      torch.full((long.numel(),), -0.8)))
    return out


@torch.no_grad()
def _eos_logp_at_chosen_ends(lm, examples, eos):
    batch = pack_sequences([e.prompt for e in examples], [e.chosen for e in examples])
    logits = run_lm(lm, batch).logits.float()
    ends = torch.tensor([e.chosen.numel() - 1 for e in examples])  # the state before the end-of-turn token
    return torch.log_softmax(logits[torch.arange(len(examples)), ends], -1)[:, eos]


@pytest.mark.parametrize("flow", ["reference", "rewards"])
def test_tfpo_on_concision_pairs_raises_end_of_turn_where_chosen_replies_end(tmp_path, flow):
    """The reference flow learns to stop where the short chosen replies stop; the rewards flow (with its
    fitted ramp, the recipe before the reference flow) is the failure this guards against: its pinned
    terminal asks every short reply to be as likely as a long one, and end-of-turn falls."""
    eos = 2
    patient = tiny_model("llama", seed=5)
    train_set, held_out = _concision_like_pairs(32, 0, eos), _concision_like_pairs(16, 1, eos)
    lm = attach_lora(tiny_model("llama", seed=5), rank=8)
    settings = tfpo.TFPOSettings(flow=flow)
    doc = doctor_lib.Doctor(lm, value_hidden=8, value_ramp=flow == "rewards")
    if flow == "reference":
        train_set = tfpo.with_reference_log_probs(lm, train_set)
    else:
        tfpo.fit_value_ramp(doc, train_set, settings, eos_id=eos)
    loss = functools.partial(tfpo.tfpo_batch_loss, doc, settings=settings, eos_id=eos)
    train(doc, train_set, loss, TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, log_every=100),
          tmp_path)
    gain = float((_eos_logp_at_chosen_ends(lm, held_out, eos) - _eos_logp_at_chosen_ends(patient, held_out, eos)).mean())
    if flow == "reference":  # measured: +0.21 nats (reference), -0.15 (rewards)
        assert gain > 0.1, gain
    else:
        assert gain < 0.0, gain


def test_a_resumed_run_keeps_the_reference_of_the_first_run(tmp_path, capsys):
    """A doctor that is not a LoRA model (the distilled small one) has moved from its start by the time a run
    resumes: the reference log-probs come from the first run's file, not from the moved doctor."""
    import fastdoctor
    from fastdoctor.llmdoctor import recipes

    _, tokenizer = fastdoctor.load_model("default")
    lm = tiny_model("llama", vocab=len(tokenizer), seed=6)
    examples = synthetic_examples(4, seed=7)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=1)
    recipes.train_tfpo(lm, tokenizer, examples, tmp_path, config)
    first = (tmp_path / "reference_logp.safetensors").read_bytes()
    assert "[tfpo] reference log-probs of 4 pairs" in capsys.readouterr().err
    recipes.train_tfpo(lm, tokenizer, examples, tmp_path, config)  # resumes from the last checkpoint
    assert "[tfpo] reference log-probs" not in capsys.readouterr().err  # read back, not recomputed
    assert (tmp_path / "reference_logp.safetensors").read_bytes() == first
