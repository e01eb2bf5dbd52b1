"""One forward for the patient and every LoRA doctor of it (multi-LoRA batching, as punica and S-LoRA do).

The patient's base weights are the same in all of these models; only the low-rank deltas differ. So generate
stacks the rows as segments [patient; doctor 1; doctor 2; ...], each B rows, and runs them through one
weight-sharing copy of the patient in which every projection that some doctor adapts adds, to each doctor's
segment only, that doctor's delta scale * (x @ A.T) @ B.T. The base weights are read once per step for all
models, and the stacked batch keeps one KV cache. Segment 0 (the patient) gets no delta, so its rows compute
exactly the patient's plain forward.

The copy is built once per (patient, doctors) and kept while they live; it holds the doctors' LoRA tensors
themselves, not copies, so it follows their training.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from .adapters import LoraDelta, weight_sharing_copy


class SegmentLayout:
    """Rows per segment of the current stacked batch (set by generate before each call's prefill)."""

    rows: int = 0


class StackedLoRA(nn.Module):
    """A projection of the patient plus per-segment LoRA deltas: rows [s * rows, (s + 1) * rows) of the stacked
    batch get adapter s's delta. Mirrors peft's unmerged LoRA forward (input cast to the adapter's dtype, the
    delta scaled, then added), so a segment's output equals that doctor's own peft forward."""

    def __init__(self, base: nn.Module, deltas: dict[int, LoraDelta], layout: SegmentLayout):
        super().__init__()
        self.base = base
        self.segments = sorted(deltas)
        self.deltas = [deltas[s] for s in self.segments]
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = self.layout.rows
        for segment, delta in zip(self.segments, self.deltas):
            part = x[segment * rows:(segment + 1) * rows].to(delta.a.dtype)
            y[segment * rows:(segment + 1) * rows] += ((part @ delta.a.T) @ delta.b.T) * delta.scale
        return y


class SharedBase:
    """The stacked model for `patient` and the adapter doctors whose LoRA weights are `deltas` (in segment
    order 1, 2, ...): `model` is an HF causal LM over (1 + K) * rows stacked rows."""

    def __init__(self, patient: nn.Module, deltas: list[dict[str, LoraDelta]]):
        self.segments = 1 + len(deltas)
        self.layout = SegmentLayout()
        self.model = weight_sharing_copy(patient).eval()
        names = sorted({name for per_doctor in deltas for name in per_doctor})
        for name in names:
            per_segment = {k + 1: per_doctor[name] for k, per_doctor in enumerate(deltas) if name in per_doctor}
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, StackedLoRA(getattr(parent, child), per_segment, self.layout))
        self.projections = len(names)

    def set_rows(self, rows: int) -> None:
        self.layout.rows = rows


_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # patient -> [(doctor weakrefs, SharedBase)]


def shared_base_for(patient: nn.Module, doctors: list[nn.Module], deltas: list[dict[str, LoraDelta]]) -> SharedBase:
    """The SharedBase of (patient, doctors), built on first use and reused while all of them live."""
    entries = _BUILT.setdefault(patient, [])
    entries[:] = [(refs, built) for refs, built in entries if all(r() is not None for r in refs)]
    for refs, built in entries:
        if len(refs) == len(doctors) and all(r() is d for r, d in zip(refs, doctors)):
            return built
    built = SharedBase(patient, deltas)
    entries.append(([weakref.ref(d) for d in doctors], built))
    return built
