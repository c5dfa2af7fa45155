"""Prompt + golden answer data for locating (Unified Concept Editing A.2: locate with "prompt +
golden answer" data); the batches and losses over it live in `ce_bench.scoring`."""

from __future__ import annotations

from collections.abc import Sequence

from ce_bench.artifacts import data_hash
from ce_bench.emotions import Prompt


def golden_pairs(prompts: Sequence[Prompt]) -> list[tuple[str, str]]:
    return [(p.text, p.golden) for p in prompts]


def prompts_hash(prompts: Sequence[Prompt]) -> str:
    """The provenance hash of the prompt + golden answer pairs a method located from."""
    return data_hash(*(p.text + "\t" + p.golden for p in prompts))
