"""One forward for the patient and every LoRA doctor of it (multi-LoRA batching, as punica and S-LoRA do).

The patient's base weights are the same in all of these models; only the low-rank deltas differ. So generate
stacks the rows as segments [patient; doctor 1; doctor 2; ...], each B rows, and runs them through one
weight-sharing copy of the patient in which every projection that some doctor adapts adds, to each doctor's
segment only, that doctor's delta scale * (x @ A.T) @ B.T. The base weights are read once per step for all
models, and the stacked batch keeps one KV cache. Segment 0 (the patient) gets no delta, so its rows compute
exactly the patient's plain forward.

plan(patient, doctors) decides, in one place, which doctors join: every AdapterDoctor (fastdoctor.adapters)
of this patient's base weights, and every peft LoRA model whose base weights have the patient's fingerprint,
dtype and device (a snapshot of its current LoRA tensors). The decision is by fingerprint, not by tensor
identity, so a doctor loaded against a reloaded, equal patient joins too; every other doctor runs as a separate
model, and the plan says why.

stacked(patient, adapters, compiled) lends a stacked copy for one call. Copies are pooled per patient and per
layout (which projections, ranks and scales each segment has; eager or compiled), a copy is lent to one call
at a time, the doctors' current LoRA tensors are copied into it at every loan (never stale), and at most
MAX_IDLE idle copies are kept per patient.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import _C, weights
from .adapters import AdapterDoctor, LoraProjection, is_lora_model, snapshot
from .compiled import forget_compiled

MAX_IDLE = 4  # idle stacked copies kept per patient (each is module objects and LoRA buffers, not weights)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which doctors run inside the patient's forward (`stacked`, in segment order 1, 2, ..., with their
    `adapters`) and which run as separate models (`separate`, with `reasons[i]` saying why)."""

    stacked: tuple[int, ...]
    adapters: tuple[AdapterDoctor, ...]
    separate: tuple[int, ...]
    reasons: Mapping[int, str]

    def describe(self) -> str:
        lines = [f"doctors[{i}]: in the patient's stacked forward (segment {k + 1})"
                 for k, i in enumerate(self.stacked)]
        lines += [f"doctors[{i}]: a separate model: {self.reasons[i]}" for i in self.separate]
        return "\n".join(sorted(lines))


_WARNED: weakref.WeakSet = weakref.WeakSet()


def _warn_once(doctor: nn.Module, index: int, reason: str) -> None:
    if doctor in _WARNED:
        return
    _WARNED.add(doctor)
    warnings.warn(f"doctors[{index}] is a LoRA model of the patient's base weights but runs as a separate model "
                  f"({reason}): same tokens, without the shared-base speed-up", RuntimeWarning, stacklevel=4)


def _first(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def plan(patient: nn.Module, doctors: Sequence) -> Plan:
    """The plan for `doctors` (AdapterDoctors and HF causal LMs, peft LoRA models among them) with `patient`.
    An AdapterDoctor of another base is a ValueError; a peft doctor of the patient's base that cannot be stacked
    gets one RuntimeWarning."""
    patient_fingerprint = functools.cache(lambda: weights.fingerprint(patient))  # only where a doctor needs it
    sharded = functools.cache(lambda: any(weights.is_sharded(p) for p in patient.parameters()))
    base = _first(patient)
    stacked, adapters, separate, reasons = [], [], [], {}
    for index, doctor in enumerate(doctors):
        if is_lora_model(doctor) and sharded():
            raise ValueError(f"doctors[{index}]: a peft LoRA model of a tensor-parallel patient (DTensor weights) "
                             "cannot be stacked; save it and load it with fastdoctor.load_doctor(path, patient), "
                             "which shards its LoRA tensors by the patient's plan")
        if isinstance(doctor, AdapterDoctor):
            if doctor.base_fingerprint != patient_fingerprint():
                raise ValueError(f"doctors[{index}]: {doctor!r} adapts another base model than this patient (the "
                                 "base-weight fingerprints differ); use it with the patient it was trained on")
            stacked.append(index)
            adapters.append(doctor)
            continue
        if not (isinstance(doctor, nn.Module) and callable(getattr(doctor, "get_output_embeddings", None))):
            raise TypeError(f"doctors[{index}]: expected an AdapterDoctor or an HF causal LM, got "
                            f"{type(doctor).__name__}")
        if not is_lora_model(doctor):
            separate.append(index)
            reasons[index] = "not a LoRA model of the patient"
            continue
        if weights.fingerprint(doctor) != patient_fingerprint():
            separate.append(index)
            reasons[index] = "its base weights are another model's (the fingerprints differ)"
            continue
        adapter, why = snapshot(doctor)
        theirs = _first(doctor.get_base_model())
        if adapter is None:
            reason = why
        elif theirs.dtype != base.dtype:
            reason = f"its base weights are {theirs.dtype}, the patient's {base.dtype}"
        elif theirs.device != base.device:
            reason = f"its base weights are on {theirs.device}, the patient's on {base.device}"
        else:
            stacked.append(index)
            adapters.append(adapter)
            continue
        separate.append(index)
        reasons[index] = reason
        _warn_once(doctor, index, reason)
    return Plan(tuple(stacked), tuple(adapters), tuple(separate), reasons)


class StackedLoRA:
    """The forward of one projection of the stacked copy: the base projection, then per-segment LoRA deltas
    (rows [s * rows, (s + 1) * rows) of the stacked batch get adapter s's delta) in one fused call
    (ops.segmented_lora_) for every adapter. Mirrors peft's unmerged LoRA forward (a float32 delta, scaled,
    then added), so a segment's output equals that doctor's own peft forward within float32 rounding.

    The kernel reads the adapter weights in `weight_dtype`: bfloat16 for a bfloat16 module, else float32. A decode
    step is memory-bound, and float32 LoRA weights of two rank-8 doctors on every projection are 7% of the bytes
    of the bf16 patient's own weights; bf16 halves that (punica and vLLM keep LoRA weights in the model's dtype).
    It is exact for adapters saved in bf16 (the bundled doctors); others are rounded once to bf16, as the base
    weights were. The accumulation stays float32. The weights live in buffers of this projection's own, which
    every loan refills from the doctors' current tensors.

    It is installed as the copy's module's own `forward` rather than as a wrapper module: this runs once per
    projection per step, and a module call of its own cost about 12% of the LoRA time at B = 1. For an
    nn.Linear that forward is the fused op linear_segmented_lora with everything but x bound, so no Python frame
    runs per projection. Eagerly it is bound in C++ (_C.BoundLinearSegmentedLora: the lists are converted once,
    each call is one typed dispatcher call; through torch.ops the op parsed its four lists on every call, 2-3 us
    of a ~26 us bf16 projection); for torch.compile it is the op with functools.partial, which dynamo traces.
    Other modules (GPT-2's Conv1D) call the base forward, then segmented_lora_. The stacked batch is
    `segment_count` equal segments, so each call reads its rows per segment off x."""

    def __init__(self, module: nn.Module, layout: dict[int, LoraProjection], segment_count: int):
        self.base_forward = module.forward
        self.segments = sorted(layout)
        self.scales = [layout[s].scale for s in self.segments]
        self.segment_count = segment_count
        self.parallel, self.weight, span, self.group = _tensor_parallel_layout(module.weight)
        bias = module.bias if isinstance(module, nn.Linear) else None
        self.bias = weights.local_tensor(bias) if bias is not None else None
        self.weight_dtype = torch.bfloat16 if self.weight.dtype == torch.bfloat16 else torch.float32
        self.in_span = span if self.parallel == "row" else None  # the slice of A's columns this rank holds
        self.out_span = span if self.parallel == "col" else None  # the slice of B's rows
        device = self.weight.device
        self.shrink = [torch.empty(_part(layout[s].a, None, self.in_span).shape, dtype=self.weight_dtype,
                                   device=device) for s in self.segments]
        self.expand = [torch.empty(_part(layout[s].b, self.out_span, None).shape[::-1], dtype=self.weight_dtype,
                                   device=device) for s in self.segments]

    @torch.no_grad()
    def load(self, sources: dict[int, LoraProjection]) -> None:
        """Copies the doctors' LoRA weights into the layout the kernel reads (lora_A as is, lora_B transposed),
        each rank's part of them for a tensor-parallel projection."""
        for segment, shrink, expand in zip(self.segments, self.shrink, self.expand):
            shrink.copy_(_part(sources[segment].a, None, self.in_span))
            expand.copy_(_part(sources[segment].b, self.out_span, None).t())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        torch.ops.fastdoctor.segmented_lora_(y, x.contiguous(), self.shrink, self.expand, self.scales, self.segments,
                                             x.shape[0] // self.segment_count)  # the op itself: no Python wrapper
        return y

    def rowwise(self, x: torch.Tensor) -> torch.Tensor:
        """A row-parallel projection (its input split by columns across ranks): this rank's partial product and
        partial deltas, then one all-reduce for both, then the bias once (transformers' local inference path,
        with the deltas folded into its all-reduce)."""
        if torch.is_grad_enabled():
            raise RuntimeError("the stacked forward of a tensor-parallel patient runs without gradients only")
        y = nn.functional.linear(x, self.weight)
        torch.ops.fastdoctor.segmented_lora_(y, x.contiguous(), self.shrink, self.expand, self.scales, self.segments,
                                             x.shape[0] // self.segment_count)
        torch.distributed.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias

    def forward_of(self, module: nn.Module, compiled: bool):
        """The callable to install as `module.forward` for an eager or a torch.compile'd decode step (dynamo
        cannot trace the C++-bound one). The buffers are bound once: load() refills them in place. A
        tensor-parallel projection computes on its local shards (column-parallel: this rank's output columns,
        no communication; row-parallel: rowwise())."""
        if self.parallel == "row":
            return self.rowwise
        if type(module) is not nn.Linear:
            return self
        args = (self.weight, self.bias, self.shrink, self.expand, self.scales, self.segments, self.segment_count)
        if compiled:
            return functools.partial(torch.ops.fastdoctor.linear_segmented_lora.default, *args)
        return _C.BoundLinearSegmentedLora(*args)


def _tensor_parallel_layout(weight: torch.Tensor):
    """("col" | "row" | None, the local weight, (start, stop) of this rank's slice of the sharded dimension, the
    process group) of a projection weight [out, in]; a column-parallel weight is split by output rows (Shard(0)),
    a row-parallel one by input columns (Shard(1)), as torch.chunk splits them."""
    if not weights.is_sharded(weight):
        return None, weight, None, None
    from torch.distributed.tensor import Shard

    placement, local, mesh = weight.placements[0], weight.to_local(), weight.device_mesh
    if len(weight.placements) != 1 or not isinstance(placement, Shard):
        return None, weight.full_tensor(), None, None  # replicated on this 1-D mesh: every rank holds it whole
    dim = placement.dim % weight.dim()
    size, world, rank = weight.shape[dim], mesh.size(), mesh.get_local_rank()
    chunk = -(-size // world)
    start = min(rank * chunk, size)
    span = (start, min(start + chunk, size))
    if span[1] - span[0] != local.shape[dim]:
        raise ValueError(f"a tensor-parallel weight of shape {list(weight.shape)} holds {local.shape[dim]} of "
                         f"dimension {dim} on rank {rank}, not torch.chunk's {span[1] - span[0]}")
    return ("col" if dim == 0 else "row"), local, span, mesh.get_group()


def _part(tensor: torch.Tensor, rows, columns) -> torch.Tensor:
    """tensor[rows[0]:rows[1], columns[0]:columns[1]], a span of None meaning all."""
    if rows is not None:
        tensor = tensor[rows[0]: rows[1]]
    if columns is not None:
        tensor = tensor[:, columns[0]: columns[1]]
    return tensor


def _layout(adapters: Sequence[AdapterDoctor]) -> tuple:
    """What a stacked copy is built for: per segment, its projections with their shapes and scales."""
    return tuple(tuple((name, tuple(p.a.shape), tuple(p.b.shape), p.scale) for name, p in
                       sorted(adapter.projections.items())) for adapter in adapters)


def _base_key(patient: nn.Module) -> tuple:
    """The patient's current tensors: a copy built over tensors the patient no longer holds (after .to() or a
    reassigned weight) is never lent again."""
    return tuple((weights.local_tensor(t).data_ptr(), t.dtype, t.device) for t in patient.parameters())


class SharedBase:
    """The stacked model for `patient` and adapters of `layout`: `model` is an HF causal LM over
    (1 + K) * rows stacked rows, whose projections run eagerly or for torch.compile (`compiled`)."""

    def __init__(self, patient: nn.Module, adapters: Sequence[AdapterDoctor], compiled: bool):
        self.model = weights.weight_sharing_copy(patient).eval()
        self.projections: list[tuple[str, StackedLoRA]] = []
        for name in sorted({name for adapter in adapters for name in adapter.projections}):
            layout = {k + 1: a.projections[name] for k, a in enumerate(adapters) if name in a.projections}
            module = self.model.get_submodule(name)
            stacked = StackedLoRA(module, layout, 1 + len(adapters))
            module.forward = stacked.forward_of(module, compiled)  # this copy's module: the patient's never change
            self.projections.append((name, stacked))

    def load(self, adapters: Sequence[AdapterDoctor]) -> None:
        for name, stacked in self.projections:
            stacked.load({k + 1: a.projections[name] for k, a in enumerate(adapters) if name in a.projections})


@dataclasses.dataclass(eq=False)
class _Entry:
    key: tuple
    built: SharedBase
    busy: bool = True
    used: int = 0


_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # patient -> [_Entry]
_LOCK = threading.Lock()
_CLOCK = itertools.count()


@contextlib.contextmanager
def stacked(patient: nn.Module, adapters: Sequence[AdapterDoctor], compiled: bool = False):
    """`with stacked(patient, adapters, compiled) as model:` an HF causal LM over [patient; adapter 1; ...]
    segments of equal rows, holding the adapters' current LoRA weights, lent to this call alone."""
    if compiled and any(weights.is_sharded(p) for p in patient.parameters()):
        raise ValueError("compile: the stacked forward of a tensor-parallel patient runs eagerly; pass compile=False")
    key = (compiled, _layout(adapters), _base_key(patient))
    with _LOCK:
        entries = _POOL.setdefault(patient, [])
        entry = next((e for e in entries if not e.busy and e.key == key), None)
        if entry is not None:
            entry.busy = True
    if entry is None:
        # Normal tensors even when built inside generate's inference mode: a later loan outside it (scoring
        # under no_grad) must be able to refill the buffers, which is not allowed for inference tensors.
        with torch.inference_mode(False):
            entry = _Entry(key, SharedBase(patient, adapters, compiled))
        with _LOCK:
            entries.append(entry)
    try:
        entry.built.load(adapters)
        yield entry.built.model
    finally:
        with _LOCK:
            entry.busy, entry.used = False, next(_CLOCK)
            idle = sorted((e for e in entries if not e.busy), key=lambda e: e.used)
            stale = [e for e in idle if e.key[2] != key[2]]  # copies over tensors the patient no longer holds
            for old in stale + [e for e in idle[: max(len(idle) - MAX_IDLE, 0)] if e not in stale]:
                entries.remove(old)
                forget_compiled(old.built.model)  # its compiled step holds the copy: drop both


def teacher_forced_logits(patient: nn.Module, doctors: Sequence, batch) -> list[torch.Tensor]:
    """[patient logits, doctor 1 logits, ...] over a sequences.SequenceBatch (run_lm's forward: the states
    s_0..s_L), as generate plans them: the patient and its stacked doctors in one forward, every other doctor in
    its own."""
    from .sequences import SequenceBatch, run_lm

    chosen = plan(patient, doctors)
    logits: list[torch.Tensor] = [None] * (1 + len(doctors))
    if chosen.adapters:
        segments = 1 + len(chosen.adapters)
        stacked_batch = SequenceBatch(*(t.repeat(segments, *([1] * (t.dim() - 1))) for t in dataclasses.astuple(batch)))
        with stacked(patient, chosen.adapters) as model:
            parts = run_lm(model, stacked_batch).logits.chunk(segments)
        logits[0] = parts[0]
        for part, index in zip(parts[1:], chosen.stacked):
            logits[index + 1] = part
    else:
        logits[0] = run_lm(patient, batch).logits
    for index in chosen.separate:
        logits[index + 1] = run_lm(doctors[index], batch).logits
    return logits


def tensor_parallel_group(model: nn.Module):
    """The process group of a model sharded by a tensor-parallel plan (its first DTensor weight's mesh), else
    None. Every rank of it decodes the same tokens."""
    for parameter in model.parameters():
        if weights.is_sharded(parameter):
            return parameter.device_mesh.get_group()
    return None


def pooled(patient: nn.Module) -> int:
    """How many stacked copies of `patient` are kept (lent or idle)."""
    with _LOCK:
        return len(_POOL.get(patient, ()))
