"""The eager chains research code runs today: the baselines the benchmarks time the fused ops against.

They are not oracles (reference.py holds those): they draw with torch.multinomial, so they share the fused
ops' distribution but not their random numbers.
"""
from __future__ import annotations

import torch

from fastdoctor.reference import filtered_log_probs, routed_mix_weights


def eager_mix_sample_chain(
    logits: list[torch.Tensor],
    weights: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """The eager chain research code runs today (the benchmark baseline): log_softmax per input, weighted
    sum, temperature, top-k, sort-based top-p, softmax, multinomial. Same filtering semantics as above."""
    mixed = sum(weights[:, k : k + 1] * torch.log_softmax(z.float(), dim=-1) for k, z in enumerate(logits))
    scaled = mixed / temperature.unsqueeze(1)
    log_probs = filtered_log_probs(scaled, top_k, top_p)
    return torch.multinomial(log_probs.exp(), 1).squeeze(1)


def eager_routed_sampling_chain(
    base_logits: torch.Tensor,
    rm_logits: torch.Tensor,
    embedding: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    top_k_features: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager TARo step research code runs (the benchmark baseline): torch.topk per model, embedding
    lookup, Linear-tanh-Linear-sigmoid, then eager_mix_sample_chain with weights (1 - alpha, alpha), whose
    greedy form (every temperature 0) is the argmax of its mix of log_softmax per model. Returns (tokens [B],
    alpha [B])."""
    parts = []
    for logits in (base_logits, rm_logits):
        values, ids = torch.topk(logits.float(), top_k_features, dim=-1)
        parts.append(torch.cat([values.unsqueeze(-1), torch.nn.functional.embedding(ids, embedding)], -1).flatten(1))
    hidden = torch.tanh(torch.nn.functional.linear(torch.cat(parts, dim=1), w1, b1))
    alpha = torch.sigmoid(torch.nn.functional.linear(hidden, w2.reshape(1, -1), b2.reshape(1))).squeeze(1)
    weights = routed_mix_weights(alpha)
    if bool((temperature == 0).all()):
        models = (base_logits, rm_logits)
        mixed = sum(weights[:, k : k + 1] * torch.log_softmax(z.float(), dim=-1) for k, z in enumerate(models))
        return mixed.argmax(dim=-1), alpha
    return eager_mix_sample_chain([base_logits, rm_logits], weights, temperature, top_k, top_p), alpha
