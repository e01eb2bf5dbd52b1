"""The per-row sampling settings of a decode step, built and checked in one place.

RowSampling.of turns scalars, sequences or tensors into [B] tensors on the device (temperature, top-k, top-p,
Philox seed and step) and checks their values once, with the mixing weights; the op wrappers (fastdoctor.ops),
generate and every steering object (fastdoctor.steering, taro.RoutedSteering) take the result, and the fused
ops read its fields as they are.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

RowParam = float | int | Sequence[float] | Sequence[int] | torch.Tensor


def as_row_tensor(value: RowParam, name: str, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [batch] tensor of `dtype` on `device` from a scalar, a sequence or a tensor of shape [] or [batch]."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.dtype.is_complex or (
            value.dtype.is_floating_point and not dtype.is_floating_point
        ):
            raise TypeError(f"{name}: expected {'a floating' if dtype.is_floating_point else 'an integer'} tensor, "
                            f"got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name}: expected device {device} (that of the logits), got {value.device}")
        tensor = value
    elif isinstance(value, bool):
        raise TypeError(f"{name}: expected a number or a per-row sequence, got bool")
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not dtype.is_floating_point:
            raise TypeError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int) and dtype == torch.int64 and not -(2**63) <= value < 2**63:
            raise ValueError(f"{name}: {value} does not fit in int64")
        return torch.full((batch,), value, dtype=dtype, device=device)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise TypeError(f"{name}: expected numbers, got {list(value)!r:.80}")
        try:
            tensor = torch.tensor(list(value), device=device)
        except (OverflowError, RuntimeError, ValueError) as error:
            raise ValueError(f"{name}: {list(value)!r:.80} does not fit in {dtype} ({error})") from None
        if tensor.dtype.is_floating_point and not dtype.is_floating_point:
            raise TypeError(f"{name}: expected integers, got {list(value)!r}")
    else:
        raise TypeError(f"{name}: expected a number, a per-row sequence or a tensor, got {type(value).__name__}")
    if tensor.dim() == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"{name}: expected one value per row, shape [{batch}], got {list(tensor.shape)}")
    return tensor.to(dtype).contiguous()


def check_sampling_values(weights, temperature, top_k, top_p) -> None:
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("weights: expected finite mixing weights, got NaN or inf")
    if bool((temperature < 0).any()) or not bool(torch.isfinite(temperature).all()):
        raise ValueError("temperature: expected finite values >= 0 (0 means greedy), got "
                         f"{temperature.tolist()}")
    if bool((top_k < 0).any()):
        raise ValueError(f"top_k: expected values >= 0 (0 means off), got {top_k.tolist()}")
    if not bool(((top_p > 0) & (top_p <= 1)).all()):
        raise ValueError(f"top_p: expected values in (0, 1] (1 means off), got {top_p.tolist()}")


@dataclasses.dataclass(frozen=True)
class RowSampling:
    """The per-row sampling parameters of one decode step, already validated ([B] tensors on the device)."""

    temperature: torch.Tensor  # float32
    top_k: torch.Tensor  # int64
    top_p: torch.Tensor  # float32
    seed: torch.Tensor  # int64
    step: torch.Tensor  # int64: the row's step counter (Philox counter)
    vocab_size: int  # columns of every logit tensor that count (-1: all)

    @classmethod
    def of(cls, batch: int, device: torch.device, *, temperature: RowParam = 1.0, top_k: RowParam = 0,
           top_p: RowParam = 1.0, seed: RowParam = 0, step: RowParam = 0, vocab_size: int | None = None,
           weights: torch.Tensor | None = None, validate: bool = True) -> "RowSampling":
        """The settings for `batch` rows, each a scalar or one value per row; with `validate`, their values
        (and the mixing `weights`, when given) are checked, which reads device memory."""
        if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or
                                       vocab_size <= 0):
            raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
        sampling = cls(as_row_tensor(temperature, "temperature", batch, torch.float32, device),
                       as_row_tensor(top_k, "top_k", batch, torch.int64, device),
                       as_row_tensor(top_p, "top_p", batch, torch.float32, device),
                       as_row_tensor(seed, "seed", batch, torch.int64, device),
                       as_row_tensor(step, "step", batch, torch.int64, device),
                       -1 if vocab_size is None else vocab_size)
        if validate:
            check_sampling_values(weights if weights is not None else torch.zeros(1), sampling.temperature,
                                  sampling.top_k, sampling.top_p)
        return sampling
