"""The KV cache under either of transformers' names: the one place that knows both.

transformers 5.24 renamed the forward/generate argument `past_key_values` to `cache` (the old
name is accepted, with a warning, until 5.40), and generation now passes `cache`. Code that reads
or passes the cache goes through here, so a rename breaks one module, loudly, in its tests,
instead of silently editing the wrong tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

CACHE_NAMES = ("cache", "past_key_values")  # the new name first


def cache_reader(model: nn.Module) -> Callable[[tuple, dict[str, Any]], Any]:
    """A function of a forward call's (args, kwargs) that returns its KV cache, or None.

    The cache may arrive under either name or positionally (at its place in the signature of
    `model.forward`, found once here).
    """
    parameters = list(inspect.signature(model.forward).parameters)
    index = next((parameters.index(n) for n in CACHE_NAMES if n in parameters), None)

    def read(args: tuple, kwargs: dict[str, Any]) -> Any:
        for name in CACHE_NAMES:
            if kwargs.get(name) is not None:
                return kwargs[name]
        return args[index] if index is not None and index < len(args) else None

    return read


def cache_length(cache: Any) -> int:
    """Tokens already held by `cache`: a transformers Cache, a legacy tuple of (key, value)
    per layer (keys shaped (batch, heads, seq, dim)), or None."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    raise TypeError(f"cannot tell the length of a KV cache of type {type(cache).__name__}")


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """`{name: cache}` under the name `model.forward` declares (no deprecation warning)."""
    parameters = inspect.signature(model.forward).parameters
    name = next((n for n in CACHE_NAMES if n in parameters), CACHE_NAMES[0])
    return {name: cache}


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
