"""The synthetic private-fact set of the privacy-erasure benchmark (Knowledge Microscope's
PrivacyParaRel).

The project ships `tasks/lifelong/data/privacy_facts.json` (schema in that folder's README):
`facts`, invented people's phone numbers, email addresses and home addresses, each with five
prompts that end just before the value (prompt 0 is the phrasing the model is trained and edited
on, prompts 1-4 are paraphrases), and `controls`, other facts the erasure must leave alone. A file
of the same shape can replace it anywhere a `path` is accepted.

Example:
    >>> data = load_fact_set()
    >>> [f.value for f in data.select(["pf-001"])]
    ['+1 415 555 0134']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ce_bench.runtime import task_dir

__all__ = ["Fact", "FactSet", "default_facts_file", "load_fact_set"]


def default_facts_file() -> Path:
    """The shipped set (package data of `ce_bench.tasks`)."""
    return task_dir() / "lifelong" / "data" / "privacy_facts.json"


@dataclass(frozen=True)
class Fact:
    """One fact: `prompts[0]` + " " + `value` is what the model is trained and edited on."""

    id: str
    person: str
    attribute: str
    value: str
    prompts: tuple[str, ...]

    @property
    def training_prompt(self) -> str:
        return self.prompts[0]

    @property
    def paraphrases(self) -> tuple[str, ...]:
        return self.prompts[1:]


@dataclass(frozen=True)
class FactSet:
    """The facts to erase and the controls whose predictions must not change."""

    facts: tuple[Fact, ...]
    controls: tuple[Fact, ...]
    digest: str  # of the file's content, for caches and provenance

    def select(self, ids: Sequence[str] | None) -> tuple[Fact, ...]:
        """The facts with these ids, in the given order; None or empty means every fact."""
        if not ids:
            return self.facts
        by_id = {f.id: f for f in self.facts}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(
                f"unknown fact id(s) {', '.join(unknown)}; the set has {self.facts[0].id} ..."
                f" {self.facts[-1].id} (controls, pc-*, are never erased)"
            )
        return tuple(by_id[i] for i in dict.fromkeys(ids))

    def training_pairs(self) -> list[tuple[str, str]]:
        """(training prompt, value) of every fact and control: what injection teaches."""
        return [(f.training_prompt, f.value) for f in (*self.facts, *self.controls)]


def load_fact_set(path: str | Path | None = None) -> FactSet:
    """Read and check a fact file (default: the shipped one); errors name the record and field."""
    source = Path(path) if path is not None else default_facts_file()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: fact file not found")
    text = source.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(raw, dict) or set(raw) != {"facts", "controls"}:
        raise ValueError(f'{source}: expected an object with exactly "facts" and "controls"')
    facts = tuple(_fact(r, source, f"facts[{i}]", 2) for i, r in enumerate(raw["facts"]))
    controls = tuple(_fact(r, source, f"controls[{i}]", 1) for i, r in enumerate(raw["controls"]))
    if not facts:
        raise ValueError(f"{source}: no facts")
    ids = [f.id for f in (*facts, *controls)]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"{source}: duplicated id(s) {', '.join(duplicated)}")
    return FactSet(facts, controls, hashlib.sha256(text.encode()).hexdigest()[:16])


def _fact(record: Any, source: Path, where: str, min_prompts: int) -> Fact:
    if not isinstance(record, dict):
        raise ValueError(f"{source}: {where}: expected an object")
    fields = ("id", "person", "attribute", "value", "prompts")
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"{source}: {where}: missing field {missing[0]!r}")
    for name in fields[:4]:
        if not isinstance(record[name], str) or not record[name].strip():
            raise ValueError(f"{source}: {where}.{name}: expected a non-empty string")
    prompts = record["prompts"]
    if (
        not isinstance(prompts, list)
        or len(prompts) < min_prompts
        or not all(isinstance(p, str) and p.strip() for p in prompts)
    ):
        raise ValueError(
            f"{source}: {where}.prompts: expected at least {min_prompts} non-empty strings"
        )
    return Fact(
        record["id"], record["person"], record["attribute"], record["value"], tuple(prompts)
    )
