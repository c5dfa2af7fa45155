"""`edited_hf`: lm-eval's HFLM with interventions attached once and switched per request.

    lm_eval --model edited_hf \
        --model_args pretrained=smollm2-135m,intervention=artifacts/anger_sv,strength=4 \
        --tasks ce_general_mini

Requests run with the interventions ON, except the baseline half of a paired request (see
`ce_bench.pairing`), which runs with them OFF in the same process and the same run. OFF is exact:
no hook changes anything, so results equal `--model hf` bit for bit.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import json
import logging
import re
from collections.abc import Iterator, MutableMapping
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook
from lm_eval.models.huggingface import HFLM

from ce_bench import pairing
from ce_bench.artifacts import Artifact, check_model, fingerprint, load_artifact, save_artifact
from ce_bench.interventions import Switch, build_intervention, track_cache_offset
from ce_bench.lifelong import (
    LifelongSession,
    editor_parameters,
    editors_taking,
    new_editor,
    start_session,
    take_editor_params,
)
from ce_bench.lifelong.scoring import score_tokens
from ce_bench.models.embedded import resolve_pretrained
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.versions import stack_versions

logger = logging.getLogger(__name__)


class EditedHFLM(HFLM):
    """HFLM plus interventions from artifact directories.

    Args (model_args, besides every HFLM argument):
        pretrained: a model id or path; `smollm2-135m` (the default) is the embedded model.
        intervention: an artifact directory, or several joined by `+`.
        strength: overrides each artifact's strength (k / C / beta); one value, or one per
            artifact joined by `+`.
        positions: overrides where activation edits apply: all | prompt | generated | last (the
            last prompt token: the one predicting a loglikelihood continuation or the first
            generated token; every token of a rolling-loglikelihood text).
        unedited_answers: (Python API only) a dict shared by several `EditedHFLM`s built on the
            same loaded model, whose weights do not change between them: the answer to a
            switched-OFF request (generation or score) found there is reused instead of
            computed again. A sweep over strengths and methods then computes each unedited
            answer once.

    Lifelong editing (`ce_bench.lifelong`), stated once here; lm-eval passes these model_args
    to every task's metadata, so the tasks evaluate the records the model edited:
        editor: microedit | ft | grace | wise: edit the model before answering anything.
        edits: the edit stream: zsre, selfcheckgpt (shipped sets), a JSON / JSONL file or URL.
        num_edits: T, the first T records of `edits` (default: all).
        eval_at: end (after all T edits; default) | immediate (each record after its own edit).
        save_edits: a directory to save the edited state to (load it with intervention=DIR and
            the same edits= and num_edits=, without editing again).
        any field of the editor's parameters (e.g. layer=20, lr=1e-4), over the paper's
            defaults; all of them are written into the results.
    """

    def __init__(
        self,
        pretrained: str | None = EMBEDDED_NAME,
        intervention: str | None = None,
        strength: float | str | None = None,
        positions: str | None = None,
        device: str | None = None,
        unedited_answers: MutableMapping[str, Any] | None = None,
        editor: str | None = None,
        edits: str | None = None,
        num_edits: int | None = None,
        eval_at: str = "end",
        save_edits: str | None = None,
        **kwargs: Any,
    ) -> None:
        editor_params = take_editor_params(editor, kwargs)
        check_model_args(kwargs, editor)
        artifacts = [load_artifact(p) for p in _split(intervention)]
        overrides = _overrides(strength, positions, len(artifacts))
        self.model_name = _name_of(pretrained)
        self._context_ends: ContextEnds | None = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=resolve_pretrained(pretrained), device=device, **kwargs)
        self.model.eval()
        built = []
        for artifact, override in zip(artifacts, overrides, strict=True):
            check_model(artifact, self.model)
            intervention = build_intervention(artifact, self.model, override)
            intervention.target = artifact.provenance.report.get("target")
            built.append(intervention)
        self.switch = Switch()
        self._hooks = ExitStack()
        self.interventions = built
        self._artifacts = artifacts
        self._overrides = overrides
        self.unedited_answers = unedited_answers
        self.lifelong: LifelongSession | None = None
        self._warned_unedited = False
        try:
            fresh = new_editor(editor, self.model, editor_params) if editor else None
            for item in [*built, *([fresh] if fresh else [])]:
                for handle in item.attach(self.model, self.switch):
                    self._hooks.callback(handle.remove)
            self._hooks.callback(track_cache_offset(self.model, self.switch).remove)
            if editor or edits:
                self.lifelong = start_session(
                    fresh,
                    list(zip(artifacts, built, strict=True)),
                    edits,
                    num_edits,
                    eval_at,
                    self.model,
                    self.tokenizer,
                )
                if save_edits:
                    art = self.lifelong.editor.to_artifact(
                        self.model, self.model_name, self.lifelong.stream
                    )
                    save_artifact(art, save_edits)
        except BaseException:
            self._hooks.close()
            raise
        run = {"overrides": overrides}
        if self.lifelong is not None:
            run["lifelong"] = self.lifelong.key()
        self.fingerprint = fingerprint(artifacts, run)
        pairing.announce_model(self)

    def close(self) -> None:
        """Detach every hook; the model is the unedited one afterwards."""
        self._hooks.close()

    # ------------------------------------------------------------------ forward passes
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate, OFF-tagged requests with the switch off; switched-OFF requests already in
        `unedited_answers` are not generated again."""
        return self._in_edit_order(
            requests,
            [pairing.tag_of(r.args[1]) for r in requests],
            lambda batch: self._generate_now(batch, disable_tqdm),
        )

    def _generate_now(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        if not self.interventions and self.lifelong is None:
            return self._generate_each_once(requests, disable_tqdm)
        groups: dict[bool, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(pairing.is_enabled(pairing.tag_of(request.args[1])), []).append(i)
        results: list[Any] = [None] * len(requests)
        for enabled, indices in groups.items():
            group = [requests[i] for i in indices]
            with self.switch.set(enabled and self.switch.enabled):
                texts = self._reusing_unedited(
                    group,
                    [_unedited_key(r) for r in group],
                    lambda todo: super(EditedHFLM, self).generate_until(
                        [_untagged(r) for r in todo], disable_tqdm=disable_tqdm
                    ),
                )
            for i, text in zip(indices, texts, strict=True):
                results[i] = text
        return results

    def _generate_each_once(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        """With nothing attached, ON is OFF: a paired task's two halves are one generation
        (greedy requests only; sampled ones stay independent draws)."""
        untagged = [_untagged(r) for r in requests]
        keys = [
            json.dumps(r.args, sort_keys=True, default=str)
            if not r.args[1].get("do_sample")
            else str(i)
            for i, r in enumerate(untagged)
        ]
        if len(set(keys)) < len(keys) and not self._warned_unedited:
            self._warned_unedited = True
            logger.warning(
                "edited_hf has no intervention=, editor= or edits=: the edited half of each paired"
                " task is the unedited model, so edit metrics (concept_emotion's success_rate,"
                " changed) are 0 by construction; each prompt is generated once"
            )
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        unique = sorted(first.values())
        texts = super().generate_until([untagged[i] for i in unique], disable_tqdm=disable_tqdm)
        by_key = dict(zip((keys[i] for i in unique), texts, strict=True))
        return [by_key[key] for key in keys]

    def _in_edit_order(self, requests: list[Instance], tags: list[dict], compute: Any) -> list:
        """`compute` the answers, each in the editor state the lifelong session asks for."""
        if self.lifelong is None:
            return compute(requests)
        return self.lifelong.answer(requests, tags, compute)

    def _reusing_unedited(
        self, requests: list[Instance], keys: list[str | None], compute: Any
    ) -> list[Any]:
        """`compute` the answers of `requests`, except those whose key (None: never reused) is
        already in `unedited_answers`; new ones are stored there."""
        memo = self.unedited_answers
        if memo is None:
            return compute(requests)
        todo = [i for i, key in enumerate(keys) if key is None or key not in memo]
        fresh = compute([requests[i] for i in todo]) if todo else []
        answers = {i: memo[key] for i, key in enumerate(keys) if key is not None and key in memo}
        for i, value in zip(todo, fresh, strict=True):
            answers[i] = value
            if keys[i] is not None:
                memo[keys[i]] = value
        return [answers[i] for i in range(len(requests))]

    def _model_generate(self, context, max_length, stop, **generation_kwargs):  # type: ignore[no-untyped-def]
        with self.switch.generating(context.shape[1]):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # ------------------------------------------------------------------ where the prompt ends
    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False):  # type: ignore[no-untyped-def]
        """Whole-text scores (perplexity): no prompt, so `positions=last` edits every token.
        Requests tagged by `pairing.baseline_loglikelihood` run switched OFF."""
        with self.switch.scoring_rolling():
            return self._paired(requests, super().loglikelihood_rolling, disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):  # type: ignore[no-untyped-def]
        """Remember, per model input row, where its context ends (see `_model_call`)."""
        if self.switch.rolling or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        self._context_ends = ContextEnds(requests, self.max_length)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        finally:
            self._context_ends = None

    def _model_call(self, inps, attn_mask=None, labels=None):  # type: ignore[no-untyped-def]
        ends = self._context_ends
        if ends is None:
            return super()._model_call(inps, attn_mask, labels)
        with self.switch.scoring(*ends.of(inps)):
            return super()._model_call(inps, attn_mask, labels)

    # ------------------------------------------------------------------ paired loglikelihood
    def loglikelihood(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """Score requests; those tagged by `pairing.baseline_loglikelihood` run switched OFF."""
        return self._paired(requests, super().loglikelihood, disable_tqdm)

    def _paired(self, requests: list[Instance], score: Any, disable_tqdm: bool) -> list[Any]:
        """`score` requests in groups by their tags: OFF ones with the switch off, ones naming
        a target with only that target's interventions on, ones asking for per-token scores
        with `score_tokens`, the others as they are; in the order the lifelong session (if
        any) asks for."""
        return self._in_edit_order(
            requests,
            [pairing.tag_of(r.args) for r in requests],
            lambda batch: self._paired_now(batch, score, disable_tqdm),
        )

    def _paired_now(self, requests: list[Instance], score: Any, disable_tqdm: bool) -> list[Any]:
        groups: dict[tuple[bool, str | None, bool], list[int]] = {}
        for i, request in enumerate(requests):
            args = request.args
            state = (pairing.is_enabled(args), pairing.target_of(args), pairing.wants_tokens(args))
            groups.setdefault(state, []).append(i)
        if list(groups) == [(True, None, False)]:
            return score(requests, disable_tqdm=disable_tqdm)
        results: list[Any] = [None] * len(requests)
        for (enabled, target, tokens), indices in groups.items():
            self._check_target(target)
            tagged = not enabled or target is not None or tokens
            group = [requests[i] for i in indices]
            group_score = self._score_tokens if tokens else score
            with (
                self.switch.set(enabled and self.switch.enabled),
                self.switch.select(target),
                self._no_partial_cache() if tagged else nullcontext(),
            ):
                scores = self._reusing_unedited(
                    group,
                    [_unedited_key(r) for r in group],
                    lambda todo, group_score=group_score: group_score(
                        [_untagged(r) for r in todo], disable_tqdm=disable_tqdm
                    ),
                )
            for i, value in zip(indices, scores, strict=True):
                results[i] = value
        return results

    def _score_tokens(self, requests: list[Instance], disable_tqdm: bool = True) -> list[list]:
        """Per-token teacher-forced scores (`TokenScore.as_json`) of (context, continuation)."""
        pairs = [self._encode_pair(*r.args[:2]) for r in requests]

        def forward(inputs: torch.Tensor, last_prompt: torch.Tensor) -> torch.Tensor:
            with self.switch.scoring(last_prompt):
                return self._model_call(inputs)

        scores = score_tokens(pairs, forward, self.max_length, self.device)
        return [s.as_json() for s in scores]

    def _check_target(self, target: str | None) -> None:
        if target is not None and not any(i.target == target for i in self.interventions):
            known = sorted({i.target for i in self.interventions if i.target})
            raise ValueError(
                f"no intervention was located for target {target!r} (loaded: {known or 'none'});"
                " give one artifact per target, joined by '+'"
            )

    @contextmanager
    def _no_partial_cache(self) -> Iterator[None]:
        """Switched-off scores must not be cached under the untagged request's key."""
        saved, self.cache_hook = self.cache_hook, CacheHook(None)
        try:
            yield
        finally:
            self.cache_hook = saved

    # ------------------------------------------------------------------ caching and results
    def set_cache_hook(self, cache_hook: CacheHook) -> None:
        """Keep `--use_cache` entries of different interventions apart.

        lm-eval keys its cache by request arguments only (DESIGN.md section 3); we move this
        model's entries into a SQLite table named after the intervention fingerprint.
        """
        if cache_hook.dbdict is not None:
            _use_table(cache_hook.dbdict, f"ce_bench_{self.fingerprint}")
        super().set_cache_hook(cache_hook)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info["ce_bench"] = {
            "base_model": self.model_name,
            "fingerprint": self.fingerprint,
            "interventions": [
                _describe(a, i) for a, i in zip(self._artifacts, self.interventions, strict=True)
            ],
            "versions": stack_versions(),
        }
        if self.lifelong is not None:
            info["ce_bench"]["lifelong"] = self.lifelong.describe()
        return info


class ContextEnds:
    """The index of the last context token of each row HFLM builds for loglikelihood requests.

    HFLM scores (context, continuation) as one row, (context + continuation)[:-1] cut to the
    model's length and right-padded with zeros into a batch; the row itself does not say where
    the context ends. This table, built from the requests before batching, finds it again from
    the row's tokens, so that `positions=last` edits the token that predicts the continuation.
    """

    def __init__(self, requests: list[tuple[Any, list[int], list[int]]], max_length: int) -> None:
        self.table: dict[tuple[int, ...], int] = {}
        for _, context, continuation in requests:
            row = tuple((context + continuation)[-(max_length + 1) :][:-1])
            self.table[row] = len(row) - len(continuation)

    def of(self, inps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch,) last-context indices and (batch,) unpadded lengths of a padded batch's rows."""
        ends, lengths = [], []
        for row in inps.tolist():
            used = len(row)
            while used and row[used - 1] == 0:  # right padding, or context tokens that are 0
                used -= 1
            length = next(
                (n for n in range(used, len(row) + 1) if tuple(row[:n]) in self.table), None
            )
            if length is None:
                raise RuntimeError("edited_hf: a scored row matches no loglikelihood request")
            ends.append(self.table[tuple(row[:length])])
            lengths.append(length)
        return torch.tensor(ends, device=inps.device), torch.tensor(lengths, device=inps.device)


def check_model_args(unclaimed: dict[str, Any], editor: str | None) -> None:
    """Refuse, before anything loads, a model_arg that neither edited_hf, HFLM, the editor nor
    `from_pretrained` takes: lm-eval would pass it on to transformers, which fails late or, for
    a name that happens to be a config field, silently changes the model."""
    unknown = sorted(set(unclaimed) - passed_on_model_args())
    if not unknown:
        return
    own = [n for n in inspect.signature(EditedHFLM.__init__).parameters if n not in _NOT_ARGS]
    editor_names = editor_parameters(editor) if editor else []
    valid = sorted({*own, *editor_names, *passed_on_model_args()})
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        takers = editors_taking(name)
        if close:
            hints.append(f"{name!r} (did you mean {close[0]!r}?)")
        elif takers and not editor:
            hints.append(f"{name!r} (a parameter of editor={'|'.join(takers)}: name the editor)")
        else:
            hints.append(repr(name))
    lines = [f"edited_hf: unknown model_args {', '.join(hints)}."]
    if editor:
        lines.append(f"The {editor} editor's parameters: {', '.join(editor_names)}.")
    lines.append(f"edited_hf's own: {', '.join(own)}; HFLM's and from_pretrained's also apply.")
    raise ValueError(" ".join(lines))


_NOT_ARGS = {"self", "kwargs", "unedited_answers"}  # not model_args (unedited_answers: Python API)


@functools.cache
def passed_on_model_args() -> frozenset[str]:
    """The model_args edited_hf hands to HFLM and on to `from_pretrained`: HFLM's parameters,
    from_pretrained's keywords and the ones it takes out of its **kwargs (read from its source,
    so a transformers release that adds one is followed without a change here)."""
    from transformers import PreTrainedModel

    load = PreTrainedModel.from_pretrained
    names = set(inspect.signature(HFLM.__init__).parameters) - _NOT_ARGS
    names |= set(inspect.signature(load).parameters) - {"model_args", "kwargs"}
    names |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(load)))
    return frozenset(n for n in names if not n.startswith("_")) - {"pretrained_model_name_or_path"}


def _name_of(pretrained: Any) -> str:
    """The base model's name for results: the id or path, or a loaded model's own name."""
    if isinstance(pretrained, str) and pretrained:
        return pretrained
    return EMBEDDED_NAME if not pretrained else pretrained.config.name_or_path


def _split(intervention: str | None) -> list[str]:
    return [p for p in (intervention or "").split("+") if p]


def _overrides(strength: Any, positions: str | None, count: int) -> list[dict[str, Any]]:
    """Per-artifact parameter overrides from model_args."""
    strengths: list[Any] = [None] * count
    if strength is not None and strength != "":
        values = [float(s) for s in str(strength).split("+")]
        if len(values) not in (1, count):
            raise ValueError(
                f"strength={strength!r} gives {len(values)} values for {count} interventions"
            )
        strengths = values * count if len(values) == 1 else values
    if count == 0 and (strength not in (None, "") or positions):
        raise ValueError("strength/positions given but no intervention= artifact")
    return [
        {k: v for k, v in (("strength", s), ("positions", positions)) if v not in (None, "")}
        for s in strengths
    ]


def _unedited_key(request: Instance) -> str | None:
    """The `unedited_answers` key of a switched-OFF request; None for any other."""
    args = request.args
    off = not pairing.is_enabled(args[1] if request.request_type == "generate_until" else args)
    return json.dumps([request.request_type, args], sort_keys=True, default=str) if off else None


def _untagged(request: Instance) -> Instance:
    """The request as HFLM expects it: without ce-bench's tags."""
    clone = copy.copy(request)
    if request.request_type == "generate_until":
        context, gen_kwargs = request.args
        clone.arguments = (context, pairing.untagged_kwargs(gen_kwargs))
    else:
        clone.arguments = pairing.strip_tag(request.args)
    return clone


def _describe(artifact: Artifact, intervention: Any) -> dict[str, Any]:
    params = {k: v for k, v in vars(intervention.params).items()}
    return {
        "artifact": str(Path(artifact.path).resolve()) if artifact.path else None,
        "kind": artifact.kind,
        "site": artifact.site.name,
        "layer": artifact.site.layer,
        "params": params,
        "located_on": artifact.model.name,
        "provenance": vars(artifact.provenance),
    }


def _use_table(dbdict: Any, table: str) -> None:
    """Point a sqlitedict at another table of the same file (created if missing)."""
    dbdict.tablename = table
    dbdict.conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (key TEXT PRIMARY KEY, value BLOB)')
    dbdict.conn.commit()
