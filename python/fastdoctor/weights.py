"""The patient's base weights as fastdoctor names and shares them.

fingerprint(model) names a set of base weights: the same checkpoint loaded again, cast to another float dtype or
moved to another device has the same fingerprint; another checkpoint does not. An adapter doctor records it at
save (base.json) and is refused against any other patient; the shared-base planner joins a doctor to the
patient's forward when the fingerprints agree, whatever object holds the tensors.

weight_sharing_copy(model) is a structural copy whose parameters are views of the original's storage: the
shared-base forward installs its own projection forwards on such a copy, so the user's patient object never
changes.
"""
from __future__ import annotations

import copy
import hashlib
import threading
import weakref

import torch
from torch import nn

_SAMPLES = 4096  # values read per tensor: a different checkpoint differs almost everywhere
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (tensor key, fingerprint)
_LOCK = threading.Lock()


def base_parameters(model: nn.Module):
    """(name, tensor) of the base weights under the plain model's names, whether or not peft wraps the model:
    LoRA tensors are left out and peft's prefixes removed, so a peft doctor and its patient list the same names."""
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), parameter


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the local shard of a DTensor (a tensor-parallel weight), else itself."""
    return t.to_local() if is_sharded(t) else t


def is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _tensor_key(named: list[tuple[str, torch.Tensor]]) -> tuple:
    """What identifies the current contents of these tensors without reading them: storage, in-place version
    (an optimizer step or load_state_dict bumps it), shape, dtype and device."""
    return tuple((name, local_tensor(t).data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)
                 for name, t in named)


def fingerprint(model: nn.Module) -> str:
    """A SHA-256 over the base weights' names, shapes and a strided sample of their values rounded to bf16
    (LoRA weights left out: a doctor and its patient have the same fingerprint). Computed once per model and
    set of tensors: recomputed when a tensor is replaced or changed in place (not through `.data`)."""
    named = sorted(base_parameters(model), key=lambda item: item[0])
    key = _tensor_key(named)
    with _LOCK:
        cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256()
    with torch.inference_mode(False), torch.no_grad():  # a DTensor cannot be detached in inference mode
        for name, tensor in named:
            # A tensor-parallel weight is gathered whole, one at a time: the same fingerprint as on one device.
            flat = (tensor.full_tensor() if is_sharded(tensor) else tensor.detach()).reshape(-1)
            stride = max(1, flat.numel() // _SAMPLES)
            sample = flat[::stride].to(torch.bfloat16).float().cpu()
            digest.update(f"{name}:{list(tensor.shape)};".encode())
            digest.update(sample.numpy().tobytes())
    value = digest.hexdigest()
    with _LOCK:
        _FINGERPRINTS[model] = (key, value)
    return value


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A structural copy of `model` whose parameters and buffers share the original's storage: no weight is
    copied, the copy's modules can be given other forwards freely, and an in-place update of the original's
    weights shows in the copy. Its parameters are new Parameter objects (requires_grad False), so freezing or
    unfreezing either model leaves the other alone. Tied weights stay tied."""
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
