"""TFPO losses (LLMdoctor stage 2, METHODS.md §2.3 and decisions 1-5): pure functions on masked, batched
tensors, plus the TFPO batch loss that the trainer (fastdoctor.train drives for a doctor (doctor.py), and
fit_value_ramp, which sets the value head's position ramp before training (why: doctor.Doctor).

Shapes: a batch of B responses, each of up to L tokens.
  rewards       [B, L]      token rewards r_1..r_L from stage 1 (0 at padding)
  token_logp    [B, L]      log pi_doctor(y_t | s_{t-1}) of the observed tokens
  log_v         [B, L + 1]  log V at the states s_0 (end of prompt) .. s_L (after the last token)
  mask          [B, L]      True at real tokens; a response of n tokens has n + 1 states s_0..s_n
  ref_logp      [B, L]      log pi_ref(y_t | s_{t-1}) of the doctor's frozen start (the "reference" flow)
  finished      [B]         the response ended (its last token is end-of-turn); only those pin log V

Flow: log F(s_t) = log Q(s_t) + log V(s_t) with one of two prefix scores (decision 1, TFPOSettings.flow):
  "reference" (default)  log Q(s_t) = sum_{k<=t} [log pi_ref(y_k | s_{k-1}) + kappa * r_k]: at zero loss the
                         doctor is pi_ref(tau) * exp(kappa * sum r) / Z, the patient tilted by its own rewards;
  "rewards"              log Q(s_t) = kappa * sum_{k<=t} r_k: no language prior (the literal reading; the
                         value head then needs its position ramp, doctor.Doctor).
The SubTB residual of the sub-trajectory s_m -> s_n is (decision 2)
  delta(m, n) = [log F(s_n) - log F(s_m)] - sum_{k=m}^{n-1} log pi(y_{k+1} | s_k)
             = d_n - d_m,   d_t = log Q(s_t) + log V(s_t) - sum_{k<t} log pi(y_{k+1} | s_k),
so the sum of delta^2 over all N(N-1)/2 pairs of the N valid states is N * sum_t (d_t - mean d)^2: O(L)
(decision 3). subtb_loss_pairwise keeps the explicit O(L^2) form as the test oracle.
"""
from __future__ import annotations

import dataclasses

import torch

from ..sequences import SequenceBatch, pack_pairs, response_log_probs, right_pad, run_lm
from .doctor import value_ramp_term


def _flow_potentials(rewards, token_logp, log_v, mask, kappa: float, terminal_log_v: float | None,
                     ref_logp=None, finished=None):
    """d [B, L + 1] and the state mask [B, L + 1] (s_0..s_n valid for a response of n tokens)."""
    if not (rewards.shape == token_logp.shape == mask.shape):
        raise ValueError(f"rewards, token_logp and mask: expected one shape, got {list(rewards.shape)}, "
                         f"{list(token_logp.shape)} and {list(mask.shape)}")
    batch, length = rewards.shape
    if log_v.shape != (batch, length + 1):
        raise ValueError(f"log_v: expected shape [{batch}, {length + 1}] (states s_0..s_L), got {list(log_v.shape)}")
    if ref_logp is not None and ref_logp.shape != rewards.shape:
        raise ValueError(f"ref_logp: expected shape {list(rewards.shape)} (that of rewards), got {list(ref_logp.shape)}")
    if finished is not None and finished.shape != (batch,):
        raise ValueError(f"finished: expected shape [{batch}] (one flag per response), got {list(finished.shape)}")
    mask = mask.bool()
    zeros = rewards.new_zeros(batch, 1)
    score = kappa * rewards if ref_logp is None else ref_logp.to(rewards.dtype) + kappa * rewards
    log_q = torch.cat([zeros, torch.cumsum(score * mask, dim=1)], dim=1)
    spent = torch.cat([zeros, torch.cumsum(token_logp * mask, dim=1)], dim=1)
    lengths = mask.sum(dim=1)
    states = torch.arange(length + 1, device=mask.device).unsqueeze(0) <= lengths.unsqueeze(1)
    if terminal_log_v is not None:  # decision 4: log V after the last token is pinned, so log V(s_0) plays log Z
        terminal = torch.nn.functional.one_hot(lengths, length + 1).bool()
        if finished is not None:  # a reply cut off at the token limit is no finished trajectory: its end stays free
            terminal = terminal & finished.bool().unsqueeze(1)
        log_v = torch.where(terminal, torch.full_like(log_v, terminal_log_v), log_v)
    return (log_q + log_v - spent) * states, states


def subtb_loss(rewards: torch.Tensor, token_logp: torch.Tensor, log_v: torch.Tensor, mask: torch.Tensor, *,
               kappa: float = 1.0, terminal_log_v: float | None = 0.0, ref_logp: torch.Tensor | None = None,
               finished: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform SubTB over every sub-trajectory, averaged over each sequence's pairs, then over the batch.
    O(L) per sequence via sum_{m<n} (d_n - d_m)^2 = N * sum_t (d_t - mean d)^2 (centred: no cancellation).
    ref_logp None is the "rewards" flow; finished None pins every response's last state."""
    d, states = _flow_potentials(rewards, token_logp, log_v, mask, kappa, terminal_log_v, ref_logp, finished)
    count = states.sum(dim=1).to(d.dtype)
    mean = d.sum(dim=1) / count
    pair_sum = count * (((d - mean.unsqueeze(1)) * states) ** 2).sum(dim=1)
    pairs = (count * (count - 1) / 2).clamp_min(1)
    return (pair_sum / pairs).mean()


def subtb_loss_pairwise(rewards: torch.Tensor, token_logp: torch.Tensor, log_v: torch.Tensor, mask: torch.Tensor, *,
                        kappa: float = 1.0, terminal_log_v: float | None = 0.0,
                        subtb_lambda: float | None = None, ref_logp: torch.Tensor | None = None,
                        finished: torch.Tensor | None = None) -> torch.Tensor:
    """The explicit O(L^2) form: every delta(m, n) for m < n over valid states. With subtb_lambda, pairs are
    weighted subtb_lambda^(n - m) (SubTB(lambda)) and normalised by the sum of weights; this is the lambda
    variant itself (memory O(L^2) per sequence), and with subtb_lambda=None the oracle of subtb_loss."""
    d, states = _flow_potentials(rewards, token_logp, log_v, mask, kappa, terminal_log_v, ref_logp, finished)
    delta = d.unsqueeze(1) - d.unsqueeze(2)  # [B, m, n] = d_n - d_m
    positions = torch.arange(d.shape[1], device=d.device)
    upper = positions.unsqueeze(0) < positions.unsqueeze(1)  # m < n
    upper = upper.t()
    valid = upper.unsqueeze(0) & states.unsqueeze(2) & states.unsqueeze(1)
    weights = valid.to(d.dtype)
    if subtb_lambda is not None:
        span = (positions.unsqueeze(0) - positions.unsqueeze(1)).clamp_min(0).to(d.dtype)  # n - m
        weights = weights * subtb_lambda**span
    per_sequence = (weights * delta**2).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp_min(1e-12)
    return per_sequence.mean()


def value_margin_loss(log_v_preferred: torch.Tensor, log_v_other: torch.Tensor, *, gamma: float = 0.1) -> torch.Tensor:
    """The value discrimination hinge (decision 5): mean of max(0, gamma - (log V(s + y_w) - log V(s + y_l)))
    over pairs of states that share a prefix and differ in the next token."""
    if log_v_preferred.shape != log_v_other.shape:
        raise ValueError(f"log_v_other: expected shape {list(log_v_preferred.shape)}, got {list(log_v_other.shape)}")
    return torch.relu(gamma - (log_v_preferred - log_v_other)).mean()


def first_divergence(chosen: torch.Tensor, rejected: torch.Tensor, chosen_mask: torch.Tensor,
                     rejected_mask: torch.Tensor) -> torch.Tensor:
    """The index t of the first response token where chosen and rejected differ ([B]; the state s_t is their
    shared prefix, and s_t + y_w, s_t + y_l are the pair for value_margin_loss). A response that is a prefix
    of the other diverges at its end."""
    length = max(chosen.shape[1], rejected.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, length - x.shape[1]))  # noqa: E731
    same = (pad(chosen) == pad(rejected)) & pad(chosen_mask.long()).bool() & pad(rejected_mask.long()).bool()
    return (~same).long().argmax(dim=1)


def tfpo_loss(subtb: torch.Tensor, value: torch.Tensor, *, value_weight: float = 0.1) -> torch.Tensor:
    """L_TFPO = L_SubTB + lambda * L_value (METHODS.md §2.3, where this lambda is value_weight; 0.1 by
    decision 9)."""
    return subtb + value_weight * value


# ---- TFPO training: examples from a stage-1 rewards file, and the loss over a batch of them ----

FLOWS = ("reference", "rewards")


@dataclasses.dataclass(frozen=True)
class TFPOSettings:
    """flow: the prefix score log Q (decision 1): "reference" adds the doctor's frozen start's log-probs
    (examples need with_reference_log_probs), "rewards" is kappa * cumulative reward alone; kappa: the
    reward's weight in log Q; terminal_log_v: log V pinned after the last token of a reply that ended
    (decision 4, None leaves it free); gamma: value hinge margin; value_weight: weight of the value loss (the
    paper's lambda in L_SubTB + lambda L_value); subtb_lambda: None for uniform SubTB (O(L)), else the
    lambda^(n-m) weighted variant (O(L^2))."""

    flow: str = "reference"
    kappa: float = 1.0
    terminal_log_v: float | None = 0.0
    gamma: float = 0.1
    value_weight: float = 0.1
    subtb_lambda: float | None = None

    def __post_init__(self):
        if self.flow not in FLOWS:
            raise ValueError(f"flow: expected one of {FLOWS}, got {self.flow!r}")


@dataclasses.dataclass(frozen=True)
class ScoredExample:
    """One preference pair with its token rewards (the rows of a rewards file), and, for the "reference"
    flow, log pi_ref of each reply's tokens (with_reference_log_probs)."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_ref_logp: torch.Tensor | None = None
    rejected_ref_logp: torch.Tensor | None = None


def examples_from_rewards(tensors: dict[str, torch.Tensor]) -> list[ScoredExample]:
    """Unpads the rows of a rewards file (rewards.load_rewards) into examples."""
    def rows(name, mask):
        return [t[m.bool()] for t, m in zip(tensors[name], tensors[mask])]

    prompts = rows("prompt_ids", "prompt_mask")
    chosen, rejected = rows("chosen_ids", "chosen_mask"), rows("rejected_ids", "rejected_mask")
    r_chosen, r_rejected = rows("chosen_rewards", "chosen_mask"), rows("rejected_rewards", "rejected_mask")
    return [ScoredExample(*fields) for fields in zip(prompts, chosen, rejected, r_chosen, r_rejected)]


@dataclasses.dataclass
class FlowBatch:
    """The chosen responses of the pairs, then their rejected ones, as one padded batch (sequences.pack_pairs),
    with their [2B, L] rewards, [2B, L] reference log-probs (None without them) and [2B] finished flags (None
    when no end-of-turn id is known: every reply then counts as finished)."""

    batch: SequenceBatch
    rewards: torch.Tensor
    ref_logp: torch.Tensor | None
    finished: torch.Tensor | None


def pack_scored_pairs(examples: list[ScoredExample], pad_id: int, device, eos_id: int | None = None) -> FlowBatch:
    batch = pack_pairs(examples, pad_id).to(device)
    width = batch.response_ids.shape[1]
    rewards, _ = right_pad([e.chosen_rewards for e in examples] + [e.rejected_rewards for e in examples],
                           torch.float32, device, width=width)
    ref_logp = None
    references = [e.chosen_ref_logp for e in examples] + [e.rejected_ref_logp for e in examples]
    if all(r is not None for r in references):
        ref_logp, _ = right_pad(references, torch.float32, device, width=width)
    finished = None
    if eos_id is not None:
        lengths = batch.response_mask.sum(dim=1)
        last = batch.response_ids.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
        finished = (last == eos_id) & (lengths > 0)
    return FlowBatch(batch, rewards, ref_logp, finished)


@torch.no_grad()
def with_reference_log_probs(lm, examples: list[ScoredExample], *, pad_id: int = 0,
                             device: torch.device | str = "cpu", batch_size: int = 8,
                             autocast: bool = False) -> list[ScoredExample]:
    """The examples with log pi_ref of every reply token filled in, where pi_ref is `lm` as it is now (the
    doctor's frozen start: call it before training) or, for a peft LoRA model, `lm` with its adapters
    disabled (the patient itself, at any point of training). One teacher-forced pass, in eval mode, in the
    dtype the training forward uses (autocast bf16 or not), so that at step 0 every residual is kappa times a
    cumulative reward."""
    import contextlib

    was_training = lm.training
    lm.eval()
    adapters_off = lm.disable_adapter() if hasattr(lm, "disable_adapter") else contextlib.nullcontext()
    device = torch.device(device)
    out = []
    try:
        with adapters_off, torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            for start in range(0, len(examples), batch_size):
                chunk = examples[start:start + batch_size]
                packed = pack_pairs(chunk, pad_id).to(device)
                logp = response_log_probs(run_lm(lm, packed).logits, packed).float().cpu()
                count = len(chunk)
                for i, e in enumerate(chunk):
                    out.append(dataclasses.replace(e, chosen_ref_logp=logp[i, : e.chosen.numel()].clone(),
                                                   rejected_ref_logp=logp[count + i, : e.rejected.numel()].clone()))
    finally:
        lm.train(was_training)
    return out


def _subtb(settings: TFPOSettings, flow: FlowBatch, token_logp, log_v) -> torch.Tensor:
    if settings.flow == "reference" and flow.ref_logp is None:
        raise ValueError("the 'reference' flow needs the reference log-probs of every reply: pass the examples "
                         "through tfpo.with_reference_log_probs first (or use TFPOSettings(flow='rewards'))")
    ref_logp = flow.ref_logp if settings.flow == "reference" else None
    common = dict(kappa=settings.kappa, terminal_log_v=settings.terminal_log_v, ref_logp=ref_logp,
                  finished=flow.finished)
    mask = flow.batch.response_mask
    if settings.subtb_lambda is None:
        return subtb_loss(flow.rewards, token_logp, log_v, mask, **common)
    return subtb_loss_pairwise(flow.rewards, token_logp, log_v, mask, subtb_lambda=settings.subtb_lambda, **common)


def tfpo_batch_loss(doctor, examples: list[ScoredExample], settings: TFPOSettings, *, pad_id: int = 0,
                    device: torch.device | str = "cpu", eos_id: int | None = None) -> tuple[torch.Tensor, dict]:
    """L_TFPO over a batch of pairs: SubTB over both responses of every pair (the rejected ones carry
    negative rewards and so teach low flow), plus the value hinge at each pair's first divergence. eos_id:
    the end-of-turn id, so that only replies that end with it pin log V (None pins every reply)."""
    count = len(examples)
    flow = pack_scored_pairs(examples, pad_id, device, eos_id)
    batch = flow.batch
    token_logp, log_v = doctor(batch)
    subtb = _subtb(settings, flow, token_logp, log_v)
    ids, mask = batch.response_ids, batch.response_mask
    split = first_divergence(ids[:count], ids[count:], mask[:count], mask[count:])
    lengths = mask.sum(dim=1)
    # The pair (s_t + y_w, s_t + y_l) exists only where both responses have a token at the divergence.
    valid = (split < lengths[:count]) & (split < lengths[count:])
    value = log_v.new_zeros(())
    if bool(valid.any()):
        rows = valid.nonzero().flatten()
        after = split[rows] + 1
        value = value_margin_loss(log_v[rows, after], log_v[rows + count, after], gamma=settings.gamma)
    total = tfpo_loss(subtb, value, value_weight=settings.value_weight)
    chosen_logp = (token_logp[:count].sum(1)).mean()
    rejected_logp = (token_logp[count:].sum(1)).mean()
    return total, {"subtb": float(subtb.detach()), "value": float(value.detach()),
                   "logp_margin": float((chosen_logp - rejected_logp).detach()), "tokens": float(mask.sum())}


@torch.no_grad()
def _ramp_inputs(doctor, examples, *, pad_id: int, device, batch_size: int, eos_id: int | None):
    flows = []
    for start in range(0, len(examples), batch_size):
        flow = pack_scored_pairs(examples[start:start + batch_size], pad_id, device, eos_id)
        token_logp, log_v = doctor(flow.batch)
        log_v = log_v - value_ramp_term(doctor.value_ramp.to(log_v.dtype), log_v.shape[1])  # the head alone
        flows.append((flow, token_logp.double(), log_v.double()))
    return flows


def fit_value_ramp(doctor, examples: list[ScoredExample], settings: TFPOSettings = TFPOSettings(flow="rewards"), *,
                   pad_id: int = 0, device: torch.device | str = "cpu", batch_size: int = 8,
                   max_examples: int = 64, eos_id: int | None = None) -> dict:
    """Sets doctor.value_ramp (log V += slope * t + offset, see doctor.Doctor) to the minimiser of the SubTB
    loss under the current doctor on up to `max_examples` pairs (evenly spaced), and returns the fit.

    Run once before training: the loss is an exact quadratic in the two numbers, so one Newton step (with a
    pseudo-inverse: without a pinned terminal the offset cancels and only the slope is determined) lands on
    the minimum. Forward passes only, in eval mode."""
    if doctor.value_ramp is None:
        raise ValueError("fit_value_ramp: the doctor has no value ramp (Doctor(..., value_ramp=True))")
    if not examples:
        raise ValueError("fit_value_ramp: no examples")
    stride = max(1, len(examples) // max_examples)
    sample = list(examples)[::stride][:max_examples]
    was_training = doctor.training
    doctor.eval()
    try:
        flows = _ramp_inputs(doctor, sample, pad_id=pad_id, device=device, batch_size=batch_size, eos_id=eos_id)
    finally:
        doctor.train(was_training)
    flows = [(dataclasses.replace(f, rewards=f.rewards.double(),
                                  ref_logp=None if f.ref_logp is None else f.ref_logp.double()), t, v)
             for f, t, v in flows]

    def loss_of(ramp: torch.Tensor) -> torch.Tensor:
        total = ramp.new_zeros(())
        for flow, token_logp, log_v in flows:
            total = total + _subtb(settings, flow, token_logp, log_v + value_ramp_term(ramp, log_v.shape[1]))
        return total / len(flows)

    start = torch.zeros(2, dtype=torch.float64, device=flows[0][1].device)
    gradient = torch.autograd.functional.jacobian(loss_of, start)
    hessian = torch.autograd.functional.hessian(loss_of, start)
    ramp = -torch.linalg.pinv(hessian) @ gradient
    before, after = float(loss_of(start)), float(loss_of(ramp))
    doctor.value_ramp.data.copy_(ramp.to(doctor.value_ramp.dtype))
    return {"slope": float(ramp[0]), "offset": float(ramp[1]), "subtb_before": before, "subtb_after": after,
            "pairs": len(sample)}
