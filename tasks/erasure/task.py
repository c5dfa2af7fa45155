"""`erasure_<dataset>`: how much erasing one class hurts it and the other classes (NeuronLens 5.3).

Each test example is a few-shot prompt (`ce_bench.classification`) scored against every label
word, intervention OFF and ON in the same run (`ce_bench.pairing`). The prediction is the label
with the highest loglikelihood; the confidence is the probability of the true label among the
label words (softmax over their loglikelihoods).

Metrics, for the edited model, the unedited one (`*_base`) and their difference (`*_delta`):
    acc, conf    accuracy and confidence on the target class's examples
    cacc, cconf  the same per other class, averaged over the other classes

Options (`--metadata` JSON; lm-eval merges model_args in too):
    target: the class to erase, by name or label word ("Sports"), or "all": every class in
        turn, each with its own artifact (`intervention=a+b+...`, one located per class), the
        metrics aggregated over classes with NeuronLens's 10% trimmed mean. By default the class
        the intervention artifacts were located for.
    data_source: shipped (default: the project's offline set) or hub (the dataset's hub id).
    shots: labelled examples in each prompt (default 4).
    only_correct: keep only examples the unedited model classifies correctly (Appendix H).
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import numpy as np
from ce_bench.tasks.paired.tasks import PairedScoring, copy_request
from lm_eval.api.instance import Instance

from ce_bench.artifacts import load_artifact
from ce_bench.classification import (
    DEFAULT_SHOTS,
    ClassDataset,
    choose_shots,
    dataset,
    few_shot_prompt,
    load_examples,
)
from ce_bench.pairing import BASE_SUFFIX, for_target

NAN = float("nan")


ALL = "all"
Item = tuple[str, tuple[str, ...], tuple[float, ...]]  # (class, targets, value per target)
TRIM = 0.1  # NeuronLens Table 3: class-level 10% trimmed means


def target_classes(data: ClassDataset, target: str | None, located: set[str]) -> list[int]:
    """The erased classes: `target` from the metadata (or every class), else the one class the
    artifacts were located for (`located`)."""
    target = target or (next(iter(located)) if len(located) == 1 else None)
    if not target:
        raise ValueError(
            f"set the class to erase: --metadata '{{\"target\": ...}}' with one of"
            f' {", ".join(data.classes)}, or "all"'
        )
    if str(target).lower() == ALL:
        return list(range(len(data.classes)))
    return [data.class_index(str(target))]


def located_classes(data: ClassDataset, intervention: str | None) -> set[str]:
    """The classes of `data` (by their names) that the artifacts of `intervention` (a+b+...)
    were located for; each artifact is read once, here."""
    reports = [load_artifact(p).provenance.report for p in (intervention or "").split("+") if p]
    return {
        data.classes[data.class_index(r["target"])]
        for r in reports
        if r.get("dataset") == data.name and r.get("target")
    }


def check_located(data: ClassDataset, targets: list[str], located: set[str]) -> None:
    """Fail while the task is built, before any request is scored, when some erased class has
    no artifact located for it (edited_hf would find out only after the unedited half ran)."""
    missing = [t for t in targets if t not in located]
    if missing:
        raise ValueError(
            f"erasure_{data.name}: no artifact in intervention= was located for"
            f" {', '.join(missing)} ({len(targets)} class(es) to erase, artifacts located for"
            f" {', '.join(sorted(located)) or 'none'}); give one artifact per class, joined by"
            " '+' (ce-bench locate ... --target CLASS for each)"
        )


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """The test examples as few-shot prompts (`custom_dataset` loader; gets the metadata)."""
    data = dataset(metadata["dataset"])
    intervention = metadata.get("intervention")
    located = located_classes(data, intervention)
    targets = [data.classes[t] for t in target_classes(data, metadata.get("target"), located)]
    if intervention:  # without it in the metadata (the Python API) the model checks at scoring
        check_located(data, targets, located)
    source = metadata.get("data_source", "shipped")
    shots = choose_shots(
        data, load_examples(data, "train", source), int(metadata.get("shots", DEFAULT_SHOTS))
    )
    docs = [
        {
            "prompt": few_shot_prompt(data, e.text, shots),
            "choices": list(data.words),
            "label": e.label,
            "class": data.classes[e.label],
            "targets": targets,
        }
        for e in load_examples(data, "test", source)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


class Erasure(PairedScoring):
    """Acc / Conf / CAcc / CConf of the unedited and edited model from one run.

    Requests per example: every label OFF, then every label ON once per target class, tagged
    with that class (`pairing.for_target`), so that only its own artifact is on.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        metadata = dict(self.config.metadata or {})
        self.only_correct = bool(metadata.get("only_correct", False))

    def construct_requests(self, doc: dict, ctx: str, **kwargs: Any) -> list[Instance]:
        paired = super().construct_requests(doc, ctx, **kwargs)
        n = len(paired) // 2
        per_target = [
            copy_request(r, arguments=for_target(r.args, target), idx=(k + 1) * n + r.idx - n)
            for k, target in enumerate(doc["targets"])
            for r in paired[n:]
        ]
        return paired[:n] + per_target

    def process_results(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, Any]:
        return doc_metrics(doc, results, self.only_correct)


def doc_metrics(
    doc: dict[str, Any], results: list[tuple[float, bool]], only_correct: bool = False
) -> dict[str, Item]:
    """One example's items for every metric: (class, targets, value per target).

    `results` are the label loglikelihoods OFF, then ON for each target in turn. With
    `only_correct`, an example the unedited model gets wrong has NaN everywhere (left out).
    """
    n = len(doc["choices"])
    base = _scores(results[:n], doc["label"])
    edited = [
        _scores(results[(k + 1) * n : (k + 2) * n], doc["label"])
        for k in range(len(doc["targets"]))
    ]
    if only_correct and not base[0]:
        base, edited = (NAN, NAN), [(NAN, NAN)] * len(edited)
    key = (doc["class"], tuple(doc["targets"]))
    metrics: dict[str, Item] = {}
    for i, name in enumerate(("acc", "conf")):
        for suffix, values in (
            ("", [e[i] for e in edited]),
            (BASE_SUFFIX, [base[i]] * len(edited)),
            ("_delta", [e[i] - base[i] for e in edited]),
        ):
            metrics[f"{name}{suffix}"] = metrics[f"c{name}{suffix}"] = (*key, tuple(values))
    return metrics


def _scores(results: list[tuple[float, bool]], label: int) -> tuple[float, float]:
    """(correct, probability of the true label among the label words)."""
    logliks = np.array([ll for ll, _ in results])
    probs = np.exp(logliks - logliks.max())
    probs /= probs.sum()
    return float(np.argmax(logliks) == label), float(probs[label])


def target_mean(items: list[Item]) -> float:
    """Aggregation for acc/conf: per target, the mean over its own examples; then the trimmed
    mean over targets."""
    return _over_targets(items, lambda target, per_class: per_class.get(target, NAN))


def other_classes_mean(items: list[Item]) -> float:
    """Aggregation for cacc/cconf: per target, the mean per other class, then over those
    classes; then the trimmed mean over targets."""

    def others(target: str, per_class: dict[str, float]) -> float:
        values = [v for c, v in per_class.items() if c != target and not math.isnan(v)]
        return float(np.mean(values)) if values else NAN

    return _over_targets(items, others)


def _over_targets(items: list[Item], of_target: Any) -> float:
    targets = items[0][1] if items else ()
    results = []
    for k, target in enumerate(targets):
        by_class: dict[str, list[float]] = {}
        for cls, _, values in items:
            if not math.isnan(values[k]):
                by_class.setdefault(cls, []).append(values[k])
        per_class = {c: float(np.mean(v)) for c, v in by_class.items()}
        results.append(of_target(target, per_class))
    return trimmed_mean([r for r in results if not math.isnan(r)])


def trimmed_mean(values: list[float], cut: float = TRIM) -> float:
    """Mean after dropping int(cut * n) values at each end (as scipy.stats.trim_mean)."""
    if not values:
        return NAN
    k = int(cut * len(values))
    kept = sorted(values)[k : len(values) - k]
    return float(np.mean(kept))
