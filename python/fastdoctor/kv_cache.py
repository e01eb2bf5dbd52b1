"""The one compatibility point for transformers' KV-cache keyword.

transformers 5.2x renamed the forward argument and output field `past_key_values` to `cache`, and warns on
the old name until 5.40 removes it; 5.17 (the GPU machines') knows only `past_key_values`. Every forward that
passes or reads a cache goes through these two functions, which ask the model class which name it takes.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters  # follows the deprecation wrapper
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """{keyword: cache} for model(...), under the name this model's transformers takes."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return {_cache_keyword(type(inner)): cache}


def output_cache(output):
    """The KV cache a forward with use_cache=True returned, under either field name."""
    names = {field.name for field in dataclasses.fields(output)}
    return output.cache if "cache" in names else output.past_key_values
