"""lm-eval's per-document samples (`--log_samples`), paired for ce-bench's statistics.

Beside `results_<stamp>.json` lm-eval writes one `samples_<task>_<stamp>.jsonl` per task: a line
per document and filter with `doc_id`, `doc_hash` and each metric's value for that document. Two
runs over the same documents are paired by `doc_id` (their `doc_hash` must agree); a paired task
holds both states in one run (`acc` and `acc_base` of the same document).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ce_bench.board.runs import BoardError, Run, with_suffix
from ce_bench.pairing import BASE_SUFFIX
from ce_bench.stats import PairedComparison, compare_paired, compare_weighted

# Corpus-level metrics lm-eval aggregates from per-document (loglikelihood, weight) pairs.
RATIO_METRICS = {
    "word_perplexity": lambda ll, n: math.exp(-ll / n),
    "byte_perplexity": lambda ll, n: math.exp(-ll / n),
    "bits_per_byte": lambda ll, n: -ll / n / math.log(2),
}


class SamplesMismatch(BoardError):
    """Two runs' samples that are not the same documents."""


@dataclass(frozen=True)
class TaskSamples:
    """One task's per-document values: `values[metric][i]` is document `doc_ids[i]`'s value (a
    number, or a (loglikelihood, weight) pair for RATIO_METRICS)."""

    path: Path
    doc_ids: list[int]
    hashes: list[str]
    values: dict[str, list[Any]]

    def by_doc(self) -> dict[int, int]:
        return {doc: i for i, doc in enumerate(self.doc_ids)}


def samples_of(run: Run) -> dict[str, TaskSamples]:
    """The samples files written with `run`'s results file (same timestamp), by task."""
    stamp = run.path.stem.removeprefix("results_")
    found = {}
    for path in sorted(run.path.parent.glob(f"samples_*_{stamp}.jsonl")):
        task = path.name.removeprefix("samples_").removesuffix(f"_{stamp}.jsonl")
        if task in run.scores:
            found[task] = read_samples(path)
    return found


class SamplesCache:
    """`samples_of` each run once (a board asks for the same run's samples many times)."""

    def __init__(self) -> None:
        self._by_path: dict[Path, dict[str, TaskSamples]] = {}

    def of(self, run: Run) -> dict[str, TaskSamples]:
        if run.path not in self._by_path:
            self._by_path[run.path] = samples_of(run)
        return self._by_path[run.path]


def read_samples(path: Path) -> TaskSamples:
    """Per-document metric values of one samples file, by metric (`acc`, or `acc,<filter>` for
    a filter other than `none`, as the results file names them)."""
    rows: dict[int, tuple[str, dict[str, Any]]] = {}
    try:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            sample = json.loads(line)
            doc = int(sample["doc_id"])
            filt = sample.get("filter", "none")
            _, metrics = rows.setdefault(doc, (str(sample.get("doc_hash", "")), {}))
            for name in sample.get("metrics", []):
                if name in sample:
                    metrics[name if filt == "none" else f"{name},{filt}"] = sample[name]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BoardError(f"{path}: not an lm-eval samples file ({err})") from err
    doc_ids = sorted(rows)
    names = {name for _, metrics in rows.values() for name in metrics}
    return TaskSamples(
        path,
        doc_ids,
        [rows[d][0] for d in doc_ids],
        {n: [rows[d][1].get(n) for d in doc_ids] for n in sorted(names)},
    )


def compare_runs(
    base: TaskSamples, candidate: TaskSamples, task: str, metric: str, higher_is_better: bool
) -> PairedComparison | None:
    """`metric` over the documents both runs scored, paired by doc_id; None when either run has
    no per-document value for it. A document whose hash differs is SamplesMismatch."""
    if metric not in base.values or metric not in candidate.values:
        return None
    theirs = candidate.by_doc()
    if set(theirs) != set(base.doc_ids):
        raise SamplesMismatch(
            f"{task}: the runs' samples hold different documents ({len(base.doc_ids)} vs"
            f" {len(theirs)}); evaluate both with the same --limit"
        )
    order = [theirs[d] for d in base.doc_ids]
    for doc, mine, j in zip(base.doc_ids, base.hashes, order, strict=True):
        if candidate.hashes[j] != mine:
            raise SamplesMismatch(
                f"{task}: document {doc} differs between the runs (doc_hash {mine[:12]} vs"
                f" {candidate.hashes[j][:12]}): they did not evaluate the same data"
            )
    other = [candidate.values[metric][j] for j in order]
    return _compare(base.values[metric], other, metric, higher_is_better)


def compare_in_run(
    samples: TaskSamples, metric: str, higher_is_better: bool
) -> PairedComparison | None:
    """`metric` against `<metric>_base` of the same documents of a paired task; None when the
    samples do not hold both."""
    base = with_suffix(metric, BASE_SUFFIX)
    if metric not in samples.values or base not in samples.values:
        return None
    return _compare(samples.values[base], samples.values[metric], metric, higher_is_better)


def _compare(
    base: list[Any], candidate: list[Any], metric: str, higher_is_better: bool
) -> PairedComparison | None:
    aggregate = RATIO_METRICS.get(metric.partition(",")[0])
    if all(_is_class_item(v) for v in (*base, *candidate)):  # the erasure tasks' acc, cacc, ...
        base, candidate = _class_values(base, metric), _class_values(candidate, metric)
    if aggregate is not None and all(_is_pair(v) for v in (*base, *candidate)):
        a, b = np.array(base, dtype=float), np.array(candidate, dtype=float)
        return compare_weighted(a[:, 0], b[:, 0], a[:, 1], aggregate)
    if not all(_is_number(v) for v in (*base, *candidate)):
        return None  # per-document values ce-bench cannot pair (e.g. BLEU's references)
    return compare_paired([float(v) for v in base], [float(v) for v in candidate], higher_is_better)


def _is_class_item(value: Any) -> bool:
    """An erasure document's (class, [target], [value]): one erased class per run."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[1], list)
        and len(value[1]) == 1
        and isinstance(value[2], list)
        and len(value[2]) == 1
    )


def _class_values(items: list[Any], metric: str) -> list[float]:
    """The documents a class metric averages (acc, conf: of the erased class; cacc, cconf: of
    the other classes), each its value, in document order."""
    own = metric.partition(",")[0] not in ("cacc", "cconf")
    return [float(v[2][0]) for v in items if (v[0] == v[1][0]) == own]


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # bools too: a 0/1 metric
