"""Distilling a small doctor from the patient (METHODS.md decision 8, the weak-to-strong setting).

A truncated copy of the patient is not fluent (it keeps the patient's greedy token 2-12% of the time), so
before TFPO the small doctor is trained to match the patient's next-token distribution, KL(p_patient ||
p_doctor), on text the patient generated for the bundled prompts. `agreement` measures the result: how often
the doctor's greedy token is the patient's, how often the alpha = beta = 1 mixture keeps the patient's
choice, and the doctor's perplexity on held-out patient text.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..sequences import pack_sequences, run_lm
from ..shared_base import teacher_forced_logits
from ..tokens import split_response

Sequences = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (prompt ids, response ids)


def chat_sequences(tokenizer, pairs, *, responses: str = "both") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt ids, response ids) under the chat template for the responses of preference pairs
    ('chosen', 'rejected' or 'both')."""
    out = []
    for index, pair in enumerate(pairs):
        texts = {"chosen": [pair.chosen], "rejected": [pair.rejected], "both": [pair.chosen, pair.rejected]}[responses]
        for which, text in zip(("chosen", "rejected"), texts):
            prefix, tail = split_response(tokenizer, [{"role": "user", "content": pair.prompt}], text, index, which)
            out.append((torch.tensor(prefix), torch.tensor(tail)))
    return out


def patient_samples(patient, tokenizer, prompts: Sequence[str], *, samples: int = 2, seed: int = 1000,
                    max_new_tokens: int = 64, temperature: float = 1.0,
                    top_p: float = 0.95) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt ids, response ids) for `samples` fresh patient samples per prompt under the chat template (EOS
    kept when the patient emitted it). More of the patient's own text is what lets a distilled doctor
    generalise: on the 510 bundled responses alone, held-out agreement stalls while training agreement climbs."""
    from ..quality import sample_completions

    done = sample_completions(patient, tokenizer, prompts, samples=samples, seed=seed, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p)
    eos = tokenizer.eos_token_id
    out = []
    for prompt_ids, rows in zip(done.prompt_ids, done.tokens):
        for tokens in rows:
            finished = len(tokens) < max_new_tokens and eos is not None
            response = tokens + ([eos] if finished else [])
            if response:
                out.append((torch.tensor(prompt_ids), torch.tensor(response)))
    return out


def distill_batch_loss(student: nn.Module, teacher: nn.Module, sequences: Sequences, *, pad_id: int = 0,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, dict]:
    """Mean over response positions of KL(p_teacher || p_student), full vocabulary."""
    batch = pack_sequences([p for p, _ in sequences], [r for _, r in sequences], pad_id).to(device)
    width = batch.response_ids.shape[1]
    with torch.no_grad():
        target = torch.log_softmax(run_lm(teacher, batch).logits[:, :width].float(), dim=-1)
    student_logp = torch.log_softmax(run_lm(student, batch).logits[:, :width].float(), dim=-1)
    kl = (target.exp() * (target - student_logp)).sum(-1)
    mask = batch.response_mask
    loss = (kl * mask).sum() / mask.sum()
    agree = ((target.argmax(-1) == student_logp.argmax(-1)) & mask).sum() / mask.sum()
    return loss, {"agreement": float(agree), "tokens": float(mask.sum())}


@torch.no_grad()
def agreement(patient: nn.Module, doctor: nn.Module, sequences: Sequences, *, alpha: float = 1.0, beta: float = 1.0,
              batch_size: int = 8, pad_id: int = 0) -> dict:
    """Teacher-forced on `sequences`: greedy agreement (doctor argmax == patient argmax), mixed agreement
    (argmax of alpha * log p_patient + beta * log p_doctor == patient argmax) and the doctor's perplexity of
    the response tokens."""
    device = next(patient.parameters()).device
    same = mixed = tokens = 0
    nll = 0.0
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first: first + batch_size]
        batch = pack_sequences([p for p, _ in chunk], [r for _, r in chunk], pad_id).to(device)
        width = batch.response_ids.shape[1]
        both = teacher_forced_logits(patient, [doctor], batch)  # an adapter doctor: in the patient's forward
        lp, ld = (torch.log_softmax(z[:, :width].float(), -1) for z in both)
        mask = batch.response_mask
        choice = lp.argmax(-1)
        same += int(((ld.argmax(-1) == choice) & mask).sum())
        mixed += int((((alpha * lp + beta * ld).argmax(-1) == choice) & mask).sum())
        nll -= float((ld.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * mask).sum())
        tokens += int(mask.sum())
    return {"greedy_agreement": same / tokens, "mixed_agreement": mixed / tokens,
            "perplexity": float(torch.tensor(nll / tokens).exp()), "tokens": tokens}
