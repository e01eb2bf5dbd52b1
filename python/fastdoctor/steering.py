"""How generate turns each step's logits into tokens: one small protocol, three suppliers.

A steering object has one method, sample_step(logits, sampling) -> tokens, and a `trace` list of what it
decided per step. generate clears the trace when it starts and trims it to the returned tokens at the end.

    FixedWeights       p_patient^alpha * prod_i p_doctor_i^beta_i with per-row constant weights (LLMdoctor)
    WeightsHook        weights chosen per step by a Python function of the step's logits
    taro.RoutedSteering  the TARo router in the fused gating op (lives with TARo: the core never imports it)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .sampling import RowSampling


class Steering(Protocol):
    trace: list

    def sample_step(self, logits: list[torch.Tensor], sampling: RowSampling) -> torch.Tensor:
        """tokens int64 [B] for this step from the K models' logits [B, V] (patient first); -1 marks a row
        whose steered logits held NaN or +inf."""
        ...


def mix_and_sample(logits: list[torch.Tensor], weights: torch.Tensor, sampling: RowSampling) -> torch.Tensor:
    """The fused mixed_sampling_from_logits op on validated inputs (no host synchronisation)."""
    tokens, _ = torch.ops.fastdoctor.mixed_sampling_from_logits(
        logits, weights, sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed, sampling.step,
        sampling.vocab_size)
    return tokens


class FixedWeights:
    """Constant per-row mixing weights [B, K] (alpha for the patient, then beta_i per doctor). Its trace stays
    empty: the weights are the same at every step."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights.to(torch.float32).contiguous()
        self.trace: list[torch.Tensor] = []

    def sample_step(self, logits: list[torch.Tensor], sampling: RowSampling) -> torch.Tensor:
        if self.weights.shape != (logits[0].shape[0], len(logits)):
            raise ValueError(f"weights: expected shape [{logits[0].shape[0]}, {len(logits)}] (one per row and "
                             f"model), got {list(self.weights.shape)}")
        return mix_and_sample(logits, self.weights, sampling)


class WeightsHook:
    """Per-step weights from hook(logits) -> [B, K] (the K logit tensors of this step, patient first). Its
    trace holds the weights of every step."""

    def __init__(self, hook: Callable[[list[torch.Tensor]], torch.Tensor]):
        if not callable(hook):
            raise TypeError(f"router: expected a steering object or a weights hook function, got "
                            f"{type(hook).__name__}")
        self.hook = hook
        self.trace: list[torch.Tensor] = []

    def sample_step(self, logits: list[torch.Tensor], sampling: RowSampling) -> torch.Tensor:
        weights = self.hook(logits)
        expected = (logits[0].shape[0], len(logits))
        if not isinstance(weights, torch.Tensor) or weights.shape != expected or not weights.dtype.is_floating_point:
            raise ValueError(f"router: the weights hook must return a float tensor of shape {list(expected)} (one "
                             f"weight per row and model), got {weights!r:.80}")
        if weights.device != logits[0].device:
            raise ValueError(f"router: the weights hook returned weights on {weights.device}, the logits are on "
                             f"{logits[0].device}")
        if not bool(torch.isfinite(weights).all()):  # a Python hook already costs a sync; name the culprit
            raise ValueError(f"router: the weights hook returned NaN or inf at step {int(sampling.step.max())}")
        weights = weights.to(torch.float32).contiguous()
        self.trace.append(weights)
        return mix_and_sample(logits, weights, sampling)


def as_steering(router) -> Steering:
    """A steering object as given (anything with sample_step), or a weights hook wrapped in WeightsHook."""
    if hasattr(router, "sample_step"):
        return router
    if isinstance(router, torch.nn.Module):
        raise TypeError(f"router: got an nn.Module ({type(router).__name__}), not a steering object; for a TARo "
                        "router pass fastdoctor.taro.RoutedSteering(router)")
    return WeightsHook(router)
