"""Edit records and edit streams: the facts a lifelong editor installs, in edit order.

One `EditRecord` shape serves every dataset: the prompt to edit and its new target, an optional
paraphrase (Generalization), and an unrelated prompt with its answer (Locality). Loaders read the
public formats unchanged, detected from the fields of the first record:

- MEND / WISE ZsRE: `src`, `alt`, `rephrase`, `loc` ("nq question: ..."), `loc_ans`, `answers`.
- KnowEdit ZsRE: `prompt`, `target_new`, `rephrase_prompt`, `locality.Relation_Specificity`.
- WISE / GRACE hallucination (SelfCheckGPT): `prompt`, `target_new`, `locality_prompt`,
  `locality_ground_truth`; no paraphrase.

`load_stream(edits, num_edits)` is the one place where `edits=` is resolved (a built-in name, a
path or a URL); the model and the task both call it, so they edit and evaluate the same records,
and the stream's digest lets the model check that they did.

Example:
    >>> stream = load_stream("zsre", 10)
    >>> stream.records[0].prompt, stream.records[0].target
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ce_bench.runtime import task_dir

BUILTIN = {
    "zsre": "zsre.json",
    "selfcheckgpt": "selfcheckgpt.json",
    "zsre_train": "zsre_train.json",  # MEND's training split (ce-bench train-mend)
}


class EditDataError(ValueError):
    """An edit file that cannot be read: names the file, the record and the field."""


@dataclass(frozen=True)
class EditRecord:
    """One fact to install: `prompt` should continue with `target` after the edit."""

    prompt: str
    target: str
    loc_prompt: str
    loc_answer: str
    rephrase: str | None = None
    subject: str = ""
    ground_truth: str = ""  # what the unedited world says, when the dataset gives it


@dataclass(frozen=True)
class EditStream:
    """The first `len(records)` records of a source, in edit order, with their digest."""

    source: str  # the `edits=` value it was loaded from
    records: tuple[EditRecord, ...]

    @property
    def digest(self) -> str:
        """A hash of the records' contents and order: equal streams edit the same facts."""
        text = json.dumps([asdict(r) for r in self.records], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def has_rephrase(self) -> bool:
        return all(r.rephrase is not None for r in self.records)

    def describe(self) -> dict[str, Any]:
        return {"edits": self.source, "num_edits": len(self.records), "digest": self.digest}


def load_stream(edits: str, num_edits: int | None = None) -> EditStream:
    """The first `num_edits` records (all if None) of a built-in set, a file path or a URL."""
    if not edits:
        raise EditDataError("edits= is empty; give a built-in set (zsre, selfcheckgpt) or a file")
    records = load_records(edits)
    if num_edits is not None:
        if isinstance(num_edits, bool) or not isinstance(num_edits, int) or num_edits < 1:
            raise EditDataError(f"num_edits must be a positive integer, got {num_edits!r}")
        if num_edits > len(records):
            raise EditDataError(
                f"num_edits={num_edits} but {edits!r} holds only {len(records)} records"
            )
        records = records[:num_edits]
    return EditStream(edits, tuple(records))


def load_records(edits: str) -> list[EditRecord]:
    """Every record of a built-in set, a local JSON / JSONL file or an http(s) URL."""
    if edits in BUILTIN:
        path = shipped_dir() / BUILTIN[edits]
        return parse_records(json.loads(path.read_text()), str(path))
    if edits.startswith(("http://", "https://")):
        with urllib.request.urlopen(edits, timeout=60) as response:  # noqa: S310 (user's URL)
            text = response.read().decode()
        return parse_records(_parse_json(text, edits), edits)
    path = Path(edits)
    if not path.is_file():
        raise EditDataError(
            f"edits={edits!r}: not a built-in set ({', '.join(BUILTIN)}), a file or a URL"
        )
    return parse_records(_parse_json(path.read_text(), edits), edits)


def shipped_dir() -> Path:
    return task_dir() / "lifelong" / "data"


def _parse_json(text: str, source: str) -> Any:
    """A JSON document, or JSON Lines (one record per line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise EditDataError(f"{source}: neither JSON nor JSON Lines ({err})") from err


def parse_records(raw: Any, source: str) -> list[EditRecord]:
    """Records of one of the supported formats, detected from the first record's fields."""
    if not isinstance(raw, list) or not raw:
        raise EditDataError(f"{source}: expected a non-empty JSON list of records")
    first = raw[0]
    if not isinstance(first, dict):
        raise EditDataError(f"{source}: record 0 is not a JSON object")
    for _, required, parse in FORMATS:
        if required <= set(first):
            return [parse(_Record(r, source, i)) for i, r in enumerate(raw)]
    raise EditDataError(
        f"{source}: record 0 has fields {sorted(first)}, which match no supported format: "
        + "; ".join(f"{name} ({', '.join(sorted(required))})" for name, required, _ in FORMATS)
    )


class _Record:
    """Field access on one raw record, with errors that name the file, record and field."""

    def __init__(self, raw: Any, source: str, index: int) -> None:
        if not isinstance(raw, dict):
            raise EditDataError(f"{source}: record {index} is not a JSON object")
        self.raw, self.source, self.index = raw, source, index

    def text(self, *path: str, optional: bool = False) -> str | None:
        value: Any = self.raw
        for key in path:
            if isinstance(value, list):
                value = value[0] if value else None
            if not isinstance(value, dict) or key not in value:
                if optional:
                    return None
                raise self.error(".".join(path), "missing")
            value = value[key]
        if isinstance(value, list):  # answer lists: the first answer
            value = value[0] if value else ""
        if not isinstance(value, str):
            raise self.error(".".join(path), f"expected a string, got {type(value).__name__}")
        return value

    def error(self, field: str, problem: str) -> EditDataError:
        return EditDataError(f"{self.source}: record {self.index}: field {field!r}: {problem}")


def _mend_zsre(r: _Record) -> EditRecord:
    return EditRecord(
        prompt=r.text("src"),
        target=r.text("alt"),
        rephrase=r.text("rephrase"),
        loc_prompt=r.text("loc"),
        loc_answer=r.text("loc_ans"),
        subject=r.text("subject", optional=True) or "",
        ground_truth=r.text("answers", optional=True) or "",
    )


def _knowedit_zsre(r: _Record) -> EditRecord:
    return EditRecord(
        prompt=r.text("prompt"),
        target=r.text("target_new"),
        rephrase=r.text("rephrase_prompt"),
        loc_prompt=r.text("locality", "Relation_Specificity", "prompt"),
        loc_answer=r.text("locality", "Relation_Specificity", "ground_truth"),
        subject=r.text("subject", optional=True) or "",
        ground_truth=r.text("ground_truth", optional=True) or "",
    )


def _hallucination(r: _Record) -> EditRecord:
    return EditRecord(
        prompt=r.text("prompt"),
        target=r.text("target_new"),
        loc_prompt=r.text("locality_prompt"),
        loc_answer=r.text("locality_ground_truth"),
        subject=r.text("subject", optional=True) or "",
    )


FORMATS: tuple[tuple[str, frozenset[str], Callable[[_Record], EditRecord]], ...] = (
    ("MEND/WISE ZsRE", frozenset({"src", "alt", "rephrase", "loc", "loc_ans"}), _mend_zsre),
    (
        "KnowEdit ZsRE",
        frozenset({"prompt", "target_new", "rephrase_prompt", "locality"}),
        _knowedit_zsre,
    ),
    ("WISE hallucination", frozenset({"prompt", "target_new", "locality_prompt"}), _hallucination),
)
