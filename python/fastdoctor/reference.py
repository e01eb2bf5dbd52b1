"""Pure-PyTorch oracles for every fastdoctor op, each named after its op: readable and slow.

Each function here states the exact semantics that the compiled CPU and CUDA kernels implement; the tests
compare the kernels with these, and the benchmarks time the kernels against them in the same run.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
STREAM_TOKEN_SAMPLE = 0


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # int64 multiplication wraps modulo 2^64, which keeps all 64 bits of a 32 x 32-bit product.
    product = b * a
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32_10(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 on int64 tensors holding uint32 words: counter [..., 4], key [..., 2] -> [..., 4]."""
    c0, c1, c2, c3 = (counter[..., i] & _MASK32 for i in range(4))
    k0, k1 = key[..., 0] & _MASK32, key[..., 1] & _MASK32
    for round_index in range(10):
        if round_index > 0:
            k0 = (k0 + _PHILOX_WEYL[0]) & _MASK32
            k1 = (k1 + _PHILOX_WEYL[1]) & _MASK32
        hi0, lo0 = _mulhilo(_PHILOX_MUL[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack([c0, c1, c2, c3], dim=-1)


def philox_uniform(seed: torch.Tensor, step: torch.Tensor, stream: int = STREAM_TOKEN_SAMPLE) -> torch.Tensor:
    """A float64 uniform in [0, 1) per row with 53 random bits, keyed by (seed, step, stream).

    Bit-identical to csrc/kernels/philox.h::philox_uniform, so the reference, the CPU kernel and the CUDA
    kernel draw the same number for a row wherever it sits in a batch.
    """
    seed = seed.to(torch.int64).cpu()
    step = step.to(torch.int64).cpu()
    counter = torch.stack([step & _MASK32, (step >> 32) & _MASK32, torch.full_like(step, stream),
                           torch.zeros_like(step)], dim=-1)
    key = torch.stack([seed & _MASK32, (seed >> 32) & _MASK32], dim=-1)
    x = philox4x32_10(counter, key)
    bits53 = ((x[..., 0] >> 5) << 26) | (x[..., 1] >> 6)
    return bits53.to(torch.float64) * 2.0**-53


def mix_logits(logits: list[torch.Tensor], weights: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """m = sum_k w_k * z_k in float32, in k order; a zero weight contributes nothing (0 * -inf is not NaN).

    This equals sum_k w_k * log_softmax(z_k) up to a per-row constant (METHODS.md decision 6), which no
    sampling decision and no renormalised log-probability can see.
    """
    vocab = vocab_size if vocab_size is not None else logits[0].shape[-1]
    mixed = torch.zeros(logits[0].shape[0], vocab, dtype=torch.float32, device=logits[0].device)
    for k, z in enumerate(logits):
        w = weights[:, k : k + 1].to(torch.float32)
        term = w * z[:, :vocab].to(torch.float32)
        mixed = mixed + torch.where(w != 0, term, torch.zeros_like(term))
    return mixed


def filtered_log_probs(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """log-probabilities [B, V] of the top-k, then top-p filtered and renormalised distribution, computed in
    the dtype of `scaled` (the oracle passes float64, the eager benchmark chain float32).

    HF's order and boundary rules: top-k keeps every token tied with the k-th largest value; top-p keeps
    the smallest set of top tokens whose mass reaches p, the crossing token included, and every token tied
    with the smallest kept one. k <= 0 or k >= V and p >= 1 switch the filters off.
    """
    s = scaled
    vocab = s.shape[-1]
    k = top_k.to(torch.int64).to(s.device)
    k_active = (k > 0) & (k < vocab)
    if bool(k_active.any()):
        k_clamped = torch.where(k_active, k, torch.ones_like(k))
        largest = torch.topk(s, int(k_clamped.max()), dim=-1).values
        kth = largest.gather(1, (k_clamped - 1).unsqueeze(1))
        s = s.masked_fill(k_active.unsqueeze(1) & (s < kth), float("-inf"))

    p = top_p.to(s.dtype).to(s.device)
    p_active = (p > 0) & (p < 1)
    if bool(p_active.any()):
        sorted_s = torch.sort(s, dim=-1, descending=True).values
        sorted_probs = torch.softmax(sorted_s, dim=-1)
        mass_above = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        kept_sorted = mass_above < p.unsqueeze(1)
        boundary = sorted_s.masked_fill(~kept_sorted, float("inf")).min(dim=-1).values
        s = s.masked_fill(p_active.unsqueeze(1) & (s < boundary.unsqueeze(1)), float("-inf"))
    return torch.log_softmax(s, dim=-1)


def mixed_sampling_from_logits(
    logits: list[torch.Tensor],
    weights: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    vocab_size: int | None = None,
):
    """The oracle of torch.ops.fastdoctor.mixed_sampling_from_logits (see its docstring in ops.py).

    It draws u = Philox(seed, step) and inverts the CDF in vocabulary order, exactly as the kernels do, and
    computes everything after the float32 mix in float64. Returns (tokens int64 [B], logprobs float32 [B]);
    invalid rows give (-1, NaN).
    """
    mixed = mix_logits(logits, weights, vocab_size)
    temperature = temperature.to(torch.float32).to(mixed.device)
    greedy = ~(temperature > 0)
    divisor = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = mixed / divisor.unsqueeze(1)
    invalid = torch.isnan(scaled).any(dim=1) | torch.isposinf(scaled).any(dim=1) | torch.isneginf(scaled).all(dim=1)
    safe = torch.where(invalid.unsqueeze(1), torch.zeros_like(scaled), scaled)

    log_probs = filtered_log_probs(safe.to(torch.float64), top_k, top_p)
    u = philox_uniform(seed, step).to(mixed.device)
    cdf = torch.cumsum(log_probs.exp(), dim=-1)
    sampled = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    positions = torch.arange(log_probs.shape[1], device=mixed.device)
    last_kept = torch.where(torch.isfinite(log_probs), positions, -1).max(dim=1).values
    sampled = torch.minimum(sampled, last_kept)
    tokens = torch.where(greedy, safe.argmax(dim=1), sampled)
    logprobs = log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1).to(torch.float32)
    tokens = torch.where(invalid, torch.full_like(tokens, -1), tokens)
    logprobs = torch.where(invalid, torch.full_like(logprobs, float("nan")), logprobs)
    return tokens, logprobs


def target_log_probs_from_logits(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The oracle of ops.target_log_probs_from_logits: log p(targets[t] | logits[t]) for logits [T, V] via a
    full log_softmax (float32 [T]); 0 where ignored."""
    ignored = targets == ignore_index
    safe = torch.where(ignored, torch.zeros_like(targets), targets)
    picked = torch.log_softmax(logits.float(), dim=-1).gather(1, safe.unsqueeze(1)).squeeze(1)
    return torch.where(ignored, torch.zeros_like(picked), picked)


def target_log_probs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 ignore_index: int = -100) -> torch.Tensor:
    """The oracle of ops.target_log_probs_from_hidden: the full logits hidden @ weight.T, then
    target_log_probs_from_logits (the kernel never materialises them)."""
    return target_log_probs_from_logits(hidden.float() @ weight.float().t(), targets, ignore_index)


def token_rewards_from_face_logprobs(logp_pos: torch.Tensor, logp_neg: torch.Tensor, mask: torch.Tensor,
                                     sign: torch.Tensor, tau: float = 1.0, theta: float = 0.0,
                                     eps: float = 1e-6) -> torch.Tensor:
    """LLMdoctor's token rewards (METHODS.md §2.2) over a padded batch of responses [B, T]:
    delta = |lp_pos - lp_neg|; dhat = delta / (mean of delta over the response's valid tokens + eps);
    S = tanh(dhat / tau); r = sign * S * [S > theta]; 0 at masked positions."""
    delta = (logp_pos - logp_neg).abs() * mask
    count = mask.sum(dim=1, keepdim=True)
    mean = delta.sum(dim=1, keepdim=True) / count.clamp_min(1)
    strength = torch.tanh(delta / (mean + eps) / tau)
    rewards = sign.unsqueeze(1) * strength * (strength > theta)
    return torch.where(mask & (count > 0), rewards, torch.zeros_like(rewards))


# --- TARo router gating (METHODS.md §3.3, decision 7) -------------------------------------------------------
# The feature layout below is the single source of truth shared by the kernels (csrc/kernels/router_gating.h)
# and the router trainer: for each row, the top-K of the base logits, then the top-K of the reward model's
# logits, each candidate as [logit ; E[token id]] (d + 1 floats), in descending rank order:
#   h = [zb_(0), E[ib_(0)], zb_(1), E[ib_(1)], ..., zb_(K-1), E[ib_(K-1)],
#        zr_(0), E[ir_(0)], ..., zr_(K-1), E[ir_(K-1)]]
# h has 2K(d+1) entries. Equal logits rank by the lower token id. E is nn.Embedding(V, d).weight, (w1, b1) is
# nn.Linear(2K(d+1), H) and (w2, b2) is nn.Linear(H, 1); alpha = sigmoid(w2 . tanh(w1 h + b1) + b2).

from .ranking import MAX_ROUTER_TOP_K, router_top_k  # noqa: E402  (the one ranking, shared with the run-time code)


def router_features(base_logits: torch.Tensor, rm_logits: torch.Tensor, embedding_weight: torch.Tensor, k: int,
                    vocab_size: int | None = None) -> torch.Tensor:
    """The router's input h [B, 2K(d+1)] in the layout above (float32)."""
    parts = []
    for logits in (base_logits, rm_logits):
        values, ids = router_top_k(logits, k, vocab_size)
        pairs = torch.cat([values.unsqueeze(-1), embedding_weight[ids].to(torch.float32)], dim=-1)  # [B, K, d+1]
        parts.append(pairs.flatten(1))
    return torch.cat(parts, dim=1)


def router_invalid_rows(base_logits: torch.Tensor, rm_logits: torch.Tensor, vocab_size: int | None = None):
    """[B] bool: rows whose base or RM logits hold NaN or +inf (alpha is NaN there, the token -1)."""
    bad = torch.zeros(base_logits.shape[0], dtype=torch.bool, device=base_logits.device)
    for logits in (base_logits, rm_logits):
        z = logits[:, : (vocab_size or logits.shape[-1])]
        bad |= torch.isnan(z).any(dim=1) | torch.isposinf(z).any(dim=1)
    return bad


def router_alpha(base_logits: torch.Tensor, rm_logits: torch.Tensor, embedding: torch.Tensor,
                           w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, k: int = 20,
                           vocab_size: int | None = None) -> torch.Tensor:
    """alpha float32 [B] = sigmoid(w2 . tanh(w1 h + b1) + b2) with h = router_features(...); w2 may be [H] or
    nn.Linear's [1, H], b2 [1] or []. NaN for rows with NaN or +inf logits."""
    h = router_features(base_logits, rm_logits, embedding, k, vocab_size)
    hidden = torch.tanh(h @ w1.to(torch.float32).t() + b1.to(torch.float32))
    alpha = torch.sigmoid(hidden @ w2.reshape(-1).to(torch.float32) + b2.reshape(()).to(torch.float32))
    invalid = router_invalid_rows(base_logits, rm_logits, vocab_size)
    return torch.where(invalid, torch.full_like(alpha, float("nan")), alpha)


def routed_mix_weights(alpha: torch.Tensor) -> torch.Tensor:
    """[B, 2] weights (1 - alpha, alpha) for (base, rm): z = (1 - alpha) z_base + alpha z_rm."""
    return torch.stack([1.0 - alpha, alpha], dim=1)


def routed_sampling_from_logits(
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
    seed: torch.Tensor,
    step: torch.Tensor,
    top_k_features: int = 20,
    vocab_size: int | None = None,
):
    """The oracle of torch.ops.fastdoctor.routed_sampling_from_logits: alpha from router_alpha, then
    mixed_sampling_from_logits (above) on weights (1 - alpha, alpha). Returns (tokens int64 [B], logprobs
    float32 [B], alpha float32 [B]); invalid rows give (-1, NaN, NaN for NaN/+inf logits)."""
    alpha = router_alpha(base_logits, rm_logits, embedding, w1, b1, w2, b2, top_k_features, vocab_size)
    tokens, logprobs = mixed_sampling_from_logits([base_logits, rm_logits], routed_mix_weights(alpha), temperature,
                                                  top_k, top_p, seed, step, vocab_size)
    return tokens, logprobs, alpha


def segmented_lora(y: torch.Tensor, x: torch.Tensor, shrink: list[torch.Tensor], expand: list[torch.Tensor],
                   scales: list[float], segments: list[int], rows: int) -> torch.Tensor:
    """Multi-LoRA batching, readable: a copy of y [N, out] where the rows of segment segments[i] (`rows` rows
    each) gain scales[i] * (x @ shrink[i].T) @ expand[i], computed in float32 and rounded to y's dtype once, as
    peft adds a float32 adapter's delta (shrink [rank, in] = lora_A, expand [rank, out] = lora_B.T)."""
    y = y.clone()
    for a, b, scale, segment in zip(shrink, expand, scales, segments):
        part = slice(segment * rows, (segment + 1) * rows)
        y[part] = (y[part].float() + ((x[part].float() @ a.float().T) @ b.float()) * scale).to(y.dtype)
    return y


def linear_segmented_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, shrink: list[torch.Tensor],
                          expand: list[torch.Tensor], scales: list[float], segments: list[int],
                          segment_count: int) -> torch.Tensor:
    """The projection, then segmented_lora on it; x [N, ..., in] holds `segment_count` equal segments."""
    y = torch.nn.functional.linear(x, weight, bias)
    rows = x.shape[0] // segment_count
    flat = segmented_lora(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), shrink, expand, scales, segments,
                          rows * (x[0].numel() // x.shape[-1]))
    return flat.view_as(y)
