"""AdapterDoctor: a LoRA model of the patient (a TFPO doctor, a GenARM ARM, a TARo reward model, a DPO policy)
as one frozen object that owns its tensors, and the files it lives in.

A LoRA doctor differs from the patient only by low-rank deltas on some projections. On disk it is peft's own
format (adapter_config.json + adapter_model.safetensors), a few MB instead of a copy of the patient, plus
base.json, the fingerprint of the base weights it was trained on (fastdoctor.weights.fingerprint).

In memory it is an AdapterDoctor: per projection of the patient, the LoRA tensors A [rank, in] and B [out,
rank] and the scale, in the dtype and on the device they run in. Nothing in it aliases the patient's weights,
and it has no method that writes to a model: generate runs it inside the patient's own forward
(fastdoctor.shared_base), merged_model() and peft_model() build models on a copy of the patient that owns
its weights.

load_adapter reads the files without peft: the whole file is checked against the patient (every key a LoRA A
or B of a target projection that exists, shapes from the file's header against the module and the config's
rank, floating dtypes, finite values) before any tensor is used, so a damaged or hostile file is a ValueError
naming the file and the key, and the patient is never written.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import pathlib
import re
import types
from collections.abc import Mapping

import torch
from torch import nn

from . import weights
from .files import first_non_finite
from .lora import peft_quiet

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "base.json"  # {"fingerprint": weights.fingerprint, "model_type": ...}: which patient it adapts
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class LoraProjection:
    """One projection's LoRA: delta(x) = scale * (x @ a.T) @ b.T, with a [rank, in] and b [out, rank]."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class AdapterDoctor:
    """A LoRA doctor of the patient whose fingerprint is `base_fingerprint`: `projections` maps the patient's
    module names to their LoRA. `config` is the adapter's peft config (adapter_config.json) and `record` the
    folder's fastdoctor record (doctor.json / taro_rm.json), both read-only. Pass it in generate's `doctors`
    with that patient."""

    projections: Mapping[str, LoraProjection]
    base_fingerprint: str
    model_type: str
    logits_width: int  # the patient's: the shape of the logits it steers
    hidden_size: int  # the patient's: what a value head on its last hidden state reads
    config: Mapping = dataclasses.field(default_factory=dict)
    record: Mapping = dataclasses.field(default_factory=dict)
    source: pathlib.Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "projections", types.MappingProxyType(dict(self.projections)))
        object.__setattr__(self, "config", types.MappingProxyType(copy.deepcopy(dict(self.config))))
        object.__setattr__(self, "record", types.MappingProxyType(copy.deepcopy(dict(self.record))))

    @property
    def device(self) -> torch.device:
        return next(iter(self.projections.values())).a.device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.projections.values())).a.dtype

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        ranks = sorted({p.rank for p in self.projections.values()})
        return (f"AdapterDoctor({len(self.projections)} projections, rank {'/'.join(map(str, ranks))}, "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}{where})")

    def with_record(self, record: Mapping) -> "AdapterDoctor":
        return dataclasses.replace(self, record=record)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AdapterDoctor":
        """A copy with every LoRA tensor on `device` / in `dtype` (the doctor itself is frozen)."""
        moved = {name: LoraProjection(p.a.to(device=device, dtype=dtype, copy=True),
                                      p.b.to(device=device, dtype=dtype, copy=True), p.scale)
                 for name, p in self.projections.items()}
        return dataclasses.replace(self, projections=moved)

    def check_patient(self, patient: nn.Module, where: str = "adapter doctor") -> None:
        """A ValueError unless `patient` has the base weights this doctor was trained on."""
        if weights.fingerprint(patient) != self.base_fingerprint:
            raise ValueError(f"{where}: trained on another base model than the patient given (the base-weight "
                             "fingerprints differ); use it with the patient it was trained on")

    def merged_model(self, patient: nn.Module) -> nn.Module:
        """A standalone HF model: a copy of `patient` that owns its weights, with every LoRA delta added in."""
        self.check_patient(patient)
        merged = copy.deepcopy(patient)
        with torch.no_grad():
            for name, p in self.projections.items():
                module = merged.get_submodule(name)
                delta = (p.b.float() @ p.a.float()) * p.scale  # [out, in]
                if _is_conv1d(module):  # GPT-2's Conv1D keeps its weight as [in, out]
                    delta = delta.t()
                module.weight.add_(delta.to(device=module.weight.device, dtype=module.weight.dtype))
        return merged.eval()

    def peft_model(self, patient: nn.Module, *, trainable: bool = False) -> nn.Module:
        """This doctor as a peft LoRA model over a copy of `patient` that owns its weights (for training on or
        for peft's tools: merging or disabling it never reaches `patient`)."""
        from peft import LoraConfig, get_peft_model

        self.check_patient(patient)
        known = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in self.config.items() if k in known and k not in
                               ("peft_type", "base_model_name_or_path", "revision", "task_type", "auto_mapping")},
                            task_type="CAUSAL_LM")
        with peft_quiet():
            model = get_peft_model(copy.deepcopy(patient), config)
        state = {}
        for name, p in self.projections.items():
            state[f"base_model.model.{name}.lora_A.default.weight"] = p.a
            state[f"base_model.model.{name}.lora_B.default.weight"] = p.b
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"peft_model: the peft config does not create {sorted(missing)[0]}")
        model.load_state_dict(state, strict=False)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable and "lora_" in name)
        return model if trainable else model.eval()


def weighted_sum(doctors: list[AdapterDoctor], coefficients: list[float]) -> AdapterDoctor:
    """The AdapterDoctor whose every delta is sum_i c_i * delta_i, exactly: its A stacks c_i * scale_i * A_i
    over the ranks and its B sets the B_i side by side (rank = the sum of the ranks, scale 1; peft's
    add_weighted_adapter with combination_type "cat"). The doctors must adapt the same projections of one base."""
    first = doctors[0]
    for doctor in doctors[1:]:
        if doctor.base_fingerprint != first.base_fingerprint or set(doctor.projections) != set(first.projections):
            raise ValueError("weighted_sum: the doctors adapt different bases or different projections")
    projections = {}
    for name in first.projections:
        parts = [(c, d.projections[name]) for c, d in zip(coefficients, doctors)]
        projections[name] = LoraProjection(torch.cat([c * p.scale * p.a for c, p in parts]),
                                           torch.cat([p.b for _, p in parts], dim=1), 1.0)
    rank = sum(d.config.get("r", 0) for d in doctors)
    return dataclasses.replace(first, projections=projections, config={**first.config, "r": rank, "lora_alpha": rank},
                               record={}, source=None)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in features, out features) of a projection LoRA can adapt, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if _is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def is_adapter_folder(path) -> bool:
    return (pathlib.Path(path) / ADAPTER_CONFIG).is_file()


def is_lora_model(lm) -> bool:
    """A peft LoRA model (training builds them with lora.attach_lora), not an AdapterDoctor."""
    return hasattr(lm, "peft_config") and hasattr(lm, "get_base_model")


def save_adapter(lm: nn.Module, folder: pathlib.Path) -> None:
    """Writes peft's adapter files for the LoRA model `lm` (adapter weights only) and base.json, the record of
    the base weights it was trained on, into the existing `folder`."""
    with peft_quiet():
        lm.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model card, which cites a local base path
    _sort_json(folder / ADAPTER_CONFIG)
    record = {"fingerprint": weights.fingerprint(lm), "model_type": lm.get_base_model().config.model_type}
    (folder / BASE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))


def save_adapter_doctor(doctor: AdapterDoctor, folder: pathlib.Path) -> None:
    """Writes `doctor`'s adapter files (the same format save_adapter writes) into the existing `folder`."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in doctor.projections.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = p.a.detach().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = p.b.detach().contiguous().cpu()
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    (folder / ADAPTER_CONFIG).write_text(json.dumps(dict(doctor.config), indent=2, sort_keys=True))
    record = {"fingerprint": doctor.base_fingerprint, "model_type": doctor.model_type}
    (folder / BASE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))


def _sort_json(path: pathlib.Path) -> None:
    """Rewrites a JSON file with sorted keys (peft writes its config in set order: two identical runs would
    write different bytes, and a recorded SHA-256 could not be reproduced)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def folder_size(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(folder).rglob("*") if f.is_file())


def _number(config: dict, key: str, file, *, positive_int: bool = False):
    value = config.get(key)
    if positive_int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{file}: '{key}' must be a positive integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        raise ValueError(f"{file}: '{key}' must be a finite non-zero number, got {value!r}")
    return value


def read_adapter_config(path: pathlib.Path) -> dict:
    """The adapter's peft config, checked to be a plain LoRA fastdoctor can run: r, lora_alpha, the targets,
    no extra trained modules, no bias, no DoRA, no per-module rank or alpha patterns."""
    config_file = path / ADAPTER_CONFIG
    if not (path / ADAPTER_WEIGHTS).is_file():
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
    _number(config, "r", config_file, positive_int=True)
    _number(config, "lora_alpha", config_file)
    for key, allowed in (("modules_to_save", (None, [])), ("rank_pattern", (None, {})), ("alpha_pattern", (None, {})),
                         ("bias", ("none", None)), ("trainable_token_indices", (None, [], {}))):
        if config.get(key) not in allowed:
            raise ValueError(f"{config_file}: '{key}' = {config[key]!r} is not supported (plain LoRA on the "
                             "projections only)")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets and
                                         all(isinstance(t, str) for t in targets))):
        raise ValueError(f"{config_file}: 'target_modules' must be a module-name list or a regex, got {targets!r}")
    layers = config.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        config["layers_to_transform"] = [layers]
    elif layers is not None and not (isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        raise ValueError(f"{config_file}: 'layers_to_transform' must be a list of layer indices, got {layers!r}")
    return config


def _is_target(module_name: str, config: dict) -> bool:
    targets = config["target_modules"]
    if isinstance(targets, str):
        found = re.fullmatch(targets, module_name) is not None
    else:  # peft's rule: a target names the module, or the end of its dotted name
        found = any(module_name == t or module_name.endswith("." + t) for t in targets)
    layers = config.get("layers_to_transform")
    if found and layers is not None:
        index = _LAYER.search(f".{module_name}.")
        found = index is not None and int(index.group(1)) in layers
    return found


def read_base_record(path: pathlib.Path) -> dict | None:
    if not (path / BASE_RECORD).is_file():
        return None  # adapters saved by peft alone (the DPO baseline's) have none
    try:
        record = json.loads((path / BASE_RECORD).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record["fingerprint"], str):
            raise TypeError("no fingerprint string")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path / BASE_RECORD}: not a readable base record ({error!r})") from None
    return record


def load_adapter(path, patient: nn.Module, *, expected_fingerprint: str | None = None) -> AdapterDoctor:
    """The AdapterDoctor in folder `path`, checked against `patient` before any tensor is read.

    Refused with a ValueError naming the file (and the key where one is to blame): a patient whose base weights
    differ from the ones it was trained on (base.json, or `expected_fingerprint`); a key that is not the LoRA A or
    B of a target projection of this patient; a shape that disagrees with the module or the config's rank; a
    projection with A or B missing; a non-floating dtype; NaN or inf. The LoRA tensors are copied to the
    patient's device, in bfloat16 for a bfloat16 patient and float32 otherwise (what the shared-base kernel
    reads). `patient` is only read."""
    from safetensors import safe_open

    path = pathlib.Path(path)
    config = read_adapter_config(path)
    record = read_base_record(path)
    fingerprint = weights.fingerprint(patient)
    expected = expected_fingerprint or (record or {}).get("fingerprint")
    if expected is not None and expected != fingerprint:
        raise ValueError(f"{path}: this adapter doctor was trained on another base model than the patient given "
                         "(the base-weight fingerprints differ); load it with the patient it was trained on")
    file = path / ADAPTER_WEIGHTS
    rank = config["r"]
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    modules = dict(patient.named_modules())
    try:
        with safe_open(str(file), framework="pt") as handle:
            parts: dict[str, dict[str, str]] = {}
            for key in handle.keys():  # the header only: shapes and dtypes, no tensor is read yet
                match = _KEY.fullmatch(key)
                if match is None:
                    raise ValueError(f"{file}: key {key!r} is not a LoRA A or B weight (an adapter doctor holds "
                                     "nothing else; refusing to touch the patient's own weights)")
                name, part = match["module"], match["part"]
                module = modules.get(name)
                if module is None or _in_out(module) is None:
                    raise ValueError(f"{file}: key {key!r} names {name!r}, which is not a projection of this patient")
                if not _is_target(name, config):
                    raise ValueError(f"{file}: key {key!r} adapts {name!r}, which adapter_config.json does not target")
                in_features, out_features = _in_out(module)
                expected_shape = [rank, in_features] if part == "A" else [out_features, rank]
                shape, dtype = list(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype()
                if shape != expected_shape:
                    raise ValueError(f"{file}: key {key!r} has shape {shape}; {name} with r = {rank} needs "
                                     f"{expected_shape}")
                if dtype not in ("F32", "F16", "BF16", "F64"):
                    raise ValueError(f"{file}: key {key!r} has dtype {dtype}; LoRA weights are floating point")
                parts.setdefault(name, {})[part] = key
            if not parts:
                raise ValueError(f"{file}: holds no LoRA weights")
            for name, found in parts.items():
                if set(found) != {"A", "B"}:
                    missing = ({"A", "B"} - set(found)).pop()
                    raise ValueError(f"{file}: {name} has lora_{set(found).pop()} but no lora_{missing}")
            device = next(patient.parameters()).device
            dtype = torch.bfloat16 if next(patient.parameters()).dtype == torch.bfloat16 else torch.float32
            projections = {}
            for name, found in sorted(parts.items()):
                a, b = handle.get_tensor(found["A"]), handle.get_tensor(found["B"])
                bad = first_non_finite([(found["A"], a), (found["B"], b)])
                if bad is not None:
                    raise ValueError(f"{file}: {bad} holds NaN or inf; refusing to steer with it")
                projections[name] = LoraProjection(a.to(device=device, dtype=dtype).contiguous(),
                                                   b.to(device=device, dtype=dtype).contiguous(), float(scale))
    except ValueError:
        raise
    except Exception as error:  # safetensors raises its own types for a damaged file
        raise ValueError(f"{file}: cannot read the adapter weights ({error})") from None
    from .models import hidden_size, logits_width

    return AdapterDoctor(projections=projections, base_fingerprint=fingerprint,
                         model_type=(record or {}).get("model_type", patient.config.model_type),
                         logits_width=logits_width(patient), hidden_size=hidden_size(patient.config),
                         config=config, source=path)


def snapshot(lm: nn.Module) -> tuple[AdapterDoctor | None, str]:
    """(an AdapterDoctor of the peft LoRA model `lm` as it is now, "") or (None, why it cannot be one): what
    the shared-base forward reproduces is one active plain LoRA adapter on linear projections, unmerged.
    The snapshot's tensors are `lm`'s own (detached), read when it is taken; nothing is copied."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ModuleNotFoundError:
        return None, "not a LoRA model (peft is not installed)"
    if not isinstance(lm, PeftModel):
        return None, "a separate model (not a LoRA model of the patient)"
    if len(lm.active_adapters) != 1:
        return None, f"{len(lm.active_adapters)} active adapters (the stacked forward runs one)"
    adapter = lm.active_adapters[0]
    projections = {}
    for name, module in lm.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter not in module.lora_A:
            continue
        if module.merged:
            return None, "its LoRA is merged into its base weights"
        if module.disable_adapters:
            return None, "its adapters are disabled"
        plain = isinstance(module.lora_A[adapter], nn.Linear) and not module.lora_embedding_A
        if module.use_dora.get(adapter, False) or getattr(module, "lora_bias", {}).get(adapter, False) or not plain:
            return None, f"{name} is not a plain LoRA of a linear projection (DoRA, embedding or bias)"
        projections[name] = LoraProjection(module.lora_A[adapter].weight.detach(),
                                           module.lora_B[adapter].weight.detach(), float(module.scaling[adapter]))
    if not projections:
        return None, "it has no LoRA projections"
    from .models import hidden_size, logits_width

    base = lm.get_base_model()
    return AdapterDoctor(projections=projections, base_fingerprint=weights.fingerprint(lm),
                         model_type=base.config.model_type, logits_width=logits_width(base),
                         hidden_size=hidden_size(base.config)), ""
