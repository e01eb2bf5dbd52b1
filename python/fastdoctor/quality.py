"""Alignment-quality measurements, shared by both methods (LLMdoctor's positivity results, TARo's
out-of-domain run): sample completions for prompts with fastdoctor.generate, then score them with an offline
judge (VADER's compound sentiment), diversity (distinct-n), fluency (the patient's perplexity of the outputs)
and speed (tokens/s).

Every method samples the same number of completions per prompt with the same seeds, so the methods are
compared on equal terms; best-of-N picks, per prompt, the highest-scoring of the patient's own N samples.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import torch

from .generate import generate
from .judges import vader_scores  # noqa: F401 (quality.vader_scores: the default judge)
from .sequences import left_pad, pack_sequences, response_log_probs, run_lm
from .tokens import chat_ids, pad_id


@dataclasses.dataclass
class Completions:
    """texts[i][j]: sample j for prompt i; tokens likewise (ids of the new tokens, EOS and padding dropped)."""

    texts: list[list[str]]
    tokens: list[list[list[int]]]
    prompt_ids: list[list[int]]
    seconds: float
    new_tokens: int
    alphas: list[list[list[float]]] | None = None  # with a router that keeps a trace: its weight per new token

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Corpus distinct-n: unique n-grams over all n-grams of all samples (1.0 = no n-gram repeats)."""
    grams = [tuple(t[i: i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Fraction of paired samples (same prompt, same seed) that beat the baseline; ties count half."""
    if len(scores) != len(baseline):
        raise ValueError(f"win_rate: {len(scores)} scores vs {len(baseline)} baseline scores")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline)) / len(scores)


def chat_prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    return [chat_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def sample_completions(patient, tokenizer, prompts: Sequence[str], *, doctors: Sequence = (), alpha: float = 1.0,
                       betas: Sequence[float] = (), samples: int = 4, seed: int = 0, max_new_tokens: int = 48,
                       temperature: float = 1.0, top_p: float = 0.9, batch_size: int = 64, router=None) -> Completions:
    """`samples` completions per prompt; sample j of every prompt uses seed `seed + j` (Philox per row, so a
    row's tokens do not depend on its batch-mates). `router` is generate's router; when it keeps a `trace`
    (taro.RoutedSteering: one weight [B] per step), Completions.alphas holds each sample's weights."""
    return sample_weight_vectors(patient, tokenizer, prompts, [(alpha, list(betas))], doctors=doctors,
                                 samples=samples, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, batch_size=batch_size, router=router)[0]


def sample_weight_vectors(patient, tokenizer, prompts: Sequence[str], weights: Sequence[tuple[float, Sequence[float]]],
                          *, doctors: Sequence = (), samples: int = 4, seed: int = 0, max_new_tokens: int = 48,
                          temperature: float = 1.0, top_p: float = 0.9, batch_size: int = 64,
                          router=None) -> list[Completions]:
    """sample_completions for every (alpha, betas) in `weights` at once: the rows of all weight vectors share
    batches (per-row weights), and sample j of every prompt uses seed `seed + j` under every vector, so the
    vectors are paired sample for sample. Each Completions' `seconds` is the whole call's wall time."""
    if router is not None and len(weights) != 1:
        raise ValueError("sample_weight_vectors: a router replaces the weights; pass one weight vector")
    for k, (_, betas) in enumerate(weights):
        if betas and len(betas) != len(doctors):
            raise ValueError(f"weights[{k}]: {len(betas)} betas for {len(doctors)} doctors")
    prompt_ids = chat_prompt_ids(tokenizer, prompts)
    rows = [(k, i, j) for k in range(len(weights)) for i in range(len(prompts)) for j in range(samples)]
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    texts = [[[""] * samples for _ in prompts] for _ in weights]
    tokens = [[[[] for _ in range(samples)] for _ in prompts] for _ in weights]
    traced = router is not None and hasattr(router, "trace")
    alphas = [[[] for _ in range(samples)] for _ in prompts] if traced else None
    new_tokens, started = [0] * len(weights), time.time()
    device = next(patient.parameters()).device
    for first in range(0, len(rows), batch_size):
        chunk = rows[first: first + batch_size]
        ids, mask = left_pad([prompt_ids[i] for _, i, _ in chunk], pad)
        width = ids.shape[1]
        alpha = torch.tensor([float(weights[k][0]) for k, _, _ in chunk])
        betas = [torch.tensor([float(weights[k][1][d]) if weights[k][1] else 1.0 for k, _, _ in chunk])
                 for d in range(len(doctors))]
        weighting = dict(router=router) if router is not None else dict(alpha=alpha, betas=betas or None)
        out = generate(patient, ids.to(device), attention_mask=mask.to(device), doctors=list(doctors),
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       seed=[seed + j for _, _, j in chunk], eos_token_id=eos, pad_token_id=pad, **weighting)
        # generate clears the router's trace at the start of each call: it holds this batch's steps only
        trace = torch.stack(router.trace, dim=1).float().cpu() if traced and router.trace else None
        for r, (k, i, j) in enumerate(chunk):
            new = out[r, width:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            tokens[k][i][j] = new
            if trace is not None:
                alphas[i][j] = [round(float(a), 4) for a in trace[r, : len(new)]]
            texts[k][i][j] = tokenizer.decode(new, skip_special_tokens=True).strip()
            new_tokens[k] += len(new)
    seconds = time.time() - started
    return [Completions(texts[k], tokens[k], prompt_ids, seconds, new_tokens[k], alphas if k == 0 else None)
            for k in range(len(weights))]


@torch.no_grad()
def patient_perplexity(patient, completions: Completions, batch_size: int = 32) -> float:
    """exp(mean NLL) of the generated tokens under the patient alone: low means the outputs read as
    fluent to the model being steered."""
    pairs = [(torch.tensor(completions.prompt_ids[i]), torch.tensor(t))
             for i, per_prompt in enumerate(completions.tokens) for t in per_prompt if t]
    nll, count = 0.0, 0
    device = next(patient.parameters()).device
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first: first + batch_size]
        batch = pack_sequences([p for p, _ in chunk], [r for _, r in chunk]).to(device)
        logp = response_log_probs(run_lm(patient, batch).logits, batch)
        nll -= float(logp.sum())
        count += int(batch.response_mask.sum())
    return math.exp(nll / max(count, 1))


def best_of(completions: Completions, scores: Sequence[float]) -> tuple[Completions, list[float]]:
    """Best-of-N: per prompt, the highest-scoring of its N samples. Its tokens/s counts only the kept
    tokens against the time spent sampling all N."""
    per = len(completions.texts[0])
    picks = [max(range(per), key=lambda j: scores[i * per + j]) for i in range(len(completions.texts))]
    kept = [[completions.tokens[i][j]] for i, j in enumerate(picks)]
    best = Completions([[completions.texts[i][j]] for i, j in enumerate(picks)], kept, completions.prompt_ids,
                       completions.seconds, sum(len(t[0]) for t in kept))
    return best, [scores[i * per + j] for i, j in enumerate(picks)]


def summarise(name: str, completions: Completions, patient, *, baseline_scores: Sequence[float] | None = None,
              scores: Sequence[float] | None = None) -> dict:
    """One row of the quality table: reward (mean +- standard error over samples), win rate against the
    baseline's paired samples, distinct-2/3, the patient's perplexity of the outputs, tokens/s."""
    texts = [t for per_prompt in completions.texts for t in per_prompt]
    token_lists = [t for per_prompt in completions.tokens for t in per_prompt]
    scores = list(scores) if scores is not None else vader_scores(texts)
    mean, error = mean_and_standard_error(scores)
    row = {"method": name, "reward": mean, "reward_se": error, "samples": len(scores),
           "distinct_2": distinct_n(token_lists, 2), "distinct_3": distinct_n(token_lists, 3),
           "perplexity": patient_perplexity(patient, completions), "tokens_per_s": completions.tokens_per_s,
           "scores": scores}
    if baseline_scores is not None:
        if len(baseline_scores) == len(scores):
            row["win_rate"] = win_rate(scores, baseline_scores)
        else:  # one sample per prompt (best-of-N) against N per prompt: compare with each of the N
            per = len(baseline_scores) // len(scores)
            row["win_rate"] = win_rate([s for s in scores for _ in range(per)], baseline_scores)
    return row
