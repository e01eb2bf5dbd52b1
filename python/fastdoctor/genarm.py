"""GenARM's autoregressive reward model loss (METHODS.md §1): Bradley-Terry on preference pairs with the
response reward factorised over tokens, r(x, y) = sum_t log pi_r(y_t | x, y_<t), and no reference model:

  L_ARM = -log sigmoid(beta_r * [r(x, y_w) - r(x, y_l)]).

LLMdoctor's evaluation uses it for the GenARM baseline doctor; TARo trains its step-wise reward model with it
(context = prompt + earlier steps, y_w / y_l = the chosen / rejected next step).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .sequences import pack_pairs, response_log_probs, run_lm


def arm_batch_loss(lm: nn.Module, examples: Sequence, *, beta_r: float = 0.05, pad_id: int = 0,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, dict]:
    """Examples carry .prompt, .chosen and .rejected token tensors. Returns the mean BT loss and metrics:
    pair accuracy (reward of chosen > rejected) and the mean reward margin."""
    if beta_r <= 0:
        raise ValueError(f"beta_r: expected > 0, got {beta_r}")
    count = len(examples)
    batch = pack_pairs(examples, pad_id).to(device)
    reward = response_log_probs(run_lm(lm, batch).logits, batch).sum(dim=1)
    margin = reward[:count] - reward[count:]
    loss = -nn.functional.logsigmoid(beta_r * margin).mean()
    return loss, {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.detach().mean()),
                  "tokens": float(batch.response_mask.sum())}
