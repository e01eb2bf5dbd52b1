"""LoRA doctors as adapters of the patient: the files on disk, the check that they belong to this patient, and
the LoRA weights that generate's shared-base forward reads (fastdoctor.shared_base).

A LoRA doctor (the TFPO doctor, a GenARM ARM, a TARo reward model) differs from the patient only by low-rank
deltas on its projections. On disk it is peft's own format (adapter_config.json + adapter_model.safetensors),
a few MB instead of a full copy of the patient, and it records a fingerprint of the base weights it was
trained on, so it is refused when loaded against another patient.

In memory it is a peft model over a weight-sharing copy of the patient: new module objects whose parameters
are views of the patient's own tensors. That model decodes on its own like any doctor (peft, unmerged),
costs no second copy of the weights, and leaves the user's patient object exactly as it was (peft rewrites
the modules of the model it wraps, so it never wraps the patient itself).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pathlib
import torch
from torch import nn

from .files import first_non_finite
from .lora import peft_quiet

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "base.json"  # {"fingerprint": base_fingerprint, "model_type": ...}: which patient it adapts
_FINGERPRINT_SAMPLES = 4096  # values read per tensor: a different checkpoint differs almost everywhere


def is_adapter_folder(path) -> bool:
    return (pathlib.Path(path) / ADAPTER_CONFIG).is_file()


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A structural copy of `model` whose parameters and buffers share the original's storage: no weight is
    copied, the copy's modules can be rewrapped freely, and an in-place update of the original's weights shows
    in the copy. Its parameters are new Parameter objects (requires_grad False), so freezing or unfreezing
    either model leaves the other alone. Tied weights stay tied."""
    memo: dict[int, torch.Tensor] = {}
    for parameter in model.parameters():  # deduplicated: a tied weight maps to one new Parameter
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    shared = copy.deepcopy(model, memo)
    head = shared.get_output_embeddings() if hasattr(shared, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        head.register_forward_pre_hook(_contiguous_inputs)
    return shared


def _contiguous_inputs(module: nn.Module, args: tuple) -> tuple:
    """torch 2.13 on the CPU: F.linear of a non-contiguous 3-D input (HF's hidden[:, -1:] with logits_to_keep)
    and a weight that does not require grad expands the weight to [B, H, V] and copies it (1 s for a bf16
    prefill of 16 rows on SmolLM2's LM head, against 4 ms with a contiguous input). A frozen copy hits it."""
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _base_parameters(model: nn.Module):
    """(name, tensor) of the base weights under the plain model's names, whether or not peft wraps it."""
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name, parameter


def base_fingerprint(model: nn.Module) -> str:
    """A SHA-256 over the base weights' names, shapes and a strided sample of their values rounded to bf16, so
    the same patient loaded in fp32 or bf16 matches and another checkpoint does not. LoRA weights are left
    out: a doctor and its patient have the same fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_base_parameters(model), key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::stride].to(torch.bfloat16).float().cpu()
        digest.update(f"{name}:{list(tensor.shape)};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def is_lora_model(lm: nn.Module) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "get_base_model")


def save_adapter(lm: nn.Module, folder: pathlib.Path) -> None:
    """Writes peft's adapter files for the LoRA model `lm` (adapter weights only) and base.json, the record of
    the base weights it was trained on, into the existing `folder`."""
    with peft_quiet():
        lm.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card, which cites a local base path
    record = {"fingerprint": base_fingerprint(lm), "model_type": lm.get_base_model().config.model_type}
    (folder / BASE_RECORD).write_text(json.dumps(record, indent=2))


def merged_copy(lm: nn.Module) -> nn.Module:
    """A standalone HF model with the LoRA deltas merged in (a deep copy: `lm` and its base are left alone)."""
    with peft_quiet():
        return copy.deepcopy(lm).merge_and_unload()


def folder_size(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(folder).rglob("*") if f.is_file())


def check_adapter_files(path: pathlib.Path) -> dict:
    """The adapter's peft config, after checking that both files are there and are LoRA (not DoRA etc.)."""
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise ValueError(f"{path}: {ADAPTER_WEIGHTS} is missing (an adapter doctor needs {ADAPTER_CONFIG} and "
                         f"{ADAPTER_WEIGHTS})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: not a readable peft adapter config ({error})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{config_file}: expected a peft LoRA adapter (peft_type 'LORA'), got "
                         f"{config.get('peft_type') if isinstance(config, dict) else type(config).__name__!r}")
    if config.get("use_dora"):
        raise ValueError(f"{config_file}: DoRA adapters are not supported; use plain LoRA")
    return config


def load_adapter_lm(path, patient: nn.Module, *, expected_fingerprint: str | None = None) -> nn.Module:
    """The peft LoRA model of the adapter in `path` over a weight-sharing copy of `patient` (eval mode).

    Refuses a patient whose base weights differ from the ones the adapter was trained on (the fingerprint in
    base.json, or `expected_fingerprint`)."""
    from peft import PeftModel
    from safetensors import safe_open

    path = pathlib.Path(path)
    check_adapter_files(path)
    if expected_fingerprint is None and (path / BASE_RECORD).is_file():
        try:
            expected_fingerprint = json.loads((path / BASE_RECORD).read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path / BASE_RECORD}: not a readable base record ({error!r})") from None
    if expected_fingerprint is not None and base_fingerprint(patient) != expected_fingerprint:
        raise ValueError(f"{path}: this adapter doctor was trained on another base model than the patient given "
                         "(the base-weight fingerprints differ); load it with the patient it was trained on")
    try:
        with safe_open(str(path / ADAPTER_WEIGHTS), framework="pt") as handle:
            saved = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own types for a damaged file
        raise ValueError(f"{path / ADAPTER_WEIGHTS}: cannot read the adapter weights ({error})") from None
    bad = first_non_finite(saved.items())
    if bad is not None:
        raise ValueError(f"{path / ADAPTER_WEIGHTS}: {bad} holds NaN or inf; refusing to steer with it")
    with peft_quiet():
        try:
            lm = PeftModel.from_pretrained(weight_sharing_copy(patient), str(path), is_trainable=False)
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise ValueError(f"{path}: the adapter does not fit this patient ({error})") from None
    loaded = sum(1 for name, _ in lm.named_parameters() if "lora_" in name)
    if loaded != len(saved):
        raise ValueError(f"{path}: the adapter holds {len(saved)} LoRA tensors but {loaded} LoRA parameters were "
                         "created on this patient; it belongs to another architecture")
    return lm.eval()


@dataclasses.dataclass(frozen=True)
class LoraDelta:
    """One projection's LoRA: delta(x) = scale * (x @ a.T) @ b.T, with a [rank, in] and b [out, rank]."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


def lora_deltas(doctor: nn.Module, patient: nn.Module) -> dict[str, LoraDelta] | None:
    """{patient module name: LoraDelta} when `doctor` is a peft LoRA model whose base weights are the patient's
    own tensors (load_adapter_lm, or any peft model over weight_sharing_copy(patient)), else None.

    None also for what the shared-base forward does not reproduce (DoRA, LoRA on embeddings, several active
    adapters, merged adapters, a bias in the adapter): such a doctor runs as a separate model, still correct."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ModuleNotFoundError:
        return None
    if not isinstance(doctor, PeftModel) or len(doctor.active_adapters) != 1:
        return None
    adapter = doctor.active_adapters[0]
    inner = doctor.get_base_model()
    patient_tensors = dict(patient.named_parameters())
    for name, tensor in _base_parameters(inner):
        theirs = patient_tensors.get(name)
        if theirs is None or theirs.data_ptr() != tensor.data_ptr() or theirs.shape != tensor.shape:
            return None
    deltas: dict[str, LoraDelta] = {}
    for name, module in inner.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter not in module.lora_A or module.merged or module.disable_adapters or \
                module.use_dora.get(adapter, False) or module.lora_embedding_A or \
                getattr(module, "lora_bias", {}).get(adapter, False) or not isinstance(module.lora_A[adapter], nn.Linear):
            return None
        deltas[name] = LoraDelta(a=module.lora_A[adapter].weight, b=module.lora_B[adapter].weight,
                                 scale=float(module.scaling[adapter]))
    return deltas or None
