"""LLMdoctor's training stages wired together: build a fluent doctor (decision 8), distil it when it is
small, train it with TFPO on a stage-1 rewards file, or train the GenARM baseline on the same pairs. The
CLI (`fastdoctor train`), the quickstart and the quality evaluation call these.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import pathlib
import sys
import time

import torch

from .. import genarm
from ..files import atomic_file, recover_directory, write_json
from ..lora import attach_lora
from ..models import logits_width, make_doctor
from ..tokens import chat_ids, check_vocab, pad_id, reply_finished, split_response
from ..train import TrainConfig, train
from . import distill, tfpo
from .doctor import Doctor, save_doctor
from .rewards import load_rewards


@dataclasses.dataclass(frozen=True)
class DoctorInit:
    """kind 'full': a copy of the patient with LoRA adapters (the paper's same-size setting); 'small': the
    patient's first num_layers - keep_last and last keep_last layers, distilled before TFPO."""

    kind: str = "full"
    lora_rank: int = 8
    num_layers: int = 15
    keep_last: int = 7
    value_hidden: int = 0
    # TFPO: log V += slope * t + offset, fitted before training (doctor.Doctor). None: the flow's own default
    # (the "rewards" flow needs it; the "reference" flow starts every residual at kappa * cumulative reward).
    value_ramp: bool | None = None

    def __post_init__(self):
        if self.kind not in ("full", "small"):
            raise ValueError(f"doctor init: expected 'full' or 'small', got {self.kind!r}")


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_lm(patient, init: DoctorInit, *, seed: int = 0):
    """The doctor's LM before any training: a LoRA-wrapped copy of the patient, or a reduced copy whose
    parameters all train. peft draws the LoRA initialisation from torch's global RNG, so it is drawn here
    from a forked RNG seeded with `seed`: the same seed gives the same doctor whatever ran before, and the
    caller's RNG is left alone."""
    if init.kind == "full":
        device = next(patient.parameters()).device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return attach_lora(_frozen(copy.deepcopy(patient)), rank=init.lora_rank)
    lm = make_doctor(patient, init.num_layers, keep_last=init.keep_last)
    for p in lm.parameters():
        p.requires_grad_(True)
    return lm


def scored_examples(rewards_path: str | os.PathLike, tokenizer, patient) -> list[tfpo.ScoredExample]:
    """The pairs of a rewards file, refused with a clear error if it was made with another tokenizer."""
    tensors, meta = load_rewards(rewards_path)
    check_vocab(meta.get("vocab") or None, tokenizer, rewards_path, "the rewards were computed")
    examples = tfpo.examples_from_rewards(tensors)
    if not examples:
        raise ValueError(f"{rewards_path}: the rewards file holds no pairs")
    largest = max(int(torch.cat([e.prompt, e.chosen, e.rejected]).max()) for e in examples)
    if largest >= logits_width(patient):
        raise ValueError(f"{rewards_path}: token id {largest} is outside the patient's vocabulary of "
                         f"{logits_width(patient)}; the rewards file belongs to another tokenizer")
    return examples


@dataclasses.dataclass(frozen=True)
class TokenPair:
    """One preference pair as token ids: the plain chat prompt, and each reply through its end-of-turn token
    (without it when the reply was cut off), exactly as a stage-1 rewards file stores them."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


def token_pairs(tokenizer, pairs, patient) -> list[TokenPair]:
    """The pairs as the token ids that stage 1 would store for them (rewards.score_pair's split), without
    scoring them: GenARM's loss needs ids only, and stage 1 is two face forwards over every pair."""
    limit = getattr(patient.config, "max_position_embeddings", None)
    out = []
    for index, pair in enumerate(pairs):
        user = [{"role": "user", "content": pair.prompt}]
        prompt = chat_ids(tokenizer, user)
        replies = [split_response(tokenizer, user, getattr(pair, which), index, which,
                                  finished=reply_finished(pair, which))[1] for which in ("chosen", "rejected")]
        longest = len(prompt) + max(map(len, replies))
        if limit is not None and longest > limit:
            raise ValueError(f"pair {index}: prompt + reply is {longest} tokens, more than the patient's context of "
                             f"{limit}")
        out.append(TokenPair(*(torch.tensor(ids, dtype=torch.int64) for ids in (prompt, *replies))))
    if not out:
        raise ValueError("token_pairs: no pairs")
    return out


def distill_small(patient, tokenizer, sequences, out: pathlib.Path, init: DoctorInit, config: TrainConfig,
                  *, resume: bool = True):
    """Distils build_lm(small) from the patient on its own text; returns the LM."""
    lm = build_lm(patient, init, seed=config.seed)
    _frozen(patient)
    loss = functools.partial(distill.distill_batch_loss, lm, patient, pad_id=pad_id(tokenizer),
                             device=next(patient.parameters()).device)
    train(lm, sequences, loss, config, out, name="distill", resume=resume)
    return lm.eval()


# How `--strength` becomes weights for a TFPO doctor of each flow (fastdoctor.fronts, METHODS.md decision 9),
# recorded in doctor.json's info.decoding: a reference-flow doctor's log p_doctor - log p_patient is its learned
# advantage (bench/results/fronts_cpu.md compares the two conventions).
DECODING = {"reference": {"convention": "advantage"}, "rewards": {"convention": "normalised"}}


def default_value_ramp(settings: tfpo.TFPOSettings) -> bool:
    """The value ramp each flow needs: the "rewards" flow's residuals carry the doctor's whole log-likelihood
    (~2.5 nats a token), which only a position ramp absorbs; the "reference" flow's do not."""
    return settings.flow == "rewards"


def reference_examples(lm, examples, out: pathlib.Path, *, pad: int, device, autocast: bool, resuming: bool):
    """The examples with pi_ref's log-probs (tfpo.with_reference_log_probs), kept at
    <out>/reference_logp.safetensors for a resumed run: a resumed small doctor has moved from its start, so its
    reference must come from the first run (a LoRA doctor's reference is the patient, the same either way)."""
    from safetensors.torch import load_file, save_file

    path = out / "reference_logp.safetensors"
    if resuming and path.exists():
        saved = load_file(str(path))
        shapes = [(e.chosen.shape, e.rejected.shape) for e in examples]
        if len(saved) == 2 * len(examples) and all(
                (saved.get(f"chosen.{i}", torch.empty(0)).shape, saved.get(f"rejected.{i}", torch.empty(0)).shape)
                == shape for i, shape in enumerate(shapes)):
            return [dataclasses.replace(e, chosen_ref_logp=saved[f"chosen.{i}"], rejected_ref_logp=saved[f"rejected.{i}"])
                    for i, e in enumerate(examples)]
    started = time.time()
    examples = tfpo.with_reference_log_probs(lm, examples, pad_id=pad, device=device, autocast=autocast)
    if _is_main_process():
        tensors = {f"{which}.{i}": getattr(e, f"{which}_ref_logp").contiguous()
                   for i, e in enumerate(examples) for which in ("chosen", "rejected")}
        with atomic_file(path) as temporary:
            save_file(tensors, str(temporary))
    print(f"[tfpo] reference log-probs of {len(examples)} pairs in {time.time() - started:.1f} s", file=sys.stderr,
          flush=True)
    return examples


def train_tfpo(lm, tokenizer, examples, out: pathlib.Path, config: TrainConfig,
               settings: tfpo.TFPOSettings = tfpo.TFPOSettings(), *, value_hidden: int = 0,
               value_ramp: bool | None = None, resume: bool = True, info: dict | None = None) -> Doctor:
    """TFPO on `examples`; the trained doctor is saved to <out>/doctor (atomically). The "reference" flow
    first scores every reply under the doctor's start (reference_examples); with value_ramp (None: the flow's
    default), a fresh run first fits the value head's position ramp (tfpo.fit_value_ramp); a resumed one
    restores it."""
    value_ramp = default_value_ramp(settings) if value_ramp is None else value_ramp
    doctor = Doctor(lm, value_hidden=value_hidden, value_ramp=value_ramp)
    pad, device = pad_id(tokenizer), next(lm.parameters()).device
    eos = tokenizer.eos_token_id
    info = dict(info or {})
    if _is_main_process():
        recover_directory(out / "checkpoint")  # a commit a kill interrupted (see files.recover_directory)
    resuming = resume and (out / "checkpoint" / "state.json").exists()
    if settings.flow == "reference":
        examples = reference_examples(lm, examples, out, pad=pad, device=device, autocast=config.uses_bf16(device),
                                      resuming=resuming)
    fit_path = out / "value_ramp_fit.json"
    if value_ramp and not resuming:
        fit = tfpo.fit_value_ramp(doctor, examples, settings, pad_id=pad, device=device, eos_id=eos)
        info["value_ramp_fit"] = fit
        if _is_main_process():
            write_json(fit_path, fit)  # a resumed run restores the ramp from the checkpoint, and the record here
            print(f"[tfpo] value ramp: slope={fit['slope']:.3f} offset={fit['offset']:.2f} subtb "
                  f"{fit['subtb_before']:.1f} -> {fit['subtb_after']:.1f} on {fit['pairs']} pairs",
                  file=sys.stderr, flush=True)
    elif value_ramp and fit_path.exists():
        info["value_ramp_fit"] = json.loads(fit_path.read_text())
    loss = functools.partial(tfpo.tfpo_batch_loss, doctor, settings=settings, pad_id=pad, device=device, eos_id=eos)
    history = train(doctor, examples, loss, config, out, name="tfpo", resume=resume)
    if _is_main_process():
        save_doctor(doctor, out / "doctor", tokenizer,
                    info={"method": "tfpo", "settings": dataclasses.asdict(settings),
                          "config": dataclasses.asdict(config), "decoding": DECODING[settings.flow], **info,
                          "final": history[-1] if history else None})
    return doctor


def train_genarm(lm, tokenizer, examples, out: pathlib.Path, config: TrainConfig, *, beta_r: float = 0.05,
                 resume: bool = True, info: dict | None = None) -> Doctor:
    """GenARM's autoregressive reward model on the same pairs (the baseline); saved like a doctor (its value
    head stays at zero and is unused)."""
    doctor = Doctor(lm)
    for p in doctor.value_head.parameters():
        p.requires_grad_(False)
    loss = functools.partial(genarm.arm_batch_loss, lm, beta_r=beta_r, pad_id=pad_id(tokenizer),
                             device=next(lm.parameters()).device)
    history = train(doctor, examples, loss, config, out, name="genarm", resume=resume)
    if _is_main_process():
        save_doctor(doctor, out / "doctor", tokenizer,
                    info={"method": "genarm", "beta_r": beta_r, "config": dataclasses.asdict(config), **(info or {}),
                          "final": history[-1] if history else None})
    return doctor


def _is_main_process() -> bool:
    """Under torchrun only process 0 writes the trained doctor."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
