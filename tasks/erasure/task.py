"""`erasure_<dataset>`: how much erasing one class hurts it and the other classes (seed 001 5.3).

Each test example is a few-shot prompt (`ce_bench.classification`) scored against every label
word, intervention OFF and ON in the same run (`ce_bench.pairing`). The prediction is the label
with the highest loglikelihood; the confidence is the probability of the true label among the
label words (softmax over their loglikelihoods).

Metrics, for the edited model, the unedited one (`*_base`) and their difference (`*_delta`):
    acc, conf    accuracy and confidence on the target class's examples
    cacc, cconf  the same per other class, averaged over the other classes

Options (`--metadata` JSON; lm-eval merges model_args in too):
    target: the class to erase, by name or label word ("Sports"); by default the class the
        intervention artifacts were located for.
    data: shipped (default: the project's offline set) or hub (the dataset's hub id).
    shots: labelled examples in each prompt (default 4).
    only_correct: keep only examples the unedited model classifies correctly (Appendix H).
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import numpy as np
from ce_bench.tasks.paired.tasks import PairedChoices, own_metrics

from ce_bench.artifacts import load_artifact
from ce_bench.classification import (
    DEFAULT_SHOTS,
    ClassDataset,
    choose_shots,
    dataset,
    few_shot_prompt,
    load_examples,
)

NAN = float("nan")


def target_class(data: ClassDataset, metadata: dict[str, Any]) -> int:
    """The erased class: `target` from the metadata, else the one the artifacts name."""
    target = metadata.get("target") or _located_target(data, metadata.get("intervention"))
    if not target:
        raise ValueError(
            f"set the class to erase: --metadata '{{\"target\": ...}}' with one of"
            f" {', '.join(data.classes)}"
        )
    return data.class_index(str(target))


def _located_target(data: ClassDataset, intervention: str | None) -> str | None:
    reports = [load_artifact(p).provenance.report for p in (intervention or "").split("+") if p]
    targets = {r.get("target") for r in reports if r.get("dataset") == data.name}
    return targets.pop() if len(targets) == 1 else None


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """The test examples as few-shot prompts (`custom_dataset` loader; gets the metadata)."""
    data = dataset(metadata["dataset"])
    target = target_class(data, metadata)
    source = metadata.get("data", "shipped")
    shots = choose_shots(
        data, load_examples(data, "train", source), int(metadata.get("shots", DEFAULT_SHOTS))
    )
    docs = [
        {
            "prompt": few_shot_prompt(data, e.text, shots),
            "choices": list(data.words),
            "label": e.label,
            "class": data.classes[e.label],
            "target": data.classes[target],
        }
        for e in load_examples(data, "test", source)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


class Erasure(PairedChoices):
    """Acc / Conf / CAcc / CConf of the unedited and edited model from one run."""

    def __init__(self, config: dict[str, Any]) -> None:
        ours = {k: v for k, v in config.items() if k != "class"}
        super().__init__(config=own_metrics(ours))
        metadata = dict(self.config.metadata or {})
        self.only_correct = bool(metadata.get("only_correct", False))

    def process_results(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, Any]:
        n = len(results) // 2
        base = _scores(results[:n], doc["label"])
        edited = _scores(results[n:], doc["label"])
        if self.only_correct and not base[0]:
            base = edited = (NAN, NAN)
        is_target = doc["class"] == doc["target"]
        metrics: dict[str, Any] = {}
        for suffix, (correct, confidence) in (
            ("", edited),
            ("_base", base),
            ("_delta", (edited[0] - base[0], edited[1] - base[1])),
        ):
            own = (correct, confidence) if is_target else (NAN, NAN)
            other = (NAN, NAN) if is_target else (correct, confidence)
            metrics[f"acc{suffix}"], metrics[f"conf{suffix}"] = own
            metrics[f"cacc{suffix}"] = (doc["label"], other[0])
            metrics[f"cconf{suffix}"] = (doc["label"], other[1])
        return metrics


def _scores(results: list[tuple[float, bool]], label: int) -> tuple[float, float]:
    """(correct, probability of the true label among the label words)."""
    logliks = np.array([ll for ll, _ in results])
    probs = np.exp(logliks - logliks.max())
    probs /= probs.sum()
    return float(np.argmax(logliks) == label), float(probs[label])


def class_mean(items: list[tuple[int, float]]) -> float:
    """Aggregation for cacc/cconf: the mean per other class, then over those classes."""
    per_class: dict[int, list[float]] = {}
    for label, value in items:
        if not math.isnan(value):
            per_class.setdefault(label, []).append(value)
    if not per_class:
        return NAN
    return float(np.mean([np.mean(values) for values in per_class.values()]))
