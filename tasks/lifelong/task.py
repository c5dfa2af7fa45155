"""`zsre_lifelong` and `selfcheckgpt_lifelong`: what a stream of T edits did (MicroEdit 3.1, 5.1).

The documents are the records the model edited: the task reads `edits=` and `num_edits=` from
its metadata, where lm-eval puts the model_args, so they are stated once, and tags every request
with the record's index and the stream's digest, which the model checks (`ce_bench.pairing`).
Scores are teacher-forced per token (`ce_bench.scoring`), with the editor ON and, for
the unedited model's answers, OFF, in the same run (docs/metrics.md):

zsre_lifelong:
    rel          token accuracy of `target` after `prompt` (Reliability)
    gen          the same after the paraphrase (Generalization)
    loc          share of the locality answer's positions whose argmax is unchanged (Locality)
    avg          mean of rel, gen and loc (the papers' Avg.)
    exact_match  the greedy continuation starts with the target, as whole words (case and
                 surrounding punctuation ignored)
    rel_base, gen_base, exact_match_base: the unedited model's values
selfcheckgpt_lifelong:
    ppl          perplexity of `target_new` given `prompt` (prompt tokens masked; lower is
                 better); ppl_median and log_ppl (mean log-perplexity) beside it, since the
                 mean of raw perplexities is dominated by a few failed edits
    loc          as above
    ppl_base, log_ppl_base: the unedited model's values

With checkpoints (`eval_at=1+10+100`), each of the ON scores is also asked at every checkpoint c
about the records edited by then (index < c), and reported as `rel@10`, `gen@10`, ...: a
retention curve from one run. A record not yet edited at c reports no `rel@c`, so lm-eval's mean
and stderr are over the records edited by then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import datasets
from ce_bench.tasks.paired.tasks import own_metrics
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from ce_bench.lifelong.records import EditStream, load_stream
from ce_bench.lifelong.session import checkpoints
from ce_bench.pairing import (
    baseline_generation,
    baseline_loglikelihood,
    edit_generation,
    for_edit,
    require_edited_hf,
)
from ce_bench.scoring import TokenScore

MAX_ANSWER_TOKENS = 16  # greedy tokens generated for exact match (ZsRE answers are short)


def stream_of(metadata: dict[str, Any], task: str) -> EditStream:
    """The edit stream named in the run's model_args (merged into the task metadata)."""
    if not metadata.get("edits"):
        raise ValueError(
            f"{task} evaluates the records the model edited: give edits= (and num_edits=) in"
            " --model_args, e.g. editor=microedit,edits=zsre,num_edits=10"
        )
    num_edits = metadata.get("num_edits")
    return load_stream(str(metadata["edits"]), None if num_edits is None else int(num_edits))


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """One document per edited record, in edit order (`custom_dataset` loader)."""
    stream = stream_of(metadata, metadata.get("task", "a lifelong task"))
    docs = [
        {
            "edit_index": i,
            "stream": stream.digest,
            "prompt": r.prompt,
            "target": r.target,
            "rephrase": r.rephrase or "",
            "loc_prompt": r.loc_prompt,
            "loc_answer": r.loc_answer,
        }
        for i, r in enumerate(stream.records)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def continuation(answer: str) -> str:
    """An answer as scored after its prompt: after one space (EasyEdit's prompt + ' ' + target)."""
    return answer if answer[:1].isspace() else " " + answer


class LifelongTask(ConfigurableTask):
    """Builds the tagged requests; subclasses say which and turn the answers into metrics."""

    tracked: tuple[str, ...] = ()  # the metrics also reported at each checkpoint

    def __init__(self, config: dict[str, Any]) -> None:
        metadata = config.get("metadata") or {}
        # without edits= the documents cannot load: load_docs says so
        self.count = len(stream_of(metadata, config["task"]).records) if "edits" in metadata else 0
        self.checkpoints = (
            checkpoints(metadata.get("eval_at", "end"), self.count) if self.count else ()
        )
        at = [
            {
                "metric": f"{m['metric']}@{c}",
                "aggregation": "mean",
                "higher_is_better": m.get("higher_is_better", True),
            }
            for c in self.checkpoints
            for m in config["metric_list"]
            if m["metric"] in self.tracked
        ]
        super().__init__(
            config=own_metrics({**config, "metric_list": [*config["metric_list"], *at]})
        )

    def scored(self, doc: dict) -> list[tuple[str, str, str, bool]]:
        """(name, prompt, answer, ON?) of each per-token score the metrics need."""
        raise NotImplementedError

    def generated(self, doc: dict) -> list[tuple[str, str, bool]]:
        """(name, prompt, ON?) of each greedy generation the metrics need."""
        return []

    def construct_requests(self, doc: dict, ctx: str, **kwargs: Any) -> list[Instance]:
        require_edited_hf(self.config.task)
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        index, stream = doc["edit_index"], doc["stream"]
        requests = []
        for _, prompt, answer, on in self.scored(doc):
            args = for_edit((prompt, continuation(answer)), index, stream)
            requests.append(("loglikelihood", args if on else baseline_loglikelihood(args)))
        for _, prompt, answer in self.at_checkpoints(doc):
            for c in self.earlier_checkpoints(doc):
                args = for_edit((prompt, continuation(answer)), index, stream, checkpoint=c)
                requests.append(("loglikelihood", args))
        for _, prompt, on in self.generated(doc):
            gen = {"until": ["\n"], "max_gen_toks": MAX_ANSWER_TOKENS, "do_sample": False}
            gen = edit_generation(gen, index, stream)
            requests.append(("generate_until", (prompt, gen if on else baseline_generation(gen))))
        return [
            Instance(request_type=kind, doc=doc, arguments=args, idx=i, **kwargs)
            for i, (kind, args) in enumerate(requests)
        ]

    def at_checkpoints(self, doc: dict) -> list[tuple[str, str, str]]:
        """(name, prompt, answer) of the ON scores asked again at each checkpoint."""
        return [(n, p, a) for n, p, a, on in self.scored(doc) if on]

    def earlier_checkpoints(self, doc: dict) -> list[int]:
        """The checkpoints before the end at which the record was already edited."""
        return [c for c in self.checkpoints if doc["edit_index"] < c < self.count]

    def answers(self, doc: dict, results: list[Any]) -> dict[str, Any]:
        """The answers by name: `TokenScore`s for scores (`rel@10` for a checkpoint's), text
        for generations."""
        scored, generated = self.scored(doc), self.generated(doc)
        again = [
            f"{name}@{c}"
            for name, _, _ in self.at_checkpoints(doc)
            for c in self.earlier_checkpoints(doc)
        ]
        names = [s[0] for s in scored] + again + [g[0] for g in generated]
        n_scored = len(names) - len(generated)
        scores = [TokenScore.from_json(v) for v in results[:n_scored]]
        return dict(zip(names, scores + list(results[n_scored:]), strict=True))

    def with_checkpoints(
        self,
        doc: dict,
        answers: dict[str, Any],
        metrics: Callable[[dict[str, Any]], dict[str, float]],
    ) -> dict[str, float]:
        """`metrics(answers)` (after the last edit), and the tracked ones at every checkpoint
        by which the record was edited, computed from that checkpoint's answers."""
        found = metrics(answers)
        for c in self.checkpoints:
            if doc["edit_index"] >= c:
                continue
            if c == self.count:
                values = found
            else:
                values = metrics(
                    {
                        **answers,
                        **{k.split("@")[0]: v for k, v in answers.items() if k.endswith(f"@{c}")},
                    }
                )
            found |= {f"{m}@{c}": values[m] for m in self.tracked}
        return found


class ZsRELifelong(LifelongTask):
    tracked = ("rel", "gen", "loc", "avg")

    def scored(self, doc: dict) -> list[tuple[str, str, str, bool]]:
        if not doc["rephrase"]:
            raise ValueError(
                "zsre_lifelong needs records with a paraphrase (Generalization); this stream has"
                " none: use selfcheckgpt_lifelong for hallucination-style records"
            )
        return [
            ("rel", doc["prompt"], doc["target"], True),
            ("rel_base", doc["prompt"], doc["target"], False),
            ("gen", doc["rephrase"], doc["target"], True),
            ("gen_base", doc["rephrase"], doc["target"], False),
            ("loc", doc["loc_prompt"], doc["loc_answer"], True),
            ("loc_before", doc["loc_prompt"], doc["loc_answer"], False),
        ]

    def generated(self, doc: dict) -> list[tuple[str, str, bool]]:
        return [("answer", doc["prompt"], True), ("answer_base", doc["prompt"], False)]

    def process_results(self, doc: dict, results: list[Any]) -> dict[str, float]:
        def metrics(a: dict[str, Any]) -> dict[str, float]:
            rel, gen = a["rel"].accuracy, a["gen"].accuracy
            loc = a["loc"].agreement(a["loc_before"])
            return {
                "rel": rel,
                "gen": gen,
                "loc": loc,
                "avg": (rel + gen + loc) / 3,
                "exact_match": exact_match(a["answer"], doc["target"]),
                "rel_base": a["rel_base"].accuracy,
                "gen_base": a["gen_base"].accuracy,
                "exact_match_base": exact_match(a["answer_base"], doc["target"]),
            }

        return self.with_checkpoints(doc, self.answers(doc, results), metrics)


class SelfCheckGPTLifelong(LifelongTask):
    tracked = ("ppl", "log_ppl", "loc")

    def scored(self, doc: dict) -> list[tuple[str, str, str, bool]]:
        return [
            ("rel", doc["prompt"], doc["target"], True),
            ("rel_base", doc["prompt"], doc["target"], False),
            ("loc", doc["loc_prompt"], doc["loc_answer"], True),
            ("loc_before", doc["loc_prompt"], doc["loc_answer"], False),
        ]

    def process_results(self, doc: dict, results: list[Any]) -> dict[str, float]:
        def metrics(a: dict[str, Any]) -> dict[str, float]:
            ppl, base = a["rel"].perplexity, a["rel_base"].perplexity
            return {
                "ppl": ppl,
                "ppl_median": ppl,
                "log_ppl": math.log(ppl),
                "loc": a["loc"].agreement(a["loc_before"]),
                "ppl_base": base,
                "log_ppl_base": math.log(base),
            }

        return self.with_checkpoints(doc, self.answers(doc, results), metrics)


def exact_match(generation: str, target: str) -> float:
    """1.0 if the generation's first line starts with the target as whole words."""
    said, wanted = _words(generation.split("\n")[0]), _words(target)
    return float(bool(wanted) and said[: len(wanted)] == wanted)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())
