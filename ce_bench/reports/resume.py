"""Resuming a report: what an interrupted run of the same settings already wrote.

A report writes its `results.json` after every cell with the settings that decide a cell's
result (`settings_of`: the config without where it writes and whether it resumes). A new run
with `resume` and the same settings keeps those entries and runs only the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


def settings_of(config: Any) -> dict[str, Any]:
    """A report config's settings as results.json records them (JSON types; no out, resume)."""
    return json.loads(json.dumps({**asdict(config), "out": None, "resume": None}, default=str))


def saved_entries(config: Any, key: str) -> list[dict[str, Any]]:
    """`key`'s entries of `config.out/results.json`, when resuming and its settings match."""
    path = config.out / "results.json"
    if not (config.resume and path.is_file()):
        return []
    saved = json.loads(path.read_text())
    return saved[key] if saved.get("settings") == settings_of(config) else []
