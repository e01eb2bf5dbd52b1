"""The LLMdoctor doctor (METHODS.md §2.3): a causal LM of the patient's family plus a value head that reads
log V at every prefix state, from the end of the prompt (s_0) through the state after the last token.

A saved doctor holds `value_head.safetensors` and `doctor.json`, plus its LM in one of two forms:
  adapter  a LoRA doctor of the patient (the default recipe): peft's adapter files and base.json, a few MB;
           load_doctor(path, patient=...) puts it over the patient's own weights, and generate then runs it
           in one stacked forward with the patient (fastdoctor.shared_base);
  model    any other doctor (the distilled small one), or a LoRA doctor merged with export_merged: an ordinary
           HF folder (config, safetensors weights, tokenizer) that load_model takes too.

Batch layout: fastdoctor.sequences (the state s_t of every row sits at column P - 1 + t).
"""
from __future__ import annotations

import json
import os
import pathlib

import torch
from torch import nn

from .. import adapters
from ..files import first_non_finite, read_format_json, staged_directory
from ..models import check_safetensors_folder, hidden_size
from ..sequences import SequenceBatch, response_log_probs, run_lm
from ..tokens import vocab_fingerprint

FORMAT = "fastdoctor.doctor/1"


def value_ramp_term(ramp: torch.Tensor, states: int) -> torch.Tensor:
    """slope * t + offset at the states t = 0..states-1 (ramp = [slope, offset]): the position ramp that
    Doctor(value_ramp=True) adds to log V."""
    t = torch.arange(states, device=ramp.device, dtype=ramp.dtype)
    return ramp[0] * t + ramp[1]


class Doctor(nn.Module):
    """lm: an HF causal LM (optionally a peft LoRA model); value_head: log V from the last hidden state.
    The value head's output layer starts at zero, so log V = 0 everywhere before training.

    value_ramp adds (slope * t + offset) to log V at the state s_t, t = response tokens so far. It serves the
    "rewards" flow (tfpo.TFPOSettings.flow), whose SubTB residuals are dominated by the doctor's own cumulative
    log-probability, falling about 2 nats per token on the default patient: a ramp that a head on the last
    hidden state cannot read (it does not know t) and that AdamW at a LoRA learning rate cannot reach (the
    fitted offset is ~100). tfpo.fit_value_ramp sets the two numbers to the SubTB minimiser before training
    (on the default patient the loss falls from ~2,600 to ~300). It fits one typical length only, so a
    finished short reply still asks for log pi(end-of-turn) tens of nats too low. The default "reference"
    flow puts the reference's log-probs in log Q instead: its residuals start at kappa * cumulative reward
    (a first loss of ~44), and it needs no ramp."""

    def __init__(self, lm: nn.Module, value_hidden: int = 0, value_ramp: bool = False):
        super().__init__()
        self.lm = lm
        width = hidden_size(lm.config)
        self.value_hidden = value_hidden
        if value_hidden > 0:
            self.value_head = nn.Sequential(nn.Linear(width, value_hidden), nn.Tanh(), nn.Linear(value_hidden, 1))
        else:
            self.value_head = nn.Sequential(nn.Linear(width, 1))
        nn.init.zeros_(self.value_head[-1].weight)
        nn.init.zeros_(self.value_head[-1].bias)
        self.value_head.to(next(lm.parameters()).device)
        self.value_ramp = nn.Parameter(torch.zeros(2, device=next(lm.parameters()).device)) if value_ramp else None

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_logp [B, L], log_v [B, L + 1]) in float32, the inputs of tfpo.subtb_loss."""
        out = run_lm(self.lm, batch, output_hidden_states=True)
        states = out.hidden_states[-1][:, -(batch.response_ids.shape[1] + 1):]
        log_v = self.value_head(states.to(self.value_head[0].weight.dtype)).squeeze(-1).float()
        if self.value_ramp is not None:
            log_v = log_v + value_ramp_term(self.value_ramp.to(log_v.dtype), log_v.shape[1])
        return response_log_probs(out.logits, batch), log_v

    def value_state(self) -> dict[str, torch.Tensor]:
        """The value head's tensors as saved in value_head.safetensors (the ramp under "ramp")."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        if self.value_ramp is not None:
            state["ramp"] = self.value_ramp.detach().cpu().clone()
        return state

    def plain_lm(self) -> nn.Module:
        """The LM without adapters: LoRA weights merged into a copy (the training model is left alone)."""
        lm = self.lm
        if hasattr(lm, "merge_and_unload"):
            import copy

            lm = copy.deepcopy(lm).merge_and_unload()
        return lm


def save_doctor(doctor: Doctor, path: str | os.PathLike, tokenizer=None, *, info: dict | None = None,
                merged: bool = False) -> pathlib.Path:
    """Writes the doctor atomically: its LM (a LoRA LM as peft adapter files, unless `merged`; any other as an
    HF folder with the tokenizer), the value head and doctor.json (format, kind, value-head shape, vocabulary
    fingerprint, `info`)."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    bad = first_non_finite(doctor.named_parameters())  # the value ramp is one of them
    if bad is not None:
        raise ValueError(f"save_doctor: {bad} holds NaN or inf; refusing to write {path}")
    kind = "adapter" if adapters.is_lora_model(doctor.lm) and not merged else "model"
    with staged_directory(path) as staging:
        if kind == "adapter":
            adapters.save_adapter(doctor.lm, staging)
        else:
            doctor.plain_lm().save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
        save_file(doctor.value_state(), str(staging / "value_head.safetensors"))
        meta = {"format": FORMAT, "kind": kind, "value_hidden": doctor.value_hidden,
                "value_ramp": doctor.value_ramp is not None,
                "hidden_size": hidden_size(doctor.lm.config),
                "vocab": vocab_fingerprint(tokenizer) if tokenizer is not None else None, "info": info or {}}
        (staging / "doctor.json").write_text(json.dumps(meta, indent=2))
    return path


def read_doctor_meta(path: str | os.PathLike) -> dict:
    return read_format_json(path, "doctor.json", FORMAT, "fastdoctor doctor")


def load_doctor(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                tokenizer=None, patient=None) -> Doctor:
    """Loads a saved doctor (LM + value head). With `tokenizer`, checks that the doctor was saved with the
    same vocabulary. An adapter doctor needs the `patient` it adapts (its dtype and device then follow the
    patient's) and is refused against any other."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = pathlib.Path(path)
    meta = read_doctor_meta(path)
    for key, kind in (("value_hidden", int), ("hidden_size", int)):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), kind):
            raise ValueError(f"{path}/doctor.json: '{key}' is missing or not an integer")
    if tokenizer is not None and meta.get("vocab") not in (None, vocab_fingerprint(tokenizer)):
        raise ValueError(f"{path}: the doctor was trained with another tokenizer than the one given")
    kind = meta.get("kind", "model")  # doctors saved before adapters existed have no kind: merged models
    if kind not in ("adapter", "model"):
        raise ValueError(f"{path}/doctor.json: 'kind' must be 'adapter' or 'model', got {kind!r}")
    if kind == "adapter":
        if patient is None:
            raise ValueError(f"{path}: this doctor is a LoRA adapter of a patient; pass the patient it was trained "
                             "on (load_doctor(path, patient=patient))")
        lm = adapters.load_adapter_lm(path, patient)  # checks the adapter's tensors; the base is the patient's
        device = next(patient.parameters()).device
    try:
        if kind == "model":
            check_safetensors_folder(path)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device).eval()
        head = load_file(str(path / "value_head.safetensors"))
    except Exception as error:  # safetensors and transformers raise their own types for corrupt files
        raise ValueError(f"{path}: cannot load the doctor's weights ({error})") from None
    bad = first_non_finite([*(lm.state_dict().items() if kind == "model" else ()), *head.items()])
    if bad is not None:
        raise ValueError(f"{path}: the doctor's weight {bad} holds NaN or inf; refusing to steer with it")
    if hidden_size(lm.config) != meta["hidden_size"]:
        raise ValueError(f"{path}: doctor.json says hidden size {meta['hidden_size']}, the LM has "
                         f"{hidden_size(lm.config)}")
    doctor = Doctor(lm, value_hidden=int(meta["value_hidden"]), value_ramp=bool(meta.get("value_ramp", False)))
    try:
        ramp = head.pop("ramp", None)
        if (ramp is None) != (doctor.value_ramp is None) or (ramp is not None and ramp.shape != (2,)):
            raise RuntimeError("the position ramp does not match")
        doctor.value_head.load_state_dict(head)
        if ramp is not None:
            doctor.value_ramp.data.copy_(ramp)
    except RuntimeError as error:
        raise ValueError(f"{path}/value_head.safetensors: does not match doctor.json ({error})") from None
    return doctor.to(device).eval()


def export_merged(path: str | os.PathLike, patient, out: str | os.PathLike, tokenizer=None) -> pathlib.Path:
    """Writes the adapter doctor at `path` as a standalone doctor folder at `out`: the LoRA merged into a copy
    of the patient (an ordinary HF model folder, about the patient's size), the same value head and info."""
    doctor = load_doctor(path, patient=patient, tokenizer=tokenizer)
    info = read_doctor_meta(path).get("info", {})
    return save_doctor(doctor, out, tokenizer, info={**info, "exported_from": str(path)}, merged=True)
