"""TFPO on a tiny doctor: the orientation sign test (METHODS.md decision 2) and the batch loss's pieces."""
from __future__ import annotations

import functools

import pytest
import torch

from fastdoctor.llmdoctor import doctor as doctor_lib
from fastdoctor.sequences import pack_sequences
from fastdoctor.llmdoctor import tfpo
from fastdoctor.train import TrainConfig, train
from conftest import tiny_model

from conftest import synthetic_examples


@torch.no_grad()
def _held_out_margin(doc, examples):
    """Mean over pairs of log pi(chosen) - log pi(rejected)."""
    chosen = pack_sequences([e.prompt for e in examples], [e.chosen for e in examples])
    rejected = pack_sequences([e.prompt for e in examples], [e.rejected for e in examples])
    return float((doc(chosen)[0].sum(1) - doc(rejected)[0].sum(1)).mean())


def _train_margin(tmp_path, kappa, flow):
    train_set, held_out = synthetic_examples(48, seed=0), synthetic_examples(24, seed=99)
    doc = doctor_lib.Doctor(tiny_model("llama", seed=0), value_hidden=16)
    before = _held_out_margin(doc, held_out)
    if flow == "reference":  # the doctor's start is its reference
        train_set = tfpo.with_reference_log_probs(doc.lm, train_set)
    loss = functools.partial(tfpo.tfpo_batch_loss, doc, settings=tfpo.TFPOSettings(flow=flow, kappa=kappa))
    train(doc, train_set, loss, TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=4, log_every=100),
          tmp_path / f"{flow}_kappa{kappa}")
    return before, _held_out_margin(doc, held_out)


@pytest.mark.parametrize("flow", ["reference", "rewards"])
def test_orientation_sign(tmp_path, flow):
    """kappa = +1 is decision 2's orientation: held-out chosen responses gain log-probability relative to
    rejected ones. kappa = -1 is the literal third-party form (the Q ratio inverted); the same training must
    end far below it, which shows that this test tells the two orientations apart. (Both also learn the
    token statistics, which moves the margin a little either way, hence the comparison.)"""
    before, right = _train_margin(tmp_path, 1.0, flow)
    _, inverted = _train_margin(tmp_path, -1.0, flow)
    assert right > before + 0.75, (before, right)
    assert right > inverted + 1.0, (right, inverted)


def test_batch_loss_parts_and_value_pairs():
    doc = doctor_lib.Doctor(tiny_model("llama", seed=1), value_hidden=8)
    examples = synthetic_examples(5, seed=2)
    examples = tfpo.with_reference_log_probs(doc.lm, examples)
    total, metrics = tfpo.tfpo_batch_loss(doc, examples, tfpo.TFPOSettings(value_weight=0.5, gamma=0.2))
    # log V starts at zero everywhere, so every value pair sits gamma short of its margin.
    assert metrics["value"] == pytest.approx(0.2)
    assert float(total.detach()) == pytest.approx(metrics["subtb"] + 0.5 * 0.2, rel=1e-5)
    assert metrics["tokens"] == sum(e.chosen.numel() + e.rejected.numel() for e in examples)
    lam_total, _ = tfpo.tfpo_batch_loss(doc, examples, tfpo.TFPOSettings(subtb_lambda=0.9))
    assert torch.isfinite(lam_total)


def test_examples_round_trip_a_rewards_file_layout():
    examples = synthetic_examples(3)
    from fastdoctor.sequences import right_pad

    tensors = {}
    tensors["prompt_ids"], tensors["prompt_mask"] = right_pad([e.prompt for e in examples], torch.int64)
    for name in ("chosen", "rejected"):
        tensors[f"{name}_ids"], tensors[f"{name}_mask"] = right_pad([getattr(e, name) for e in examples], torch.int64)
        tensors[f"{name}_rewards"], _ = right_pad([getattr(e, f"{name}_rewards") for e in examples], torch.float32)
    back = tfpo.examples_from_rewards(tensors)
    for a, b in zip(examples, back):
        for field in ("prompt", "chosen", "rejected", "chosen_rewards", "rejected_rewards"):
            torch.testing.assert_close(getattr(a, field).to(getattr(b, field).dtype), getattr(b, field))


def test_fit_value_ramp_lands_on_the_subtb_minimum():
    """The fit is one Newton step on an exact quadratic: afterwards the loss's gradient in the two ramp
    numbers is ~0, the loss never rises, and a perturbed ramp does worse."""
    doc = doctor_lib.Doctor(tiny_model("llama", seed=4), value_hidden=8, value_ramp=True)
    examples = synthetic_examples(12, seed=5)
    settings = tfpo.TFPOSettings(flow="rewards")
    fit = tfpo.fit_value_ramp(doc, examples, settings, batch_size=12)  # the one batch checked below
    assert fit["subtb_after"] <= fit["subtb_before"]
    assert fit["slope"] < 0  # a random tiny LM spends ~log V nats per token: log V must fall along a response
    doc.eval()
    loss, _ = tfpo.tfpo_batch_loss(doc, examples, settings)
    doc.zero_grad()
    loss.backward()
    assert doc.value_ramp.grad.abs().max() < 1e-3 * (1 + float(loss.detach())), doc.value_ramp.grad
    with torch.no_grad():
        for delta in ([0.05, 0.0], [0.0, 0.5], [-0.05, 0.0]):
            doc.value_ramp += torch.tensor(delta)
            worse, _ = tfpo.tfpo_batch_loss(doc, examples, settings)
            doc.value_ramp -= torch.tensor(delta)
            assert float(worse) > float(loss)


def test_fit_value_ramp_needs_a_ramp_and_examples():
    with pytest.raises(ValueError, match="no value ramp"):
        tfpo.fit_value_ramp(doctor_lib.Doctor(tiny_model("llama", seed=4)), synthetic_examples(2))
    with pytest.raises(ValueError, match="no examples"):
        tfpo.fit_value_ramp(doctor_lib.Doctor(tiny_model("llama", seed=4), value_ramp=True), [])


def test_free_terminal_fits_the_slope_only():
    """Without a pinned terminal the offset cancels from every residual: the pseudo-inverse leaves it at 0."""
    doc = doctor_lib.Doctor(tiny_model("llama", seed=4), value_ramp=True)
    fit = tfpo.fit_value_ramp(doc, synthetic_examples(8, seed=6), tfpo.TFPOSettings(flow="rewards", terminal_log_v=None))
    assert abs(fit["offset"]) < 1e-6 and fit["slope"] < 0
