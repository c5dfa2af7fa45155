"""Judge backends by name, and building one from option strings (lm-eval metadata/model_args).

Registering a backend is decorating its class; there is no list of names to extend elsewhere.
Options are checked against the backend's own `Options` dataclass, so a misspelt option is an
error that lists the known ones instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from ce_bench.judge.base import Judge

JUDGES: dict[str, type[Judge]] = {}
METADATA_PREFIX = "judge_"


def register_judge(cls: type[Judge]) -> type[Judge]:
    """Class decorator: make a backend available to `make_judge` by its `name`."""
    if cls.name in JUDGES:
        raise ValueError(f"judge backend {cls.name!r} is already registered")
    JUDGES[cls.name] = cls
    return cls


def make_judge(name: str, **options: Any) -> Judge:
    """The judge backend `name` built with `options` (values may be strings, as from a CLI).

    Example:
        >>> judge = make_judge("openai", model="gpt-4o", concurrency="4")
    """
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}")
    cls = JUDGES[name]
    return cls(_build_options(cls, options))


def judge_from_metadata(metadata: Mapping[str, Any], default: str) -> Judge:
    """The judge named by `metadata["judge"]` (else `default`), with every `judge_<option>` key.

    This is how a task reads lm-eval's `--metadata` / model_args, e.g.
    `judge=openai,judge_model=gpt-4o,judge_base_url=http://127.0.0.1:8000/v1,judge_concurrency=8`.
    Keys without the `judge` prefix belong to others and are left alone.
    """
    options = {
        key.removeprefix(METADATA_PREFIX): value
        for key, value in metadata.items()
        if key.startswith(METADATA_PREFIX)
    }
    return make_judge(str(metadata.get("judge", default)), **options)


def _build_options(cls: type[Judge], raw: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls.Options)
    known = [field.name for field in dataclasses.fields(cls.Options)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for judge {cls.name!r} "
            f"(given as {METADATA_PREFIX}{unknown[0]} in metadata); known: {', '.join(known)}"
        )
    values = {key: _coerce(key, value, hints[key]) for key, value in raw.items()}
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"judge {cls.name!r}: {err}") from err


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Turn a string from a CLI into the option's declared type (str, int, float, or X | None)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if not isinstance(value, str):
        return value
    if type(None) in allowed and value.strip().lower() in ("", "none", "null"):
        return None
    if str in allowed:
        return value
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(value)
            except ValueError:
                continue
    raise ValueError(f"judge option {key}={value!r} is not a valid {hint}")
