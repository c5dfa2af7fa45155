"""`concept_emotion`: how far an intervention raises an emotion in what the model writes.

Unified Concept Editing 4.1 / A.5 / A.8 and docs/metrics.md. Per test prompt the model generates
twice in one run, intervention OFF (original) and ON (edited), greedy with the same length. A judge
rates the degree of the target emotion in both, once in each order, and each sentence's score is the
mean of its two. Per prompt:

- success: edited score > original score, and the edited output is not degenerate (A.8);
- score_gain: edited score - original score;
- degenerate: the edit made the output repeat itself (the edited output is repetitive and the
  original is not: a small model's greedy continuations often loop on their own, and only the
  looping the edit introduces is its fault), or the edited output's perplexity under the
  unedited model is above `max_ppl`;
- judge_failure: the judge's reply could not be parsed or the call failed; such a prompt gets
  no success and no gain (NaN, left out of their means), never an invented score.

How far the judge itself can be trusted, from the two orders it already answers:

- order_agreement: each order alone gives the same verdict (edited rated above original, or
  not);
- position_bias: a sentence's score when shown first minus when shown second, averaged over
  the original and the edited sentence (0: no preference for either position);
- consistent_success_rate: success counted only over the prompts whose two orders agree.

Judging happens once for all prompts, concurrently, in `apply_filters` (lm-eval's step between
the model's responses and per-document scoring); `process_results` only reads the verdicts.

Options (`--metadata` JSON; lm-eval merges model_args in too):
    emotion: the target emotion, for `concept_emotion_target` (or taken from the intervention
        artifacts' located emotion); the per-emotion tasks fix it and reject a different one.
    scenarios: a RepE-format directory or URL (default: the shipped set).
    split: test (default) or validation (for choosing strengths); seed: split seed (0).
    prompt_emotions: others (default: scenarios of the other emotions and neutral ones, where
        the target emotion is absent) or all.
    judge: openai (default; gpt-4o) or lexicon (offline proxy); judge_* options go to the judge.
    max_ppl: perplexity above which an edited output is degenerate (default 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from ce_bench.tasks.paired.tasks import PairedGeneration

from ce_bench import pairing
from ce_bench.artifacts import load_artifact
from ce_bench.degeneration import is_repetitive
from ce_bench.emotions import (
    EMOTIONS,
    NEUTRAL,
    TEMPLATES,
    load_scenarios,
    split_hash,
    split_scenarios,
)
from ce_bench.judge import Judge, PairItem, PairVerdict, judge_from_metadata

DEFAULT_MAX_PPL = 200.0
DEFAULT_JUDGE = "openai"  # GPT-4 judged in Unified Concept Editing 4.1
NAN = float("nan")


def target_emotion(metadata: dict[str, Any]) -> str:
    """The emotion a run measures: fixed by the task, else `emotion`, else the artifacts'."""
    fixed, asked = metadata.get("task_emotion"), metadata.get("emotion")
    if fixed and asked and fixed != asked:
        raise ValueError(
            f"this task measures {fixed!r} but --metadata asks for emotion={asked!r};"
            f" run concept_emotion_{asked} or concept_emotion_target instead"
        )
    emotion = fixed or asked or _located_emotion(metadata.get("intervention"))
    if emotion not in EMOTIONS:
        raise ValueError(
            f"target emotion {emotion!r} unknown; set --metadata '{{\"emotion\": ...}}' to one of"
            f" {', '.join(EMOTIONS)}"
        )
    return emotion


def task_judge(metadata: dict[str, Any]) -> Judge:
    """The judge the metadata asks for; when it cannot be built (most often: no API key), an
    error that also names the offline way out. `ce_bench.registration` calls this when the
    tasks are selected, before lm-eval loads the model."""
    try:
        return judge_from_metadata(metadata, default=DEFAULT_JUDGE)
    except ValueError as err:
        raise ValueError(
            f"concept_emotion cannot build its judge: {err}. To run without a judge API, use the"
            ' offline lexicon judge: --metadata \'{"judge": "lexicon"}\' (or judge=lexicon'
            " in --model_args)"
        ) from err


def _located_emotion(intervention: str | None) -> str | None:
    emotions = {
        load_artifact(path).provenance.report.get("emotion")
        for path in (intervention or "").split("+")
        if path
    }
    return emotions.pop() if len(emotions) == 1 else None


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """The prompts of one target emotion (`custom_dataset` loader; gets the task's metadata)."""
    emotion = target_emotion(metadata)
    split = metadata.get("split", "test")
    which = metadata.get("prompt_emotions", "others")
    if which not in ("others", "all"):
        raise ValueError(f"prompt_emotions must be 'others' or 'all', got {which!r}")
    splits = split_scenarios(
        load_scenarios(metadata.get("scenarios")), int(metadata.get("seed", 0))
    )
    sources = [s for s in (*EMOTIONS, NEUTRAL) if s in splits and (which == "all" or s != emotion)]
    per_source = [
        [
            {
                "prompt": TEMPLATES[i % len(TEMPLATES)].fill(scenario),
                "scenario": scenario,
                "source": source,
                "target": emotion,
                "split": split,
                "split_hash": split_hash(splits),
            }
            for i, scenario in enumerate(splits[source].part(split))
        ]
        for source in sources
    ]
    docs = [doc for round_ in _round_robin(per_source) for doc in round_]  # --limit gets a mix
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _round_robin(lists: list[list[dict]]) -> list[list[dict]]:
    width = max(len(items) for items in lists)
    return [[items[i] for items in lists if i < len(items)] for i in range(width)]


@dataclass(frozen=True)
class Scored:
    """Everything `process_results` reports for one prompt."""

    verdict: PairVerdict
    repetitive: bool  # the edit introduced repetition
    perplexity: float  # of the edited output under the unedited model; NaN if empty
    max_ppl: float

    @property
    def degenerate(self) -> bool:
        return self.repetitive or not self.perplexity <= self.max_ppl

    def metrics(self) -> dict[str, float]:
        """Per-prompt values; `lm-eval --log_samples` shows them next to both generations."""
        verdict, failed = self.verdict, not self.verdict.ok
        gain = NAN if failed else verdict.edited - verdict.original
        original_first = verdict.original_first or (NAN, NAN)
        edited_first = verdict.edited_first or (NAN, NAN)
        success = NAN if failed else float(gain > 0 and not self.degenerate)
        # The judge, measured from the two orders it was asked: does each order alone reach the
        # same verdict (edited above original), and how much does being shown first add?
        agree = (
            NAN
            if failed
            else float(
                (original_first[1] > original_first[0]) == (edited_first[0] > edited_first[1])
            )
        )
        bias = (
            NAN
            if failed
            else ((original_first[0] - edited_first[1]) + (edited_first[0] - original_first[1])) / 2
        )
        return {
            "success_rate": success,
            "consistent_success_rate": success if agree == 1.0 else NAN,
            "order_agreement": agree,
            "position_bias": bias,
            "score_gain": gain,
            "degenerate_rate": float(self.degenerate),
            "judge_failures": float(failed),
            # the four raw judge scores: each sentence shown first and shown second (A.5)
            "original_shown_first": float(original_first[0]),
            "edited_shown_second": float(original_first[1]),
            "edited_shown_first": float(edited_first[0]),
            "original_shown_second": float(edited_first[1]),
            "edited_perplexity": self.perplexity,
        }


class ConceptEmotion(PairedGeneration):
    """Paired OFF/ON generation per prompt, judged for the target emotion in both orders."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        metadata = dict(self.config.metadata or {})
        self.emotion = target_emotion(metadata)
        self.max_ppl = float(metadata.get("max_ppl", DEFAULT_MAX_PPL))
        self.judge = task_judge(metadata)
        self._scored: dict[tuple[str, str, str], Scored] = {}

    def apply_filters(self) -> None:
        """After generation, judge every pair at once and score edited outputs' perplexity."""
        super().apply_filters()
        pairs = self._pairs()
        verdicts = self.judge.compare_many(
            [PairItem(self.emotion, base, edited) for _, _, base, edited in pairs]
        )
        perplexities = pairing.unedited_perplexity([(ctx, edited) for _, ctx, _, edited in pairs])
        for (prompt, _, base, edited), verdict, ppl in zip(
            pairs, verdicts, perplexities, strict=True
        ):
            ppl = ppl if math.isfinite(ppl) else NAN
            repetitive = is_repetitive(edited) and not is_repetitive(base)
            self._scored[prompt, base, edited] = Scored(verdict, repetitive, ppl, self.max_ppl)
        self.config.metadata["judge_usage"] = self.judge.usage()
        self.config.metadata["target_emotion"] = self.emotion
        self.config.metadata["split_hash"] = self.instances[0].doc["split_hash"]

    def _pairs(self) -> list[tuple[str, str, str, str]]:
        """(doc prompt, context as the model saw it, original, edited) per document."""
        by_doc: dict[int, dict[int, Any]] = {}
        for instance in self.instances:
            by_doc.setdefault(instance.doc_id, {})[instance.idx] = instance
        pairs = []
        for requests in by_doc.values():
            base, edited = (requests[i].filtered_resps for i in (0, 1))
            (base,), (edited,) = base.values(), edited.values()
            pairs.append((requests[1].doc["prompt"], requests[1].args[0], base, edited))
        return pairs

    def process_results(self, doc: dict, results: list[str]) -> dict[str, float]:
        base, edited = results
        return self._scored[doc["prompt"], base, edited].metrics()


def count(values: list[float]) -> float:
    """Aggregation for `judge_failures`: how many prompts the judge could not score."""
    return float(sum(values))


def nanmedian(values: list[float]) -> float:
    """Aggregation for `edited_perplexity`: the median over prompts with an output."""
    return float(np.nanmedian(values)) if not np.isnan(values).all() else NAN
