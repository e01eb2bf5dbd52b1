"""Thin wrappers over torch.ops.fastdoctor.*: argument normalisation, value checks, fake registrations.

The compiled ops check shapes, dtypes and devices (metadata, free). The wrappers here also check values
(NaN weights, top_p outside (0, 1], ...), which reads device memory; pass validate=False in a hot loop that
has already validated its parameters once (fastdoctor.generate does), and on a GPU decode path where a host
synchronisation per token is not acceptable.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _C  # noqa: F401  (loads the schemas and kernels)
from .ranking import MAX_ROUTER_TOP_K
from .sampling import RowParam, RowSampling, as_row_tensor, check_sampling_values  # noqa: F401  (ops.RowParam)

MAX_MIX_INPUTS = 8
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)



@torch.library.register_fake("fastdoctor::mixed_sampling_from_logits")
def _mixed_sampling_from_logits_fake(logits, weights, temperature, top_k, top_p, seed, step, vocab_size=-1):
    batch = logits[0].shape[0]
    return logits[0].new_empty(batch, dtype=torch.int64), logits[0].new_empty(batch, dtype=torch.float32)


def _explain_invalid_rows(logits: Sequence[torch.Tensor], weights: torch.Tensor, tokens: torch.Tensor,
                          vocab: int) -> None:
    """The kernels mark rows whose mixed logits hold NaN or +inf (or are all -inf) with token -1."""
    bad_rows = (tokens < 0).nonzero().flatten().tolist()
    if not bad_rows:
        return
    row = bad_rows[0]
    for k, z in enumerate(logits):
        values = z[row, :vocab].float()
        if bool(torch.isnan(values).any()):
            raise ValueError(f"logits[{k}]: row {row} contains NaN (rows with invalid logits: {bad_rows})")
        if bool(torch.isposinf(values).any()) and float(weights[row, k]) != 0:
            raise ValueError(f"logits[{k}]: row {row} contains +inf (rows with invalid logits: {bad_rows})")
    raise ValueError(f"logits: the mixed logits of row {row} are all -inf or overflow to inf/NaN "
                     f"(weights {weights[row].tolist()}; rows with invalid logits: {bad_rows})")


def mixed_sampling_from_logits(
    logits: Sequence[torch.Tensor],
    weights: RowParam | Sequence[Sequence[float]],
    *,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    seed: RowParam = 0,
    step: RowParam = 0,
    vocab_size: int | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix K models' logits, filter, and sample one token per row, in one fused kernel.

    Args:
      logits: K tensors [B, V] (the patient's, then each doctor's), float32, bfloat16 or float16, each in
        its own dtype, all on one device. Their vocabularies must match unless `vocab_size` is given.
      weights: [B, K] per-row mixing weights (alpha for the patient, beta_i for doctor i); a sequence of K
        numbers or a [K] tensor is broadcast to every row.
      temperature: per-row [B] (or a scalar) > 0; 0 means greedy (first index of the maximum).
      top_k: per-row [B] int; 0 (or >= V) means off. Tokens tied with the k-th value are kept.
      top_p: per-row [B] in (0, 1]; 1 means off. The token that crosses p is kept.
      seed, step: per-row int64. The row's random number is Philox(seed, step): it does not depend on the
        row's position in the batch, and the CPU and CUDA kernels draw the same one.
      vocab_size: use only the first `vocab_size` columns of every tensor (for padded vocabularies).
      validate: check values (reads device memory) and turn invalid rows into a ValueError.

    Returns:
      tokens int64 [B] and logprobs float32 [B]: the token's log-probability under the mixed, temperature-
      scaled, filtered and renormalised distribution (for greedy rows, at temperature 1). With
      validate=False, a row whose mixed logits hold NaN or +inf (or are all -inf) gives token -1 and NaN.

    The mix is m = sum_k w_k log_softmax(z_k); per-row constants cancel, so the kernel mixes raw logits.
    """
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence) or len(logits) == 0:
        raise TypeError("logits: expected a non-empty list of [batch, vocab] tensors")
    if len(logits) > MAX_MIX_INPUTS:
        raise ValueError(f"logits: expected at most {MAX_MIX_INPUTS} tensors, got {len(logits)}")
    for k, z in enumerate(logits):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"logits[{k}]: expected a tensor, got {type(z).__name__}")
        if z.dtype not in _LOGIT_DTYPES:
            raise TypeError(f"logits[{k}]: expected float32, bfloat16 or float16, got {z.dtype}")
        if z.dim() != 2:
            raise ValueError(f"logits[{k}]: expected shape [batch, vocab], got {list(z.shape)}")
    batch, device = logits[0].shape[0], logits[0].device
    num_inputs = len(logits)
    for k, z in enumerate(logits[1:], start=1):
        if z.device != device:  # checked here too: a mix of devices could dispatch past the kernel's check
            raise ValueError(f"logits[{k}]: expected device {device} (that of logits[0]), got {z.device}")

    if not isinstance(weights, torch.Tensor):
        weights = torch.tensor(weights, dtype=torch.float32, device=device)
    if weights.device != device:
        raise ValueError(f"weights: expected device {device} (that of the logits), got {weights.device}")
    if not weights.dtype.is_floating_point:
        raise TypeError(f"weights: expected a floating tensor, got {weights.dtype}")
    if weights.dim() == 1 and weights.shape[0] == num_inputs:
        weights = weights.unsqueeze(0).expand(batch, num_inputs)
    if weights.shape != (batch, num_inputs):
        raise ValueError(f"weights: expected shape [{batch}, {num_inputs}] or [{num_inputs}], got "
                         f"{list(weights.shape)}")
    weights = weights.to(torch.float32).contiguous()
    s = RowSampling.of(batch, device, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, step=step,
                       vocab_size=vocab_size, weights=weights, validate=validate)
    tokens, logprobs = torch.ops.fastdoctor.mixed_sampling_from_logits(
        list(logits), weights, s.temperature, s.top_k, s.top_p, s.seed, s.step, s.vocab_size)
    if validate:
        _explain_invalid_rows(logits, weights, tokens, vocab_size or logits[0].shape[1])
    return tokens, logprobs


def _check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        where = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"targets: ids must lie in [0, {vocab}) or equal ignore_index={ignore_index}; "
                         f"positions {where} hold {targets[where].tolist()}")


@torch.library.register_fake("fastdoctor::target_log_probs_from_logits")
def _target_log_probs_from_logits_fake(logits, targets, ignore_index=-100):
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


@torch.library.register_fake("fastdoctor::target_log_probs_from_hidden")
def _target_log_probs_from_hidden_fake(hidden, weight, targets, chunk_size=4096, ignore_index=-100):
    return hidden.new_empty(hidden.shape[0], dtype=torch.float32)


@torch.library.register_fake("fastdoctor::token_rewards_from_face_logprobs")
def _token_rewards_fake(logp_pos, logp_neg, mask, sign, tau=1.0, theta=0.0, eps=1e-6):
    return torch.empty_like(logp_pos)


def target_log_probs_from_logits(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
                                 validate: bool = True) -> torch.Tensor:
    """log p(targets[t]) under softmax(logits[t]) for logits [T, V] (float32, bfloat16 or float16), read in
    one pass: no [T, V] log_softmax is written. Returns float32 [T]; 0 where targets == ignore_index."""
    if validate:
        _check_targets(targets, logits.shape[-1], ignore_index)
    return torch.ops.fastdoctor.target_log_probs_from_logits(logits, targets, ignore_index)


def target_log_probs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                 chunk_size: int = 4096, ignore_index: int = -100,
                                 validate: bool = True) -> torch.Tensor:
    """The same from final hidden states [T, H] and the LM head weight [V, H]: logits are made and consumed
    one vocabulary chunk at a time, so peak extra memory is T x chunk_size floats instead of T x V."""
    if validate:
        _check_targets(targets, weight.shape[0], ignore_index)
    return torch.ops.fastdoctor.target_log_probs_from_hidden(hidden, weight, targets, chunk_size, ignore_index)


def token_rewards_from_face_logprobs(logp_pos: torch.Tensor, logp_neg: torch.Tensor, mask: torch.Tensor,
                                     sign: torch.Tensor, *, tau: float = 1.0, theta: float = 0.0,
                                     eps: float = 1e-6, validate: bool = True) -> torch.Tensor:
    """LLMdoctor token rewards over a padded batch [B, T] (see reference.token_rewards_from_face_logprobs):
    the mean runs over each response's own valid tokens; sign is +1 for chosen and -1 for rejected rows.
    validate: refuse NaN face log-probs at valid positions (reads device memory)."""
    for name, value in (("tau", tau), ("eps", eps)):
        if not value > 0:
            raise ValueError(f"{name}: expected > 0, got {value}")
    if not 0 <= theta < 1:
        raise ValueError(f"theta: expected a threshold in [0, 1) (S = tanh(.) lies in [0, 1)), got {theta}")
    if validate and isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        for name, values in (("logp_pos", logp_pos), ("logp_neg", logp_neg)):
            if isinstance(values, torch.Tensor) and values.shape == mask.shape:
                bad = torch.isnan(values) & mask  # -inf is a legal log-prob; NaN is never one
                if bool(bad.any()):
                    raise ValueError(f"{name}: NaN at a valid position (first in row {int(bad.any(1).nonzero()[0])})")
    return torch.ops.fastdoctor.token_rewards_from_face_logprobs(logp_pos, logp_neg, mask, sign, tau, theta, eps)


# --- TARo router gating -------------------------------------------------------------------------------------

@torch.library.register_fake("fastdoctor::routed_sampling_from_logits")
def _routed_sampling_from_logits_fake(base_logits, rm_logits, embedding, w1, b1, w2, b2, temperature, top_k, top_p,
                                      seed, step, top_k_features=20, vocab_size=-1):
    batch = base_logits.shape[0]
    return (base_logits.new_empty(batch, dtype=torch.int64), base_logits.new_empty(batch, dtype=torch.float32),
            base_logits.new_empty(batch, dtype=torch.float32))


def _explain_invalid_routed_rows(base_logits, rm_logits, alpha, tokens, vocab: int, router: dict) -> None:
    """Turns the rows the kernels marked invalid (token -1) into a ValueError that names the culprit."""
    bad_rows = (tokens < 0).nonzero().flatten().tolist()
    if not bad_rows:
        return
    row = bad_rows[0]
    for name, z in (("base_logits", base_logits), ("rm_logits", rm_logits)):
        values = z[row, :vocab].float()
        if bool(torch.isnan(values).any()):
            raise ValueError(f"{name}: row {row} contains NaN (rows with invalid logits: {bad_rows})")
        if bool(torch.isposinf(values).any()):
            raise ValueError(f"{name}: row {row} contains +inf (rows with invalid logits: {bad_rows})")
    if bool(torch.isnan(alpha[row])):
        for name, tensor in router.items():
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name}: the router's parameters hold NaN or inf (alpha is NaN in rows {bad_rows})")
        raise ValueError(f"router: alpha of row {row} is NaN: a top-K feature logit is -inf (fewer than "
                         f"top_k_features finite logits?) (rows: {bad_rows})")
    raise ValueError(f"base_logits, rm_logits: the routed logits of row {row} are all -inf or overflow to inf/NaN "
                     f"(alpha {float(alpha[row])}; rows with invalid logits: {bad_rows})")


def routed_sampling_from_logits(
    base_logits: torch.Tensor,
    rm_logits: torch.Tensor,
    embedding: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    top_k_features: int = 20,
    temperature: RowParam = 1.0,
    top_k: RowParam = 0,
    top_p: RowParam = 1.0,
    seed: RowParam = 0,
    step: RowParam = 0,
    vocab_size: int | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TARo decoding step in one op: route, mix, filter, and sample one token per row.

    alpha = sigmoid(w2 . tanh(w1 h + b1) + b2) per row, where h [2K(d+1)] holds the top-K (logit, embedding of
    the token id) of the base model, then of the reward model, in rank order (reference.router_features is the
    layout's definition); then z = (1 - alpha) z_base + alpha z_rm goes through exactly the sampling of
    mixed_sampling_from_logits (per-row temperature, top_k, top_p, Philox seed/step).

    Args:
      base_logits, rm_logits: [B, V] float32, bfloat16 or float16 (each its own dtype), one device. The two
        vocabularies must match unless `vocab_size` is given (a shared tokenizer is required).
      embedding: float32 [num_embeddings >= V, d] (nn.Embedding(V, d).weight).
      w1, b1: float32 [H, 2K(d+1)] and [H] (nn.Linear(2K(d+1), H)); any H.
      w2, b2: float32 [H] or [1, H], and [1] or [] (nn.Linear(H, 1)).
      top_k_features: K, 1..64 and <= V; must match the router's w1 (K and d are checked against its shape).
      temperature, top_k, top_p, seed, step, vocab_size: as in mixed_sampling_from_logits (0 = greedy / off).
      validate: check sampling values and turn invalid rows into a ValueError (reads device memory).

    Returns:
      tokens int64 [B], logprobs float32 [B] (under the routed, filtered, renormalised distribution), alpha
      float32 [B] (a sigmoid: in (0, 1), saturating to exactly 0 or 1 in float32 only for extreme router
      outputs). With validate=False, a row with NaN or +inf logits gives token -1, NaN, NaN.
    """
    for name, tensor in (("base_logits", base_logits), ("rm_logits", rm_logits), ("embedding", embedding),
                         ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    for name, z in (("base_logits", base_logits), ("rm_logits", rm_logits)):
        if z.dtype not in _LOGIT_DTYPES:
            raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {z.dtype}")
        if z.dim() != 2:
            raise ValueError(f"{name}: expected shape [batch, vocab], got {list(z.shape)}")
    batch, device = base_logits.shape[0], base_logits.device
    # Checked here too: a mix of devices could dispatch past the kernel's check (to another backend's kernel).
    for name, tensor in (("rm_logits", rm_logits), ("embedding", embedding), ("w1", w1), ("b1", b1), ("w2", w2),
                         ("b2", b2)):
        if tensor.device != device:
            raise ValueError(f"{name}: expected device {device} (that of base_logits), got {tensor.device}")
    if isinstance(top_k_features, bool) or not isinstance(top_k_features, int):
        raise TypeError(f"top_k_features: expected an int, got {top_k_features!r}")
    if not 1 <= top_k_features <= MAX_ROUTER_TOP_K:
        raise ValueError(f"top_k_features: expected K in [1, {MAX_ROUTER_TOP_K}], got {top_k_features}")
    # The mixing weights are (1 - alpha, alpha), finite by construction: only the row parameters to check.
    s = RowSampling.of(batch, device, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, step=step,
                       vocab_size=vocab_size, validate=validate)
    gating = gating_layout(dict(embedding=embedding, w1=w1, b1=b1, w2=w2, b2=b2))
    tokens, logprobs, alpha = routed_step(base_logits, rm_logits, gating, top_k_features, s)
    if validate:
        _explain_invalid_routed_rows(base_logits, rm_logits, alpha, tokens, vocab_size or base_logits.shape[1],
                                     {"embedding": embedding, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    return tokens, logprobs, alpha


def gating_layout(gating: dict) -> dict:
    """The router's parameters as the routed op takes them: w2 [H] (nn.Linear(H, 1).weight is [1, H]), b2 [1]."""
    w2, b2 = gating["w2"], gating["b2"]
    return {**gating, "w2": w2[0] if w2.dim() == 2 and w2.shape[0] == 1 else w2,
            "b2": b2.reshape(1) if b2.dim() == 0 else b2}


def routed_step(base_logits: torch.Tensor, rm_logits: torch.Tensor, gating: dict, top_k_features: int,
                sampling: RowSampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused routed_sampling_from_logits op on checked inputs (gating: the router's embedding, w1, b1, w2,
    b2 in the op's layout): the one route to the kernel for the wrapper and for taro.RoutedSteering."""
    return torch.ops.fastdoctor.routed_sampling_from_logits(
        base_logits, rm_logits, gating["embedding"], gating["w1"], gating["b1"], gating["w2"], gating["b2"],
        sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed, sampling.step, top_k_features,
        sampling.vocab_size)


@torch.library.register_fake("fastdoctor::segmented_lora_")
def _segmented_lora_fake(y, x, shrink, expand, scales, segments, rows):
    return None


def segmented_lora_(y: torch.Tensor, x: torch.Tensor, shrink: Sequence[torch.Tensor], expand: Sequence[torch.Tensor],
                    scales: Sequence[float], segments: Sequence[int], rows: int) -> torch.Tensor:
    """In place on y [N, out]: the rows of segment segments[i] (each segment `rows` rows of the stacked batch)
    gain scales[i] * (x @ shrink[i].T) @ expand[i], with shrink [rank, in] and expand [rank, out] (peft's lora_A
    and lora_B.T) both float32 or, for bfloat16 x and y, both bfloat16; the sums are float32. One call per
    projection for every adapter (see shared_base). Returns y."""
    torch.ops.fastdoctor.segmented_lora_(y, x, list(shrink), list(expand), [float(s) for s in scales],
                                         [int(s) for s in segments], int(rows))
    return y


@torch.library.register_fake("fastdoctor::linear_segmented_lora")
def _linear_segmented_lora_fake(weight, bias, shrink, expand, scales, segments, segment_count, x):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def linear_segmented_lora(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          shrink: Sequence[torch.Tensor], expand: Sequence[torch.Tensor], scales: Sequence[float],
                          segments: Sequence[int], segment_count: int) -> torch.Tensor:
    """F.linear(x, weight, bias) followed by segmented_lora_ on it, with x [N, ..., in] stacked as
    `segment_count` equal segments of N / segment_count rows: the stacked copy's nn.Linear forward in one op call
    (shared_base binds everything but x with functools.partial)."""
    return torch.ops.fastdoctor.linear_segmented_lora(weight, bias, list(shrink), list(expand),
                                                      [float(s) for s in scales], [int(s) for s in segments],
                                                      int(segment_count), x)
