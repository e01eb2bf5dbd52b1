"""generate's forwards, eager or torch.compile'd, and the gate that lets threads share the process safely.

A compiled decode step is the model's forward compiled once per model for static-shape steps. On the CPU this
fuses the small ops of a decode step (a few per cent on SmolLM2-135M); on CUDA, reduce-overhead mode captures
the step in a CUDA graph. Compiled graphs may bake in weights: after changing a model's weights in place, call
forget_compiled(model).

torch.compile is not safe beside other threads while it traces: dynamo may (re)compile inside any call (the
first, a new static-cache length, a guard that fails), and a compilation running beside another compiled or
eager forward in this process broke both (measured with transformers 5 and torch 2.13: guard-creation errors,
and transformers' kernel context variables mixed up between threads). So GATE lets eager forwards run
together, and a compiled step run alone, never beside either kind. Without compiled calls no thread waits.
"""
from __future__ import annotations

import contextlib
import threading
import weakref

import torch

STATIC_CACHE_BUCKET = 128  # static caches round their length up to this, so one compiled graph serves many calls


class _Gate:
    """A readers-writer lock that prefers writers: eager forwards share it, compiled steps hold it alone."""

    def __init__(self):
        self._condition = threading.Condition()
        self._eager = 0
        self._compiled = False
        self._waiting = 0
        self.used = False  # set by the first compiled step: until then eager forwards skip the lock

    @contextlib.contextmanager
    def eager(self):
        if not self.used:
            yield
            return
        with self._condition:
            self._condition.wait_for(lambda: not self._compiled and not self._waiting)
            self._eager += 1
        try:
            yield
        finally:
            with self._condition:
                self._eager -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def compiled(self):
        with self._condition:
            self.used = True
            self._waiting += 1
            self._condition.wait_for(lambda: not self._compiled and not self._eager)
            self._waiting -= 1
            self._compiled = True
        try:
            yield
        finally:
            with self._condition:
                self._compiled = False
                self._condition.notify_all()


GATE = _Gate()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def decode_step(model, compiled: bool):
    """The decode-step forward of `model`: its own (eager), or its forward compiled once per model; either
    runs through GATE."""
    if not compiled:
        return _Gated(model, GATE.eager)
    function = _COMPILED.get(model)
    if function is None:
        if _device_of(model).type == "cuda":
            compiled_forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
        else:
            # No weight freezing: with a StaticCache passed in, frozen graphs baked the cache's position
            # counter in as a constant (torch 2.13) and indexed out of bounds on the next call.
            compiled_forward = torch.compile(model.forward, dynamic=False)
        function = _Gated(compiled_forward, GATE.compiled)
        _COMPILED[model] = function
    return function


class _Gated:
    """`function` called inside one side of the gate (GATE.eager or GATE.compiled)."""

    def __init__(self, function, side):
        self.function, self.side = function, side

    def __call__(self, **kwargs):
        with self.side():
            return self.function(**kwargs)


def forget_compiled(model) -> None:
    """Drops the compiled decode step of `model` (needed after its weights change)."""
    _COMPILED.pop(model, None)
