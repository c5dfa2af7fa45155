"""`ce_perplexity`: perplexity of held-out text, unedited and edited, from one run.

The side effect NeuronLens reports next to erasure (Table 4: delta PPL). Each document is scored
twice by rolling loglikelihood, intervention OFF and ON (`ce_bench.pairing`). Offline, the
documents are the sections of `data/heldout.txt` (encyclopedic prose the project wrote, in
wikitext-2's raw format); `--metadata '{"data_source": "hub"}'` uses wikitext-2-raw-v1's test split.

Metrics: word_perplexity and bits_per_byte of the edited model, `*_base` of the unedited one,
and `word_perplexity_delta` = edited - unedited word perplexity.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import datasets
from ce_bench.tasks.paired.tasks import PairedScoring

HELD_OUT = Path(__file__).parent / "data" / "heldout.txt"


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """Held-out documents (`custom_dataset` loader): shipped sections or wikitext-2 (hub)."""
    source = metadata.get("data_source", "shipped")
    if source == "hub":
        wiki = datasets.load_dataset("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1")
        texts = [doc["page"] for doc in wiki["test"]]
    elif source == "shipped":
        texts = sections(HELD_OUT.read_text())
    else:
        raise ValueError(f"data must be shipped or hub, got {source!r}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": t} for t in texts])})


def sections(text: str) -> list[str]:
    """Split wikitext-style text at its top-level `= Title =` lines, titles kept."""
    parts = re.split(r"(?m)^(?== [^=].* =\s*$)", text)
    return [p.strip() + "\n" for p in parts if p.strip()]


class PairedPerplexity(PairedScoring):
    """Rolling loglikelihood of each document, OFF (idx 0) and ON (idx 1)."""

    def process_results(self, doc: dict, results: list[float]) -> dict[str, Any]:
        base, edited = results
        text = self.doc_to_target(doc)
        words, size = self.count_words(text), self.count_bytes(text)
        return {
            "word_perplexity": (edited, words),
            "word_perplexity_base": (base, words),
            "word_perplexity_delta": (base, edited, words),
            "bits_per_byte": (edited, size),
            "bits_per_byte_base": (base, size),
        }


def perplexity_delta(items: list[tuple[float, float, int]]) -> float:
    """Edited minus unedited word perplexity over all documents."""
    words = sum(w for _, _, w in items)
    base = math.exp(-sum(b for b, _, _ in items) / words)
    return math.exp(-sum(e for _, e, _ in items) / words) - base
