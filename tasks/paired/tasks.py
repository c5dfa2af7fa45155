"""Tasks that score every document with the intervention OFF and ON in one run.

They show the two routes of `ce_bench.pairing` on small shipped data and are the pattern the
concept-editing, erasure and lifelong tasks follow:

- `ce_paired_generation` (generation route): how often the edited continuation differs from the
  unedited one, and the two outputs side by side in `--log_samples`.
- `ce_paired_mini_arc_easy` (loglikelihood route): lm-eval's ARC-Easy metrics for the unedited
  (`*_base`) and edited model from one run, plus `agree`, the share of items whose predicted
  answer is unchanged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from ce_bench.tasks.general.shipped import BuiltinTaskOnShippedData
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ce_bench.pairing import baseline_generation, baseline_loglikelihood, require_edited_hf

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


class PairedMultipleChoice(PairedScoring, BuiltinTaskOnShippedData):
    """A built-in multiple-choice task scored OFF and ON per item."""

    def process_results(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        n = len(results) // 2
        base = super().process_results(doc, results[:n])
        edited = super().process_results(doc, results[n:])
        agree = np.argmax([ll for ll, _ in results[:n]]) == np.argmax([ll for ll, _ in results[n:]])
        return {
            **{k: edited[k] for k in ("acc", "acc_norm")},
            **{f"{k}_base": base[k] for k in ("acc", "acc_norm")},
            "agree": float(agree),
        }


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
