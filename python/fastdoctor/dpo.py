"""The training-time baselines of the multi-dimensional fronts: DPO, trained with TRL's DPOTrainer as a LoRA
on the patient, and Rewarded Soups (Ramé et al. 2023), the weight-space interpolation of two such LoRAs.

DPO gets the doctors' budget: the same pairs, steps, batch, learning rate and LoRA shape (rank 8, alpha 16,
dropout 0.05 on every projection, lora.attach_lora's). The reference is the patient itself (TRL disables the
adapter for it), and the loss is DPO's sigmoid loss with TRL's default beta 0.1.

A soup at weight w is theta_0 + w * Delta_1 + (1 - w) * Delta_2, i.e. exactly w * theta_1 + (1 - w) * theta_2
for the two merged DPO models. adapters.weighted_sum builds that adapter without approximation (it stacks
w * A_1 and (1 - w) * A_2 against [B_1 B_2], as peft's add_weighted_adapter "cat" does); soup() merges it
into a copy. Both policies load as AdapterDoctors (adapters.load_adapter: checked, never over the patient).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import warnings
from collections.abc import Sequence

import torch

from .adapters import AdapterDoctor, load_adapter, weighted_sum
from .files import write_json
from .lora import lora_config, peft_quiet
from .tokens import reply_finished


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    steps: int = 48
    batch_size: int = 8
    lr: float = 5e-4
    beta: float = 0.1
    warmup_steps: int = 4
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    max_length: int = 256
    seed: int = 0
    # TRL turns it on by default to save memory; a 135M patient at 16 sequences fits without, and recomputing
    # every forward in the backward pass costs about a fifth of a step (same numbers: the RNG is replayed).
    gradient_checkpointing: bool = False


def _trl():
    try:
        import datasets
        import trl
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the DPO baseline needs TRL: pip install trl") from None
    return trl, datasets


def _conversational(pairs: Sequence) -> list[dict]:
    """TRL's conversational preference format, so DPOTrainer applies the patient's chat template itself."""
    return [{"prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def _cut_unfinished(tokenized, pairs: Sequence, eos: int):
    """TRL closes every reply with the end-of-turn token; a reply cut off at the token limit (chosen_finished /
    rejected_finished false) loses it, as in every other trainer here (tokens.split_response)."""
    if len(tokenized) != len(pairs):
        raise ValueError(f"DPO: TRL kept {len(tokenized)} of {len(pairs)} pairs (a prompt longer than max_length?)")
    flags = [(reply_finished(p, "chosen"), reply_finished(p, "rejected")) for p in pairs]
    if all(all(f) for f in flags):
        return tokenized

    def cut(example, index):
        for key, done in zip(("chosen_ids", "rejected_ids"), flags[index]):
            if not done and eos in example[key]:
                example[key] = example[key][: example[key].index(eos)]
        return example

    return tokenized.map(cut, with_indices=True)


def train_dpo(patient, tokenizer, pairs: Sequence, out: str | os.PathLike, settings: DPOSettings = DPOSettings()):
    """Trains a DPO LoRA on a copy of `patient` (the patient itself is left untouched) and saves it in peft's
    format under <out>/adapter, with <out>/dpo.json (settings and the loss log). Returns the PeftModel."""
    trl, datasets = _trl()
    out = pathlib.Path(out)
    device = next(patient.parameters()).device
    model = copy.deepcopy(patient).float().train()
    dataset = datasets.Dataset.from_list(_conversational(pairs))
    with peft_quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="trl")
        # TRL 1.16 sets and toggles transformers' gradient_checkpointing, which transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        config = trl.DPOConfig(
            output_dir=str(out / "trl"), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr, beta=settings.beta, warmup_steps=settings.warmup_steps,
            lr_scheduler_type="cosine", max_length=settings.max_length, seed=settings.seed, data_seed=settings.seed,
            logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=device.type == "cpu",
            dataloader_num_workers=0, bf16=False, fp16=False,
            gradient_checkpointing=settings.gradient_checkpointing)
        datasets.disable_progress_bars()
        trainer = trl.DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=lora_config(patient, rank=settings.lora_rank, alpha=settings.lora_alpha,
                                                         dropout=settings.lora_dropout))
        trainer.train_dataset = _cut_unfinished(trainer.train_dataset, pairs, tokenizer.eos_token_id)
        trainer.train()
    history = [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in trainer.state.log_history
               if "loss" in row]
    peft_model = trainer.model.eval()
    peft_model.save_pretrained(str(out / "adapter"))
    write_json(out / "dpo.json", {"settings": dataclasses.asdict(settings), "pairs": len(pairs), "log": history})
    return peft_model


def load_dpo(patient, folder: str | os.PathLike, *, merged: bool = True):
    """The DPO policy of <folder>/adapter over a copy of `patient`: merged into plain weights (the fast path
    for sampling) or as a PeftModel (dpo_loss reads its reference with the adapter disabled)."""
    return _as_model(_policy(patient, folder), patient, merged)


def _policy(patient, folder: str | os.PathLike) -> AdapterDoctor:
    folder = pathlib.Path(folder)
    if not (folder / "adapter" / "adapter_config.json").exists():
        raise FileNotFoundError(f"{folder}: no DPO adapter (adapter/adapter_config.json); train_dpo writes one")
    return load_adapter(folder / "adapter", patient)


def _as_model(policy: AdapterDoctor, patient, merged: bool):
    return policy.merged_model(patient) if merged else policy.peft_model(patient)


def soup(patient, first: str | os.PathLike, second: str | os.PathLike, weight: float, *, merged: bool = True):
    """Rewarded Soups: weight * theta_first + (1 - weight) * theta_second, over a copy of `patient`
    (adapters.weighted_sum, exact). weight 1 is the first DPO model, 0 the second."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"soup weight: expected a number in [0, 1], got {weight}")
    souped = weighted_sum([_policy(patient, first), _policy(patient, second)], [weight, 1.0 - weight])
    return _as_model(souped, patient, merged)


@torch.no_grad()
def dpo_loss(model, tokenizer, pairs: Sequence, *, beta: float = 0.1) -> float:
    """DPO's sigmoid loss of a PeftModel on `pairs` (mean), with the adapter disabled as the reference, as TRL
    computes it: -log sigmoid(beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)])."""
    from .sequences import pack_sequences, response_log_probs, run_lm
    from .tokens import split_response

    prompts, responses = [], []
    for index, pair in enumerate(pairs):
        messages = [{"role": "user", "content": pair.prompt}]
        for which in ("chosen", "rejected"):
            prefix, response = split_response(tokenizer, messages, getattr(pair, which), index, which,
                                              finished=reply_finished(pair, which))
            prompts.append(torch.tensor(prefix))
            responses.append(torch.tensor(response))
    batch = pack_sequences(prompts, responses).to(next(model.parameters()).device)
    policy = response_log_probs(run_lm(model, batch).logits, batch).sum(dim=1)
    with model.disable_adapter():
        reference = response_log_probs(run_lm(model, batch).logits, batch).sum(dim=1)
    ratio = (policy - reference).view(-1, 2)
    return float(-torch.nn.functional.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1])).mean())
