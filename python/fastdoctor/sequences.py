"""Padded batches of token sequences for teacher-forced scoring and training.

The layout every loss uses: prompts left-padded to a common length P, responses right-padded to L, so the
state s_t of every row (the prefix that has seen t response tokens) sits at column P - 1 + t, and the last
L + 1 columns hold s_0..s_L.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn


@dataclasses.dataclass
class SequenceBatch:
    """Prompt (left-padded) + response (right-padded) rows; see the module docstring."""

    input_ids: torch.Tensor  # [B, P + L]
    attention_mask: torch.Tensor  # [B, P + L]
    response_ids: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L] bool

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(*(t.to(device) for t in dataclasses.astuple(self)))


def pack_sequences(prompts: list[torch.Tensor], responses: list[torch.Tensor], pad_id: int = 0) -> SequenceBatch:
    """Packs 1-D prompt and response token tensors into the left/right padded layout."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"expected as many prompts as responses (>= 1), got {len(prompts)} and {len(responses)}")
    if any(p.numel() == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token (its last token is the state s_0)")
    width_p = max(p.numel() for p in prompts)
    width_l = max(max(r.numel() for r in responses), 1)
    batch = len(prompts)
    input_ids = torch.full((batch, width_p + width_l), pad_id, dtype=torch.long)
    attention = torch.zeros(batch, width_p + width_l, dtype=torch.long)
    response_ids = torch.full((batch, width_l), pad_id, dtype=torch.long)
    response_mask = torch.zeros(batch, width_l, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[row, width_p - p.numel(): width_p] = p
        input_ids[row, width_p: width_p + r.numel()] = r
        attention[row, width_p - p.numel(): width_p + r.numel()] = 1
        response_ids[row, : r.numel()] = r
        response_mask[row, : r.numel()] = True
    return SequenceBatch(input_ids, attention, response_ids, response_mask)


def pack_pairs(pairs: Sequence, pad_id: int = 0) -> SequenceBatch:
    """Preference pairs (objects with .prompt, .chosen, .rejected token tensors) as one batch: the chosen
    responses in rows 0..N-1, then the rejected ones in rows N..2N-1, each after its prompt."""
    prompts = [p.prompt for p in pairs]
    return pack_sequences(prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def run_lm(lm, batch: SequenceBatch, *, output_hidden_states: bool = False):
    """One teacher-forced forward over the batch, keeping only the last L + 1 positions' logits (the
    states s_0..s_L); HF's position rule for left padding."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
    return lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
              logits_to_keep=batch.response_ids.shape[1] + 1, output_hidden_states=output_hidden_states,
              use_cache=False)


def response_log_probs(logits: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """log pi(y_t | s_{t-1}) [B, L] from the logits at s_0..s_{L-1}; 0 at padding."""
    width = batch.response_ids.shape[1]
    scores = logits[:, :width].float()
    logp = -nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), batch.response_ids.reshape(-1),
                                        reduction="none").view_as(batch.response_ids)
    return logp * batch.response_mask


def right_pad(rows: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device | str = "cpu", *,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors right-padded with zeros into [N, width] (default: the longest row), with the bool mask of
    real entries."""
    width = max(r.numel() for r in rows) if width is None else width
    out = torch.zeros(len(rows), width, dtype=dtype, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
        mask[i, : r.numel()] = True
    return out, mask


def left_pad(rows: Sequence[torch.Tensor | Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts (1-D id tensors or lists) left-padded with pad_id into int64 [N, longest], with the int64
    attention mask that generate takes."""
    rows = [torch.as_tensor(r, dtype=torch.int64) for r in rows]
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, width - r.numel():] = r
        mask[i, width - r.numel():] = 1
    return ids, mask
