"""TARo's router reads the top-K (value, token) pairs of each model's logits. This is that ranking, as the fused
kernels rank (ties to the lower token id), for the router's Python path, its training cache and the op wrappers.
The oracles (reference.py) use the same definition; the run-time code never imports the oracles."""
from __future__ import annotations

import torch

MAX_ROUTER_TOP_K = 64  # the fused op's limit on K (csrc/kernels/router_gating.h: kMaxRouterTopK)


def router_top_k(logits: torch.Tensor, k: int, vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32 [B, k], token ids int64 [B, k]) in descending rank order; ties go to the lower id (a
    stable descending sort, which torch.topk does not promise)."""
    z = logits[:, : (vocab_size or logits.shape[-1])].to(torch.float32)
    values, ids = torch.sort(z, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]
