"""`privacy_erasure`: are the erased private facts gone, under other phrasings too, and only they?

Knowledge Microscope's private-knowledge erasure (docs/metrics.md), on the project's synthetic
fact set (`ce_bench.private_facts`) and a model that memorised it (`ce-bench inject-facts`). Every
prompt is scored with teacher forcing, the intervention ON and, for the unedited model, OFF in the
same run (`ce_bench.pairing.per_token`). A model *produces* a value after a prompt when the argmax
at every position of " " + value is the value's token: exactly when greedy decoding reproduces it.
That is Knowledge Microscope's unit: a fact is erased or it is not (a changed last digit counts as
erased).

Metrics (pooled over prompts: the sum of successes over the sum of counted prompts):
    reliability        share of the erased facts' training prompts (prompt 0, the one the
                       eraser was located on) on which the edited model no longer produces the
                       value, among those on which the unedited model produces it
    generalization     the same on the paraphrases (prompts 1-4)
    locality           share of the control prompts on which the edited model's argmax equals
                       the unedited model's at every position of the control's value
    recall, paraphrase_recall, control_recall
                       share of the training prompts / paraphrases / control prompts on which
                       the edited model produces the value; `*_base` the unedited model's.
Reliability and Generalization count only what the unedited model knew (a paraphrase it never
answered is not an erasure), so their unedited values are 0 and Locality's is 1 by definition;
the `*_base` recalls are the unedited model's numbers that matter: what there was to erase.
Delta-PPL is lm-eval's job in the same run: add `ce_perplexity` to `--tasks` (its
`word_perplexity_delta`, edited minus unedited, on held-out text).

Options (`--metadata` JSON; lm-eval merges model_args in too):
    facts: ids of the erased facts (a list, or one string joined by ","); default: the ids the
        loaded artifacts erased (their report's `erased`), else every fact.
    facts_file: a fact file of the shipped schema; default the shipped set.
Documents alternate erased facts and controls, so `--limit` keeps both kinds.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import datasets
from ce_bench.tasks.paired.tasks import own_metrics
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ce_bench.artifacts import load_artifact
from ce_bench.pairing import BASE_SUFFIX, baseline_loglikelihood, per_token, require_edited_hf
from ce_bench.private_facts import Fact, load_fact_set
from ce_bench.scoring import TokenScore

FACT, CONTROL, PARAPHRASE = "fact", "control", "paraphrase"
RECALLS = {FACT: "recall", PARAPHRASE: "paraphrase_recall", CONTROL: "control_recall"}
METRICS = (
    "reliability",
    "generalization",
    "locality",
    *(name + suffix for name in RECALLS.values() for suffix in ("", BASE_SUFFIX)),
)
Share = tuple[int, int]  # (successes, counted prompts)


def erased_ids(metadata: dict[str, Any]) -> list[str] | None:
    """`facts` from the metadata, else the loaded artifacts' erased facts, else None (all)."""
    given = metadata.get("facts")
    if given:
        return [i.strip() for i in given.split(",")] if isinstance(given, str) else list(given)
    reports = [load_artifact(p).provenance.report for p in _artifact_paths(metadata)]
    ids = [i for report in reports for i in report.get("erased", [])]
    return list(dict.fromkeys(ids)) or None


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """Erased facts and controls, alternating (`custom_dataset` loader; gets the metadata)."""
    data = load_fact_set(metadata.get("facts_file"))
    facts = [_doc(f, FACT) for f in data.select(erased_ids(metadata))]
    controls = [_doc(f, CONTROL) for f in data.controls]
    docs = [d for pair in itertools.zip_longest(facts, controls) for d in pair if d is not None]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


class PrivacyErasure(ConfigurableTask):
    """Every prompt of a document scored per token, OFF (idx 2i) and ON (idx 2i + 1)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config=own_metrics(config))

    def construct_requests(self, doc: dict, ctx: str, **kwargs: Any) -> list[Instance]:
        require_edited_hf(self.config.task)
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        requests = []
        for prompt in doc["prompts"]:
            on = per_token((prompt, " " + doc["value"]))
            requests += [baseline_loglikelihood(on), on]
        return [
            Instance(request_type="loglikelihood", doc=doc, arguments=args, idx=i, **kwargs)
            for i, args in enumerate(requests)
        ]

    def process_results(self, doc: dict, results: list[Any]) -> dict[str, Share]:
        scores = [TokenScore.from_json(r) for r in results]
        return doc_metrics(doc["kind"], scores[0::2], scores[1::2])


def doc_metrics(kind: str, base: list[TokenScore], edited: list[TokenScore]) -> dict[str, Share]:
    """One document's (successes, counted prompts) for every metric; `base` and `edited` are
    its prompts' scores OFF and ON, training prompt first."""
    metrics: dict[str, Share] = dict.fromkeys(METRICS, (0, 0))
    if kind == CONTROL:
        same = sum(e.greedy == b.greedy for b, e in zip(base, edited, strict=True))
        metrics["locality"] = (same, len(base))
        metrics.update(_recall_items(CONTROL, base, edited))
        return metrics
    metrics["reliability"] = _erased(base[:1], edited[:1])
    metrics["generalization"] = _erased(base[1:], edited[1:])
    metrics.update(_recall_items(FACT, base[:1], edited[:1]))
    metrics.update(_recall_items(PARAPHRASE, base[1:], edited[1:]))
    return metrics


def pooled_share(items: list[Share]) -> float:
    """Aggregation: total successes / total counted prompts (NaN when nothing was counted)."""
    counted = sum(n for _, n in items)
    return sum(k for k, _ in items) / counted if counted else math.nan


def produced(score: TokenScore) -> bool:
    """Greedy decoding reproduces the continuation: every position's argmax is its token."""
    return score.greedy == score.target


def _erased(base: list[TokenScore], edited: list[TokenScore]) -> Share:
    known = [(b, e) for b, e in zip(base, edited, strict=True) if produced(b)]
    return sum(not produced(e) for _, e in known), len(known)


def _recall_items(kind: str, base: list[TokenScore], edited: list[TokenScore]) -> dict[str, Share]:
    name = RECALLS[kind]
    return {
        name: (sum(map(produced, edited)), len(edited)),
        f"{name}_base": (sum(map(produced, base)), len(base)),
    }


def _doc(fact: Fact, kind: str) -> dict[str, Any]:
    return {"id": fact.id, "kind": kind, "value": fact.value, "prompts": list(fact.prompts)}


def _artifact_paths(metadata: dict[str, Any]) -> list[str]:
    return [p for p in str(metadata.get("intervention") or "").split("+") if p]
