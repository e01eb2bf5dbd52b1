"""Training and judging the TARo router on a RouterCache, with both models frozen (METHODS.md §3.3).

The loss is the teacher-forced NLL of correct full solutions under softmax((1 - a_t) z_base + a_t z_rm) over
the full vocabulary, plus an optional Bernoulli-entropy term on alpha.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from .. import tokens
from .. import train as train_lib
from .router import Router, convex_mix, save_router
from .router_cache import CacheItem, RouterCache


def bernoulli_entropy(alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.clamp(1e-6, 1 - 1e-6)
    return -(a * a.log() + (1 - a) * (1 - a).log())


def routed_nll(alpha: torch.Tensor, base_logits: torch.Tensor, rm_logits: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [N] of targets under softmax((1 - alpha) z_base + alpha z_rm), full vocabulary."""
    return nn.functional.cross_entropy(convex_mix(alpha, base_logits, rm_logits), targets, reduction="none")


def router_batch_loss(router: Router, cache: RouterCache, items: Sequence[CacheItem], *,
                      entropy_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean per-token routed NLL of the items' gold tokens + entropy_weight * mean Bernoulli entropy of alpha
    (a positive weight pushes alpha toward 0 or 1, a negative one toward 0.5). Metrics: the NLL, alpha's mean
    and spread, and for reference the NLL of the base and the reward model alone."""
    rows = cache.rows(items)
    device = router.out.weight.device
    rows = {k: v.to(device) for k, v in rows.items()}
    alpha = router.alpha_from_top_k(rows["base_values"], rows["base_ids"], rows["rm_values"], rows["rm_ids"])
    nll = routed_nll(alpha, rows["base_logits"], rows["rm_logits"], rows["targets"]).mean()
    entropy = bernoulli_entropy(alpha).mean()
    loss = nll + entropy_weight * entropy if entropy_weight else nll
    with torch.no_grad():
        base_nll = nn.functional.cross_entropy(rows["base_logits"], rows["targets"])
        rm_nll = nn.functional.cross_entropy(rows["rm_logits"], rows["targets"])
    return loss, {"nll": float(nll.detach()), "alpha_mean": float(alpha.detach().mean()),
                  "alpha_std": float(alpha.detach().std()) if alpha.numel() > 1 else 0.0,
                  "entropy": float(entropy.detach()), "nll_base": float(base_nll), "nll_rm": float(rm_nll),
                  "tokens": float(alpha.numel())}


def digit_token_ids(tokenizer) -> torch.Tensor:
    """The ids of tokens whose text holds a digit (the numbers of a solution)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([i for i, t in enumerate(tokens) if t is not None and any(c.isdigit() for c in t)],
                        dtype=torch.int64)


@torch.no_grad()
def evaluate_routing_nll(cache: RouterCache, *, router: Router | None = None,
                         fixed_alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), chunk: int = 16,
                         digit_ids: torch.Tensor | None = None) -> dict:
    """Teacher-forced on the cached gold solutions, under the router and under fixed convex mixes
    (1 - a) z_base + a z_rm (a = 0: base alone, a = 1: RM alone): per-token NLL ('nll') and greedy top-1 accuracy
    (argmax of the mixed logits = the gold token, 'top1'), overall and per level; with digit_ids, also both on
    the gold tokens that hold digits ('nll_digits', 'top1_digits')."""
    stats: dict[str, dict[str, dict[str, float]]] = {}  # variant -> group -> sums
    counts: dict[str, float] = {}
    alpha_sums: dict[str, float] = {}
    items = cache.items()

    def add(table, group, key, value):
        table.setdefault(group, {}).setdefault(key, 0.0)
        table[group][key] += value

    for first in range(0, len(items), chunk):
        part = items[first: first + chunk]
        rows = cache.rows(part)
        targets = rows["targets"]
        level = torch.cat([torch.full((it.end - it.start,), it.level) for it in part])
        groups = {"all": torch.ones_like(targets, dtype=torch.bool),
                  **{str(lv): level == lv for lv in level.unique().tolist()}}
        if digit_ids is not None:
            groups["digits"] = torch.isin(targets, digit_ids)
        variants = {f"fixed a={a:g}": torch.full_like(targets, a, dtype=torch.float32) for a in fixed_alphas}
        if router is not None:  # the router may live on a GPU; the cache's rows are on the CPU
            device = router.out.weight.device
            variants["router"] = router.alpha_from_top_k(*(rows[k].to(device) for k in (
                "base_values", "base_ids", "rm_values", "rm_ids"))).cpu()
        for name, alpha in variants.items():
            mixed = convex_mix(alpha, rows["base_logits"], rows["rm_logits"])
            nll = nn.functional.cross_entropy(mixed, targets, reduction="none")
            top1 = (mixed.argmax(-1) == targets).float()
            table = stats.setdefault(name, {})
            for group, mask in groups.items():
                add(table, group, "nll", float(nll[mask].sum()))
                add(table, group, "top1", float(top1[mask].sum()))
        for group, mask in groups.items():
            counts[group] = counts.get(group, 0) + int(mask.sum())
            if router is not None:
                alpha_sums[group] = alpha_sums.get(group, 0.0) + float(variants["router"][mask].sum())
    order = ["all"] + sorted(g for g in counts if g not in ("all", "digits"))
    result = {"tokens": int(counts["all"]),
              "nll": {v: {g: round(t[g]["nll"] / counts[g], 4) for g in order} for v, t in stats.items()},
              "top1": {v: {g: round(t[g]["top1"] / counts[g], 4) for g in order} for v, t in stats.items()}}
    if digit_ids is not None and counts.get("digits"):
        result["digit_tokens"] = int(counts["digits"])
        result["nll_digits"] = {v: round(t["digits"]["nll"] / counts["digits"], 4) for v, t in stats.items()}
        result["top1_digits"] = {v: round(t["digits"]["top1"] / counts["digits"], 4) for v, t in stats.items()}
    if router is not None:
        result["router_alpha_mean"] = {g: round(alpha_sums[g] / counts[g], 4) for g in order + (
            ["digits"] if "digits" in counts and counts["digits"] else [])}
    return result


def train_router(cache: RouterCache, out: str | os.PathLike, *, router: Router | None = None, k: int = 20,
                 embed_dim: int = 32, hidden: int = 128, init_alpha: float = 0.5, entropy_weight: float = 0.0,
                 config=None, tokenizer=None, work: str | os.PathLike | None = None, resume: bool = True,
                 eval_cache: RouterCache | None = None, info: dict | None = None) -> dict:
    """Stage 2: trains a Router on a RouterCache (the frozen models' outputs) and saves it to `out`.

    One example is one problem's gold solution; config.batch_size problems per optimizer step (AdamW, warmup +
    cosine, atomic resumable checkpoints in `work`, default <out>.train). With eval_cache, reports the held-out
    per-token NLL under the router and fixed mixes. Returns a summary dict."""
    if k > cache.top_k:
        raise ValueError(f"k: the cache holds top-{cache.top_k} features, fewer than K = {k}")
    router = router or Router(cache.vocab_size, k=k, embed_dim=embed_dim, hidden=hidden, init_alpha=init_alpha)
    if router.vocab_size != cache.vocab_size:
        raise ValueError(f"router: built for a vocabulary of {router.vocab_size}, the cache holds "
                         f"{cache.vocab_size}-wide logits")
    tokens.check_vocab(cache.meta.get("vocab"), tokenizer, cache.path, "the cache was built")
    config = config or train_lib.TrainConfig(steps=150, batch_size=8, lr=2e-3, warmup_steps=10, log_every=10,
                                             checkpoint_every=50, weight_decay=0.0)
    out = pathlib.Path(out)
    work = pathlib.Path(work) if work is not None else out.with_name(out.name + ".train")
    digits = digit_token_ids(tokenizer) if tokenizer is not None else None
    before = evaluate_routing_nll(eval_cache, router=router, digit_ids=digits) if eval_cache is not None else None
    loss = functools.partial(router_batch_loss, router, cache, entropy_weight=entropy_weight)
    history = train_lib.train(router, cache.items(), loss, config, work, name="taro-router", resume=resume)
    after = evaluate_routing_nll(eval_cache, router=router, digit_ids=digits) if eval_cache is not None else None
    summary = {"entropy_weight": entropy_weight, "config": dataclasses.asdict(config), "train_problems": len(cache),
               "train_tokens": cache.tokens, "final_train": history[-1] if history else None,
               "held_out_before": before, "held_out_after": after, **(info or {})}
    save_router(router, out, tokenizer, info=summary)
    return summary
