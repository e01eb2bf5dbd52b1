"""The LLMdoctor doctor (METHODS.md §2.3): a causal LM of the patient's family plus a value head that reads
log V at every prefix state, from the end of the prompt (s_0) through the state after the last token.

A saved doctor holds `value_head.safetensors` and `doctor.json`, plus its LM in one of two forms:
  adapter  a LoRA doctor of the patient (the default recipe): peft's adapter files and base.json, a few MB;
           load_doctor(path, patient=...) reads it as an AdapterDoctor (its LoRA tensors only, checked against
           the patient), which generate runs in one stacked forward with the patient (fastdoctor.shared_base);
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
from ..adapters import AdapterDoctor
from ..files import first_non_finite, read_format_json, recover_directory, staged_directory
from ..models import check_safetensors_folder, hidden_size
from ..sequences import SequenceBatch, response_log_probs, run_lm
from ..tokens import check_vocab, vocab_record

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

    def __init__(self, lm: nn.Module | AdapterDoctor, value_hidden: int = 0, value_ramp: bool = False):
        super().__init__()
        self.lm = lm  # a loaded adapter doctor is an AdapterDoctor: a plain attribute, not a submodule
        width = _width(lm)
        device = lm.device if isinstance(lm, AdapterDoctor) else next(lm.parameters()).device
        self.value_hidden = value_hidden
        if value_hidden > 0:
            self.value_head = nn.Sequential(nn.Linear(width, value_hidden), nn.Tanh(), nn.Linear(value_hidden, 1))
        else:
            self.value_head = nn.Sequential(nn.Linear(width, 1))
        nn.init.zeros_(self.value_head[-1].weight)
        nn.init.zeros_(self.value_head[-1].bias)
        self.value_head.to(device)
        self.value_ramp = nn.Parameter(torch.zeros(2, device=device)) if value_ramp else None

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_logp [B, L], log_v [B, L + 1]) in float32, the inputs of tfpo.subtb_loss."""
        if isinstance(self.lm, AdapterDoctor):
            raise TypeError("a loaded adapter doctor decodes inside its patient's forward (generate(patient, "
                            "doctors=[doctor.lm])); for a forward of its own use doctor.with_lm_on(patient)")
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

    def with_lm_on(self, patient: nn.Module) -> "Doctor":
        """This doctor with its LM as a model of its own: a loaded adapter doctor becomes a peft LoRA model over
        a copy of `patient` that owns its weights (to train further, or to read its value head); any other LM
        is kept. The value head is copied."""
        return self.with_lm(self.lm.peft_model(patient) if isinstance(self.lm, AdapterDoctor) else self.lm)

    def with_lm(self, lm: nn.Module) -> "Doctor":
        """A doctor with `lm` and a copy of this one's value head (and ramp)."""
        doctor = Doctor(lm, value_hidden=self.value_hidden, value_ramp=self.value_ramp is not None)
        doctor.value_head.load_state_dict(self.value_head.state_dict())
        if self.value_ramp is not None:
            doctor.value_ramp.data.copy_(self.value_ramp.data)
        return doctor.eval()

    def plain_lm(self) -> nn.Module:
        """The LM without adapters: LoRA weights merged into a copy (the training model is left alone)."""
        lm = self.lm
        if hasattr(lm, "merge_and_unload"):
            import copy

            lm = copy.deepcopy(lm).merge_and_unload()
        return lm


def _width(lm) -> int:
    return lm.hidden_size if isinstance(lm, AdapterDoctor) else hidden_size(lm.config)


def save_doctor(doctor: Doctor, path: str | os.PathLike, tokenizer=None, *, info: dict | None = None,
                merged: bool = False) -> pathlib.Path:
    """Writes the doctor atomically: its LM (a LoRA LM as peft adapter files, unless `merged`; any other as an
    HF folder with the tokenizer), the value head and doctor.json (format, kind, value-head shape, vocabulary
    fingerprint, `info`)."""
    path = pathlib.Path(path)
    bad = first_non_finite(doctor.named_parameters())  # the value ramp is one of them
    if bad is not None:
        raise ValueError(f"save_doctor: {bad} holds NaN or inf; refusing to write {path}")
    if merged and isinstance(doctor.lm, AdapterDoctor):
        raise ValueError("save_doctor: merging a loaded adapter doctor needs its patient; use export_merged")
    with staged_directory(path) as staging:
        _write_doctor(doctor, staging, tokenizer, info, merged)
    return path


def _write_doctor(doctor: Doctor, folder: pathlib.Path, tokenizer, info: dict | None, merged: bool) -> None:
    from safetensors.torch import save_file

    adapter = isinstance(doctor.lm, AdapterDoctor) or (adapters.is_lora_model(doctor.lm) and not merged)
    if isinstance(doctor.lm, AdapterDoctor):
        adapters.save_adapter_doctor(doctor.lm, folder)
    elif adapter:
        adapters.save_adapter(doctor.lm, folder)
    else:
        doctor.plain_lm().save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    save_file(doctor.value_state(), str(folder / "value_head.safetensors"))
    meta = {"format": FORMAT, "kind": "adapter" if adapter else "model", "value_hidden": doctor.value_hidden,
            "value_ramp": doctor.value_ramp is not None, "hidden_size": _width(doctor.lm),
            "vocab": vocab_record(tokenizer), "info": info or {}}
    (folder / "doctor.json").write_text(json.dumps(meta, indent=2))


def read_doctor_meta(path: str | os.PathLike) -> dict:
    return read_format_json(path, "doctor.json", FORMAT, "fastdoctor doctor")


def load_doctor(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                tokenizer=None, patient=None) -> Doctor:
    """Loads a saved doctor (LM + value head). With `tokenizer`, checks that the doctor was saved with the
    same vocabulary. An adapter doctor needs the `patient` it adapts and is refused against any other; its LM
    is then an AdapterDoctor (adapters.load_adapter: checked against the patient, whose dtype and device it
    follows, and which it never writes)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = pathlib.Path(path)
    meta = read_doctor_meta(path)
    for key, kind in (("value_hidden", int), ("hidden_size", int)):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), kind):
            raise ValueError(f"{path}/doctor.json: '{key}' is missing or not an integer")
    check_vocab(meta.get("vocab"), tokenizer, path, "the doctor was trained")
    kind = meta.get("kind", "model")  # doctors saved before adapters existed have no kind: merged models
    if kind not in ("adapter", "model"):
        raise ValueError(f"{path}/doctor.json: 'kind' must be 'adapter' or 'model', got {kind!r}")
    if kind == "adapter":
        if patient is None:
            raise ValueError(f"{path}: this doctor is a LoRA adapter of a patient; pass the patient it was trained "
                             "on (load_doctor(path, patient=patient))")
        lm = adapters.load_adapter(path, patient).with_record(meta)
        device = lm.device
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
    if _width(lm) != meta["hidden_size"]:
        raise ValueError(f"{path}: doctor.json says hidden size {meta['hidden_size']}, the LM has {_width(lm)}")
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
    of the patient (an ordinary HF model folder, about the patient's size), the same value head and info.

    It never deletes or hides what it did not write: `out` may be a new folder, an empty one, or an earlier
    export of this same doctor (replaced atomically); anything else, and `out` equal to or inside the doctor's
    own folder, is refused before any work. An export a kill interrupted is finished or undone first
    (files.recover_directory), and a folder that cannot be written is refused before the merge."""
    path, out = pathlib.Path(path), pathlib.Path(out)
    source, target = path.resolve(), out.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise ValueError(f"{out}: is the doctor's own folder {path} (or inside it, or holds it); export to "
                         "another folder")
    recover_directory(out)
    if out.exists() and not _is_export_of(out, source):
        raise ValueError(f"{out}: exists and is not an earlier export of {path}; refusing to replace it (choose "
                         "a new folder, or remove it yourself)")
    meta = read_doctor_meta(path)
    if meta.get("kind") != "adapter":
        raise ValueError(f"{path}: not an adapter doctor (doctor.json kind {meta.get('kind', 'model')!r}); it is "
                         "already a standalone model")
    doctor = load_doctor(path, patient=patient, tokenizer=tokenizer)
    with staged_directory(out) as staging:  # created before the merge: an unwritable folder fails here
        merged = doctor.with_lm(doctor.lm.merged_model(patient))
        info = {**meta.get("info", {}), "exported_from": str(source)}
        _write_doctor(merged, staging, tokenizer, info, merged=True)
    return out


def _is_export_of(folder: pathlib.Path, source: pathlib.Path) -> bool:
    """Whether `folder` is empty or holds an export_merged output of the doctor at `source`."""
    if folder.is_dir() and not any(folder.iterdir()):
        return True
    try:
        meta = read_doctor_meta(folder)
    except ValueError:
        return False
    recorded = meta.get("info", {}).get("exported_from") if isinstance(meta.get("info"), dict) else None
    return meta.get("kind") == "model" and isinstance(recorded, str) and pathlib.Path(recorded).resolve() == source
