"""The router's training data: the frozen base and reward model run once over gold solutions.

RouterCache keeps, per solution token, the top-64 features of both models (any router K <= 64 can train on
them) and their full logits (float16, memory-mapped .npy), so router training never runs the models again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from .. import shared_base, tokens
from ..adapters import AdapterDoctor
from ..files import staged_directory
from ..models import logits_width
from ..ranking import MAX_ROUTER_TOP_K, router_top_k
from ..sequences import pack_sequences
from .reasoning import Problem, chat_prompt

CACHE_FORMAT = "fastdoctor.taro_router_cache/1"


def solution_tokens(tokenizer, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids) of a problem's gold solution: the chat prompt, then the solution text and the
    end-of-turn token, exactly what greedy decoding would have to produce."""
    response = tokens.encode(tokenizer, problem.solution)
    if tokenizer.eos_token_id is not None:
        response = torch.cat([response, torch.tensor([tokenizer.eos_token_id])])
    return tokens.encode(tokenizer, chat_prompt(tokenizer, problem.question, problem.example)), response




def model_signature(model) -> str:
    """A cheap fingerprint of a model's weights (per-tensor float64 sums; an AdapterDoctor's: its base's
    fingerprint and its LoRA tensors), so a cache built from other models is never reused."""
    digest = hashlib.sha256()
    if isinstance(model, AdapterDoctor):
        digest.update(model.base_fingerprint.encode())
        named = [(f"{n}.{part}", t) for n, p in sorted(model.projections.items()) for part, t in (("A", p.a), ("B", p.b))]
    else:
        named = list(model.state_dict().items())
    with torch.no_grad():
        for name, p in named:
            digest.update(f"{name}:{tuple(p.shape)}:{float(p.double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def _logits(base: nn.Module, rm, batch) -> dict[str, torch.Tensor]:
    """Both models' logits at the response states: an adapter RM and the base in one stacked forward."""
    width = batch.response_ids.shape[1]
    both = shared_base.teacher_forced_logits(base, [rm], batch)
    return {"base": both[0][:, :width].float(), "rm": both[1][:, :width].float()}


class RouterCache:
    """The frozen models' outputs on gold solutions, computed once.

    Per solution token (all problems concatenated, `offsets` [P + 1] delimiting each problem): the target id,
    the top-64 values and ids of the base and the reward model (float32 / int32, in rank order, ties to the lower
    id), and the full-vocabulary logits of both models as float16 memory-mapped .npy files [N, V]."""

    def __init__(self, path: str | os.PathLike):
        import numpy as np
        from safetensors.torch import load_file

        self.path = pathlib.Path(path)
        try:
            self.meta = json.loads((self.path / "cache.json").read_text())
            tensors = load_file(str(self.path / "top_k.safetensors"))
            self.base_logits = np.load(self.path / "base_logits.npy", mmap_mode="r", allow_pickle=False)
            self.rm_logits = np.load(self.path / "rm_logits.npy", mmap_mode="r", allow_pickle=False)
        except Exception as error:
            raise ValueError(f"{self.path}: not a readable router cache ({type(error).__name__}: {error})") from None
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path}/cache.json: expected format {CACHE_FORMAT!r}")
        self.targets = tensors["targets"]
        self.offsets = tensors["offsets"]
        self.base_values, self.base_ids = tensors["base_values"], tensors["base_ids"]
        self.rm_values, self.rm_ids = tensors["rm_values"], tensors["rm_ids"]
        self.levels = tensors["levels"]
        self.vocab_size = int(self.meta["vocab_size"])
        self.top_k = int(self.meta["top_k"])

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def items(self) -> list["CacheItem"]:
        return [CacheItem(i, int(self.offsets[i]), int(self.offsets[i + 1]), int(self.levels[i]))
                for i in range(len(self))]

    def rows(self, items: Sequence["CacheItem"]) -> dict[str, torch.Tensor]:
        """The cached tensors of these problems' tokens, concatenated (logits as float32)."""
        import numpy as np

        spans = [slice(it.start, it.end) for it in items]

        def take(tensor):
            return torch.cat([tensor[s] for s in spans])

        def take_logits(array):
            return torch.from_numpy(np.concatenate([array[s] for s in spans])).float()

        return {"targets": take(self.targets).long(), "base_values": take(self.base_values),
                "base_ids": take(self.base_ids).long(), "rm_values": take(self.rm_values), "rm_ids": take(self.rm_ids).long(),
                "base_logits": take_logits(self.base_logits), "rm_logits": take_logits(self.rm_logits)}


@dataclasses.dataclass(frozen=True)
class CacheItem:
    index: int
    start: int
    end: int
    level: int


@torch.no_grad()
def build_router_cache(base: nn.Module, rm: nn.Module, tokenizer, problems: Sequence[Problem],
                       path: str | os.PathLike, *, batch_size: int = 8, progress: bool = True) -> RouterCache:
    """Runs the frozen base and reward model once over the gold solutions of `problems` and writes a RouterCache
    to `path` atomically. An existing cache made from the same models, tokenizer and problems is reused."""
    import numpy as np
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    widths = logits_width(base), logits_width(rm)
    if widths[0] != widths[1]:
        raise ValueError(f"rm: emits {widths[1]} logits per token but the base model emits {widths[0]}; base and "
                         "reward model must share a vocabulary")
    vocab = widths[0]
    if not problems:
        raise ValueError("problems: expected at least one problem with a gold solution")
    key = {"format": CACHE_FORMAT, "vocab_size": vocab, "top_k": MAX_ROUTER_TOP_K, "vocab": tokens.vocab_record(tokenizer),
           "base": model_signature(base), "rm": model_signature(rm),
           "problems": hashlib.sha256(json.dumps([p.to_json() for p in problems]).encode()).hexdigest()[:16]}
    if (path / "cache.json").is_file():
        try:
            old = json.loads((path / "cache.json").read_text())
            if {k: old.get(k) for k in key} == key:
                return RouterCache(path)
        except (json.JSONDecodeError, ValueError):
            pass
    sequences = [solution_tokens(tokenizer, p) for p in problems]
    lengths = [r.numel() for _, r in sequences]
    total = sum(lengths)
    device = next(base.parameters()).device
    pad = tokens.pad_id(tokenizer)
    with staged_directory(path) as staging:
        arrays = {name: np.lib.format.open_memmap(staging / f"{name}_logits.npy", mode="w+", dtype=np.float16,
                                                  shape=(total, vocab)) for name in ("base", "rm")}
        top = {name: torch.empty(total, MAX_ROUTER_TOP_K, dtype=dtype) for name, dtype in
               (("base_values", torch.float32), ("base_ids", torch.int32), ("rm_values", torch.float32),
                ("rm_ids", torch.int32))}
        targets = torch.empty(total, dtype=torch.int32)
        position = 0
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first: first + batch_size]
            batch = pack_sequences([p for p, _ in chunk], [r for _, r in chunk], pad).to(device)
            outputs = _logits(base, rm, batch)
            mask = batch.response_mask
            count = int(mask.sum())
            rows = slice(position, position + count)
            targets[rows] = batch.response_ids[mask].to(torch.int32).cpu()
            for name, logits in outputs.items():
                flat = logits[mask]  # [count, V], problem by problem, token by token
                arrays[name][rows] = flat.cpu().to(torch.float16).numpy()
                values, ids = router_top_k(flat, MAX_ROUTER_TOP_K)
                top[f"{name}_values"][rows] = values.cpu()
                top[f"{name}_ids"][rows] = ids.to(torch.int32).cpu()
            position += count
            if progress:
                print(f"[taro-cache] {min(first + batch_size, len(sequences))}/{len(sequences)} problems, "
                      f"{position} tokens", flush=True)
        for array in arrays.values():
            array.flush()
        del arrays
        offsets = torch.tensor([0] + lengths).cumsum(0)
        levels = torch.tensor([p.level for p in problems], dtype=torch.int32)
        save_file({**top, "targets": targets, "offsets": offsets, "levels": levels}, str(staging / "top_k.safetensors"))
        (staging / "cache.json").write_text(json.dumps({**key, "tokens": total, "problem_ids": [p.id for p in problems]},
                                                       indent=1))
    return RouterCache(path)
