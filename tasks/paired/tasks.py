"""Tasks that score every document with the intervention OFF and ON in one run.

They show the two routes of `ce_bench.pairing` on small shipped data and are the pattern the
concept-editing, erasure and lifelong tasks follow:

- `ce_paired_generation` (generation route): how often the edited continuation differs from the
  unedited one, and the two outputs side by side in `--log_samples`.
- `ce_paired_general_mini` / `ce_paired_general` (loglikelihood route): every task of
  ce_general_mini / ce_general with lm-eval's own metrics for the unedited (`*_base`) and edited
  model from one run, plus `agree`, the share of items whose predicted answer is unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from ce_bench.tasks.general.shipped import builtin_task_config
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ce_bench.pairing import (
    BASE_SUFFIX,
    baseline_generation,
    baseline_loglikelihood,
    require_edited_hf,
)

DATA = Path(__file__).parent / "data"


def load_prompts(**_: Any) -> datasets.DatasetDict:
    """The shipped open-ended prompts (`custom_dataset` loader; metadata is ignored)."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(DATA / "prompts.jsonl"))})


class PairedGeneration(ConfigurableTask):
    """Each prompt generated twice: intervention OFF (idx 0) and ON (idx 1)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config=own_metrics(config))

    def construct_requests(self, doc: dict, ctx: str, **kwargs: Any) -> list[Instance]:
        require_edited_hf(self.config.task)
        edited = super().construct_requests(doc, ctx, **kwargs)
        base = copy_request(edited, arguments=(ctx, baseline_generation(edited.args[1])), idx=0)
        return [base, copy_request(edited, idx=1)]

    def process_results(self, doc: dict, results: list[str]) -> dict[str, float]:
        base, edited = results
        return {"changed": float(base != edited)}


class PairedScoring(ConfigurableTask):
    """A loglikelihood task (multiple choice or rolling) whose every request is scored OFF
    (idx 0..n-1) and ON (idx n..2n-1)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config=own_metrics(config))

    def construct_requests(self, doc: dict, ctx: str, **kwargs: Any) -> list[Instance]:
        require_edited_hf(self.config.task)
        edited = super().construct_requests(doc, ctx, **kwargs)
        edited = edited if isinstance(edited, list) else [edited]
        n = len(edited)
        base = [copy_request(r, arguments=baseline_loglikelihood(r.args)) for r in edited]
        return base + [copy_request(r, idx=r.idx + n) for r in edited]


class PairedBuiltin(PairedScoring):
    """A built-in lm-eval loglikelihood task (`builtin_task_config`: on shipped data or its hub
    dataset) scored OFF and ON per document. It reports every metric of the built-in task for
    the edited model, the same for the unedited one (`<metric>_base`), and, for multiple
    choice, `agree` (the predicted answer is unchanged). The built-in's own scorer is used when
    it has one (truthfulqa_mc2's mc2); the metric list is derived, not written per task."""

    def __init__(self, config: dict[str, Any]) -> None:
        built = builtin_task_config(config)
        scorer = built.pop("process_results", None)
        self._scorer = scorer if callable(scorer) else None
        built["metric_list"] = paired_metric_list(
            built.get("metric_list") or [], built.get("output_type") == "multiple_choice"
        )
        super().__init__(built)

    def process_results(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        n = len(results) // 2
        base, edited = self._score(doc, results[:n]), self._score(doc, results[n:])
        paired = {**edited, **{f"{k}{BASE_SUFFIX}": v for k, v in base.items()}}
        if self.config.output_type == "multiple_choice":
            lls = [ll for ll, _ in results]
            paired["agree"] = float(np.argmax(lls[:n]) == np.argmax(lls[n:]))
        return paired

    def _score(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        if self._scorer is not None:
            return self._scorer(doc, results)
        return ConfigurableTask.process_results(self, doc, results)


def paired_metric_list(metrics: list[dict[str, Any]], choices: bool) -> list[dict[str, Any]]:
    """Each metric entry, then its `_base` twin (same aggregation and direction), then `agree`
    for multiple choice."""
    twins = [{**m, "metric": m["metric"] + BASE_SUFFIX} for m in metrics]
    agree = [{"metric": "agree", "aggregation": "mean", "higher_is_better": True}]
    return [*metrics, *twins, *(agree if choices else [])]


def own_metrics(config: dict[str, Any]) -> dict[str, Any]:
    """The task's YAML config as ConfigurableTask takes it (without `class`), marked as
    computing its own metrics.

    A non-callable `process_results` tells lm-eval that our metric names (changed, acc_base,
    agree) need no registered metric function (otherwise it searches HF evaluate for them);
    ConfigurableTask.process_results still computes lm-eval's own multiple-choice metrics.
    """
    ours = {k: v for k, v in config.items() if k != "class"}
    return {**ours, "process_results": "computed by the task class"}


def copy_request(request: Instance, **changes: Any) -> Instance:
    """A copy of a request with its own (empty) response lists."""
    return dataclasses.replace(request, resps=[], filtered_resps={}, **changes)
