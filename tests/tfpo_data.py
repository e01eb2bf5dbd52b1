"""A synthetic preference task for tiny models: chosen responses use 'good' tokens that carry positive
stage-1 rewards, rejected ones use 'bad' tokens with negative rewards; everything else is neutral."""
from __future__ import annotations

import torch

from fastdoctor.tfpo import ScoredExample

GOOD = range(10, 14)
BAD = range(40, 44)
NEUTRAL = range(70, 74)


def _response(g: torch.Generator, marked: range, reward: float, length: int):
    tokens, rewards = [], []
    for _ in range(length):
        if torch.rand((), generator=g) < 0.4:
            tokens.append(marked[int(torch.randint(len(marked), (), generator=g))])
            rewards.append(reward)
        else:
            tokens.append(NEUTRAL[int(torch.randint(len(NEUTRAL), (), generator=g))])
            rewards.append(0.0)
    tokens.append(2)  # EOS
    rewards.append(0.0)
    return torch.tensor(tokens), torch.tensor(rewards)


def synthetic_examples(count: int, seed: int = 0) -> list[ScoredExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        prompt = torch.randint(70, 200, (int(torch.randint(3, 7, (), generator=g)),), generator=g)
        chosen, chosen_r = _response(g, GOOD, 0.8, int(torch.randint(4, 10, (), generator=g)))
        rejected, rejected_r = _response(g, BAD, -0.8, int(torch.randint(4, 10, (), generator=g)))
        out.append(ScoredExample(prompt, chosen, rejected, chosen_r, rejected_r))
    return out
