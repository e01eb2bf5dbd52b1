"""One forward for the patient and every LoRA doctor of it (multi-LoRA batching, as punica and S-LoRA do).

The patient's base weights are the same in all of these models; only the low-rank deltas differ. So generate
stacks the rows as segments [patient; doctor 1; doctor 2; ...], each B rows, and runs them through one
weight-sharing copy of the patient in which every projection that some doctor adapts adds, to each doctor's
segment only, that doctor's delta scale * (x @ A.T) @ B.T. The base weights are read once per step for all
models, and the stacked batch keeps one KV cache. Segment 0 (the patient) gets no delta, so its rows compute
exactly the patient's plain forward.

The copy is built once per (patient, doctors) and kept while they live. It reads the doctors' LoRA tensors
afresh at the start of every generate call, so it follows their training.
"""
from __future__ import annotations

import functools
import weakref

import torch
from torch import nn

from . import _C
from .adapters import LoraDelta, weight_sharing_copy


class StackedLoRA:
    """The forward of one projection of the stacked copy: the base projection, then per-segment LoRA deltas
    (rows [s * rows, (s + 1) * rows) of the stacked batch get adapter s's delta) in one fused call
    (ops.segmented_lora_) for every adapter. Mirrors peft's unmerged LoRA forward (a float32 delta, scaled,
    then added), so a segment's output equals that doctor's own peft forward within float32 rounding.

    The kernel reads the adapter weights in `weight_dtype`: bfloat16 for a bfloat16 module, else float32. A decode
    step is memory-bound, and float32 LoRA weights of two rank-8 doctors on every projection are 7% of the bytes
    of the bf16 patient's own weights; bf16 halves that (punica and vLLM keep LoRA weights in the model's dtype).
    It is exact for adapters saved in bf16 (the bundled doctors); others are rounded once to bf16, as the base
    weights were. The accumulation stays float32.

    It is installed as the copy's module's own `forward` rather than as a wrapper module: this runs once per
    projection per step, and a module call of its own cost about 12% of the LoRA time at B = 1. For an
    nn.Linear that forward is the fused op linear_segmented_lora with everything but x bound, so no Python frame
    runs per projection. Eagerly it is bound in C++ (_C.BoundLinearSegmentedLora: the lists are converted once,
    each call is one typed dispatcher call; through torch.ops the op parsed its four lists on every call, 2-3 us
    of a ~26 us bf16 projection); for torch.compile it is the op with functools.partial, which dynamo traces.
    Other modules (GPT-2's Conv1D) call the base forward, then segmented_lora_. The stacked batch is
    `segment_count` equal segments, so each call reads its rows per segment off x: concurrent calls with
    different batch sizes share one copy."""

    def __init__(self, module: nn.Module, deltas: dict[int, LoraDelta], segment_count: int):
        self.base_forward = module.forward
        self.segments = sorted(deltas)
        self.sources = [deltas[s] for s in self.segments]
        self.scales = [d.scale for d in self.sources]
        self.segment_count = segment_count
        self.weight_dtype = torch.bfloat16 if module.weight.dtype == torch.bfloat16 else torch.float32
        self.shrink: list[torch.Tensor] = []
        self.expand: list[torch.Tensor] = []
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-reads the doctors' LoRA weights into the layout the kernel reads (lora_A as it is when it already
        has the weight dtype, lora_B transposed), since the doctors may have trained since the last call."""
        if not self.expand:
            self.shrink = [d.a.detach() if d.a.dtype == self.weight_dtype and d.a.is_contiguous()
                           else d.a.detach().to(self.weight_dtype).contiguous() for d in self.sources]
            self.expand = [d.b.detach().to(self.weight_dtype).t().contiguous() for d in self.sources]
            return
        for copy_a, copy_b, d in zip(self.shrink, self.expand, self.sources):
            if copy_a.data_ptr() != d.a.data_ptr():
                copy_a.copy_(d.a.detach())
            copy_b.copy_(d.b.detach().t())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        torch.ops.fastdoctor.segmented_lora_(y, x.contiguous(), self.shrink, self.expand, self.scales, self.segments,
                                             x.shape[0] // self.segment_count)  # the op itself: no Python wrapper
        return y

    def forwards_of(self, module: nn.Module) -> tuple:
        """The callables to install as `module.forward`: (eager, traceable by torch.compile). The tensors are bound
        once: refresh() updates them in place."""
        if type(module) is nn.Linear:
            args = (module.weight, module.bias, self.shrink, self.expand, self.scales, self.segments,
                    self.segment_count)
            return (_C.BoundLinearSegmentedLora(*args),
                    functools.partial(torch.ops.fastdoctor.linear_segmented_lora.default, *args))
        return self, self


class SharedBase:
    """The stacked model for `patient` and the adapter doctors whose LoRA weights are `deltas` (in segment
    order 1, 2, ...): `model` is an HF causal LM over (1 + K) * rows stacked rows."""

    def __init__(self, patient: nn.Module, deltas: list[dict[str, LoraDelta]]):
        self.model = weight_sharing_copy(patient).eval()
        self.projections: list[StackedLoRA] = []
        self.forwards: list[tuple[nn.Module, tuple]] = []  # (module, (eager forward, traceable forward))
        for name in sorted({name for per_doctor in deltas for name in per_doctor}):
            per_segment = {k + 1: per_doctor[name] for k, per_doctor in enumerate(deltas) if name in per_doctor}
            module = self.model.get_submodule(name)
            stacked = StackedLoRA(module, per_segment, 1 + len(deltas))
            self.forwards.append((module, stacked.forwards_of(module)))
            self.projections.append(stacked)
        self.install_forwards(compiled=False)

    def install_forwards(self, compiled: bool) -> None:
        """The projections' forwards for an eager or a torch.compile'd decode step (dynamo cannot trace the
        C++-bound one). Each is an instance attribute of this copy's module: the patient's own modules never
        change."""
        for module, (eager, traceable) in self.forwards:
            module.forward = traceable if compiled else eager

    def prepare(self, compiled: bool) -> None:
        """Before a generate call: the doctors' current LoRA weights, and the forwards for its decode step."""
        for projection in self.projections:
            projection.refresh()
        self.install_forwards(compiled)


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
