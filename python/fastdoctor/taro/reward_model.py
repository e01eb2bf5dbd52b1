"""TARo stage 1 (METHODS.md §3.2): the step-wise autoregressive reward model.

A copy of the patient (fluent from the start, decision 8) with LoRA adapters, trained with GenARM's
Bradley-Terry loss (genarm.arm_batch_loss) on Math-Step-DPO-style step pairs:

    context = chat_prompt(question) + initial_reason_steps      (the start of the assistant turn)
    y_w = the chosen next step, y_l = the rejected next step
    L = -log sigmoid(beta_r * [sum log pi_rm(y_w) - sum log pi_rm(y_l)])

It is saved as peft's adapter files plus base.json and taro_rm.json (fastdoctor.adapters): a few MB, loaded as an
AdapterDoctor checked against the base model (load_reward_model(path, patient=base)), which generate runs in one
stacked forward with the base. A merged RM (an ordinary HF folder) loads too.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from .. import adapters, tokens
from .. import train as train_lib
from ..files import read_format_json, staged_directory
from ..genarm import arm_batch_loss
from ..lora import attach_lora
from ..models import load_model
from ..sequences import pack_pairs, response_log_probs, run_lm
from .reasoning import StepPair, chat_prompt, load_step_pairs

RM_FORMAT = "fastdoctor.taro_rm/1"


def step_context(tokenizer, pair: StepPair) -> str:
    """The reward model's context for a step pair: the chat prompt with the assistant turn opened, then the
    earlier steps (one per line), so the next step starts a new line."""
    steps = pair.initial_reason_steps.strip("\n")
    return chat_prompt(tokenizer, pair.prompt, pair.example) + (steps + "\n" if steps else "")


@dataclasses.dataclass
class PairTokens:
    """One tokenised step pair, in the form arm_batch_loss takes (.prompt, .chosen, .rejected)."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    level: int = 0
    error_type: str = ""


def step_pair_tokens(tokenizer, pairs: Sequence[StepPair]) -> list[PairTokens]:
    out = []
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = (tokens.encode(tokenizer, text) for text in
                                    (step_context(tokenizer, pair), pair.chosen, pair.rejected))
        if chosen.numel() == 0 or rejected.numel() == 0:
            raise ValueError(f"pairs[{index}]: the chosen or rejected step is empty")
        out.append(PairTokens(prompt, chosen, rejected, pair.level, pair.error_type))
    return out



@torch.no_grad()
def pair_accuracy(lm: nn.Module, examples: Sequence[PairTokens], *, beta_r: float = 0.05, batch_size: int = 8,
                  pad_id: int = 0) -> dict:
    """Pair accuracy (the RM's reward of the chosen step beats the rejected one), mean margin and BT loss over
    `examples`, overall and per level and per error type."""
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    margins, losses = [], []
    try:
        for first in range(0, len(examples), batch_size):
            chunk = list(examples[first: first + batch_size])
            batch = pack_pairs(chunk, pad_id).to(device)
            reward = response_log_probs(run_lm(lm, batch).logits, batch).sum(dim=1)
            margin = (reward[: len(chunk)] - reward[len(chunk):]).float().cpu()
            margins.append(margin)
            losses.append(-nn.functional.logsigmoid(beta_r * margin))
    finally:
        lm.train(was_training)
    margin = torch.cat(margins)
    right = margin > 0

    def group(key):
        out = {}
        for value in sorted({getattr(e, key) for e in examples}):
            mask = torch.tensor([getattr(e, key) == value for e in examples])
            out[str(value)] = round(float(right[mask].float().mean()), 4)
        return out

    return {"pairs": len(examples), "accuracy": round(float(right.float().mean()), 4),
            "margin": round(float(margin.mean()), 4), "loss": round(float(torch.cat(losses).mean()), 5),
            "by_level": group("level"), "by_error_type": group("error_type")}


def train_reward_model(patient: nn.Module, tokenizer, out: str | os.PathLike, *, pairs: Sequence[StepPair] | None = None,
                       eval_pairs: Sequence[StepPair] | None = None, config=None, beta_r: float = 0.05,
                       lora_rank: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05, lora_layers: int = 0,
                       work: str | os.PathLike | None = None, resume: bool = True, eval_before: bool = True,
                       info: dict | None = None) -> dict:
    """Stage 1: trains the step-wise reward model and saves it to `out` (save_reward_model).

    The RM starts as a copy of `patient` (decision 8: fluent) with LoRA adapters (GenARM's r = 8, alpha = 16,
    dropout 0.05) on every decoder layer, or on the last `lora_layers` only (backpropagation then stops there:
    about 2.4x cheaper steps on SmolLM2-135M with 10 of 30 layers); only the adapters train, with train.train
    (AdamW, warmup + cosine, atomic resumable checkpoints in `work`, default <out>.train). pairs: default the
    bundled train split; eval_pairs: default the bundled test split, scored after training and, with
    eval_before, before (the untrained RM equals the patient). Returns a summary dict."""
    if not beta_r > 0:
        raise ValueError(f"beta_r: expected > 0, got {beta_r}")
    pairs = load_step_pairs("train") if pairs is None else list(pairs)
    eval_pairs = load_step_pairs("test") if eval_pairs is None else list(eval_pairs)
    config = config or train_lib.TrainConfig(steps=75, batch_size=8, lr=5e-4, warmup_steps=8, log_every=5,
                                             checkpoint_every=25)
    out = pathlib.Path(out)
    work = pathlib.Path(work) if work is not None else out.with_name(out.name + ".train")
    pad = tokens.pad_id(tokenizer)
    examples = step_pair_tokens(tokenizer, pairs)
    held_out = step_pair_tokens(tokenizer, eval_pairs) if eval_pairs else []
    lm = copy.deepcopy(patient)
    for p in lm.parameters():
        p.requires_grad_(False)
    lm = attach_lora(lm, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, layers=lora_layers)
    device = next(lm.parameters()).device
    before = pair_accuracy(lm, held_out, beta_r=beta_r, pad_id=pad) if held_out and eval_before else None
    loss = functools.partial(arm_batch_loss, lm, beta_r=beta_r, pad_id=pad, device=device)
    history = train_lib.train(lm, examples, loss, config, work, name="taro-rm", resume=resume)
    after = pair_accuracy(lm, held_out, beta_r=beta_r, pad_id=pad) if held_out else None
    summary = {"beta_r": beta_r, "lora": {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout,
                                          "layers": lora_layers or "all"},
               "train_pairs": len(examples), "config": dataclasses.asdict(config),
               "final_train": history[-1] if history else None, "held_out_before": before, "held_out_after": after,
               **(info or {})}
    save_reward_model(lm, out, tokenizer, info=summary)
    return summary


def save_reward_model(lm: nn.Module, path: str | os.PathLike, tokenizer=None, *, info: dict | None = None) -> pathlib.Path:
    """Writes the RM atomically: a LoRA RM as peft adapter files (adapters.save_adapter), any other as an HF
    folder with its tokenizer; then taro_rm.json (format, vocabulary fingerprint, training summary)."""
    path = pathlib.Path(path)
    with staged_directory(path) as staging:
        if adapters.is_lora_model(lm):
            adapters.save_adapter(lm, staging)
        else:
            lm.save_pretrained(staging, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        meta = {"format": RM_FORMAT, "vocab": tokens.vocab_record(tokenizer),
                "info": info or {}}
        (staging / "taro_rm.json").write_text(json.dumps(meta, indent=2))
    return path


def load_reward_model(path: str | os.PathLike, *, tokenizer=None, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", patient=None):
    """(lm, tokenizer) of a saved RM. With `tokenizer` (the base model's), refuses an RM trained with another
    vocabulary. An adapter RM needs the base model it adapts (`patient`), and returns that tokenizer."""
    path = pathlib.Path(path)
    meta = read_format_json(path, "taro_rm.json", RM_FORMAT, "TARo reward model")
    tokens.check_vocab(meta.get("vocab"), tokenizer, path, "the reward model was trained")
    if adapters.is_adapter_folder(path):
        if patient is None:
            raise ValueError(f"{path}: this reward model is a LoRA adapter of a base model; pass it "
                             "(load_reward_model(path, patient=base))")
        return adapters.load_adapter(path, patient).with_record(meta), tokenizer
    return load_model(path, dtype=dtype, device=device)
