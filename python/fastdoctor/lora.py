"""LoRA adapters (peft) on a frozen copy of the patient: the TFPO doctor, the GenARM reward model and the
TARo reward model all start this way (METHODS.md decision 8: fluent from the first step)."""
from __future__ import annotations

import contextlib
import warnings

from torch import nn

# The attention and MLP projections of the model families fastdoctor supports (Llama/Qwen2, then GPT-2).
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                    "c_attn", "c_proj", "c_fc")


@contextlib.contextmanager
def peft_quiet():
    """peft (0.21) calls a transformers API that transformers 5 marks deprecated; a user's run shows no warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _layer_count(lm: nn.Module) -> int | None:
    return getattr(lm.config, "num_hidden_layers", None) or getattr(lm.config, "n_layer", None)


def lora_config(lm: nn.Module, *, rank: int = 8, alpha: int = 16, dropout: float = 0.05, layers: int = 0):
    """The peft LoraConfig of attach_lora for `lm`: every attention and MLP projection it has, in every decoder
    layer or, with `layers` > 0, in the last `layers` only. The DPO baseline passes it to TRL (fastdoctor.dpo)."""
    try:
        from peft import LoraConfig
    except ModuleNotFoundError:
        raise ModuleNotFoundError("LoRA needs peft: pip install peft") from None
    names = {name.rsplit(".", 1)[-1] for name, module in lm.named_modules()
             if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"}
    wanted = [n for n in LORA_PROJECTIONS if n in names]
    if not wanted:
        raise ValueError(f"attach_lora: found no known projection layers in {type(lm).__name__}")
    extra = {}
    if layers:
        total = _layer_count(lm)
        if isinstance(layers, bool) or not isinstance(layers, int) or not total or not 1 <= layers <= total:
            raise ValueError(f"lora_layers: expected an int in [1, {total}] (0: every layer), got {layers!r}")
        extra["layers_to_transform"] = list(range(total - layers, total))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=wanted,
                      task_type="CAUSAL_LM", fan_in_fan_out="c_attn" in wanted, **extra)


def attach_lora(lm: nn.Module, *, rank: int = 8, alpha: int = 16, dropout: float = 0.05,
                layers: int = 0) -> nn.Module:
    """Wraps lm with peft LoRA adapters (GenARM's r = 8, alpha = 16, dropout 0.05) on every attention and MLP
    projection it has, in every decoder layer or, with `layers` > 0, in the last `layers` only (backpropagation
    then stops there); only the adapters train."""
    config = lora_config(lm, rank=rank, alpha=alpha, dropout=dropout, layers=layers)
    from peft import get_peft_model

    with peft_quiet():
        return get_peft_model(lm, config)
