"""`edited_hf`: lm-eval's HFLM with interventions attached once and switched per request.

    lm_eval --model edited_hf \
        --model_args pretrained=smollm2-135m,intervention=artifacts/anger_sv,strength=4 \
        --tasks ce_general_mini

Requests run with the interventions ON, except the baseline half of a paired request (see
`ce_bench.pairing`), which runs with them OFF in the same process and the same run. OFF is exact:
no hook changes anything, so results equal `--model hf` bit for bit.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import re
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import CacheHook
from lm_eval.models.huggingface import HFLM

from ce_bench import pairing
from ce_bench.artifacts import Artifact, fingerprint, load_artifact
from ce_bench.embedded import resolve_pretrained
from ce_bench.interventions import Switch
from ce_bench.interventions.base import save_intervention
from ce_bench.interventions.intervention_set import InterventionSet, parameter_overrides
from ce_bench.lifelong import (
    LifelongSession,
    editor_parameters,
    editors_taking,
    new_editor,
    start_session,
    take_editor_params,
)
from ce_bench.models.cost import CostMeter
from ce_bench.models.routing import (
    ContextEnds,
    UneditedAnswers,
    in_groups,
    once_per_prompt,
    tags_of,
    untagged,
)
from ce_bench.run_config import AttachedArtifact, RunConfig
from ce_bench.runtime import EMBEDDED_NAME
from ce_bench.scoring import score_tokens
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
        editor: microedit | ft | grace | wise | rome | memit | alphaedit | mend: edit the model
            before answering anything.
        edits: the edit stream: zsre, selfcheckgpt (shipped sets), a JSON / JSONL file or URL.
        num_edits: T, the first T records of `edits` (default: all).
        eval_at: end (after all T edits; default) | immediate (each record after its own
            edit) | checkpoints joined by '+', e.g. 1+10+100 (a retention curve: the records
            edited by then, after c edits, as rel@c ...; one pass over the stream).
        save_edits: a directory to save the edited state to (load it with intervention=DIR and
            the same edits= and num_edits=, without editing again).
        resume_edits: a directory where the stream's progress is saved after every edit; a run
            started again with the same editor, parameters and stream continues after the
            last saved edit (eval_at=end; FT-EWC always edits from the start).
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
        eval_at: str | int = "end",
        save_edits: str | None = None,
        resume_edits: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.cost = CostMeter()  # from here: loading and editing count in the run's wall time
        editor_params = take_editor_params(editor, kwargs)
        check_model_args(kwargs, editor)
        artifacts = [load_artifact(p) for p in (intervention or "").split("+") if p]
        parameter_overrides(strength, positions, len(artifacts))  # bad values fail before loading
        self.model_name = _name_of(pretrained)
        self._context_ends: ContextEnds | None = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(pretrained=resolve_pretrained(pretrained), device=device, **kwargs)
        self.model.eval()
        self.edits = InterventionSet.attach(
            self.model, artifacts, strength=strength, positions=positions
        )
        self.unedited = UneditedAnswers(unedited_answers)
        self.cost.attach(self.model, self.edits.switch)
        self.lifelong: LifelongSession | None = None
        self._warned_unedited = False
        try:
            if editor:
                self.edits.add(new_editor(editor, self.model, editor_params))
            if editor or edits:
                self.lifelong = start_session(
                    self.edits.editors[0] if editor else None,
                    list(zip(artifacts, self.edits.interventions, strict=True)),
                    edits,
                    num_edits,
                    eval_at,
                    self.model,
                    self.tokenizer,
                    resume_edits,
                )
                if save_edits:
                    art = self.lifelong.editor.to_artifact(
                        self.model, self.model_name, self.lifelong.stream
                    )
                    save_intervention(art, save_edits)
        except BaseException:
            self.close()
            raise
        run = {"overrides": self.edits.overrides}
        if self.lifelong is not None:
            run["lifelong"] = self.lifelong.key()
        self.fingerprint = fingerprint(artifacts, run)
        pairing.announce_model(self)

    @property
    def switch(self) -> Switch:
        return self.edits.switch

    def close(self) -> None:
        """Detach every hook; the model is the unedited one afterwards."""
        self.cost.detach()
        self.edits.close()

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Generate, OFF-tagged requests with the switch off, in the lifelong session's order."""
        return self._in_edit_order(requests, lambda batch: self._generate_now(batch, disable_tqdm))

    def _generate_now(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        if self.edits.empty and self.lifelong is None:
            return self._generate_each_once(requests, disable_tqdm)

        def answer(enabled: bool, group: list[Instance]) -> list[str]:
            with self.switch.set(enabled and self.switch.enabled):
                return self.unedited.reuse(
                    group,
                    lambda todo: super(EditedHFLM, self).generate_until(
                        [untagged(r) for r in todo], disable_tqdm=disable_tqdm
                    ),
                )

        return in_groups(requests, lambda r: pairing.is_enabled(tags_of(r)), answer)

    def _generate_each_once(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        """With nothing attached, ON is OFF: a paired task's two halves are one generation."""
        texts, repeated = once_per_prompt(
            requests,
            lambda todo: super(EditedHFLM, self).generate_until(todo, disable_tqdm=disable_tqdm),
        )
        if repeated and not self._warned_unedited:
            self._warned_unedited = True
            logger.warning(
                "edited_hf has no intervention=, editor= or edits=: the edited half of each paired"
                " task is the unedited model, so edit metrics (concept_emotion's success_rate,"
                " changed) are 0 by construction; each prompt is generated once"
            )
        return texts

    def _in_edit_order(self, requests: list[Instance], compute: Any) -> list:
        """`compute` the answers, each in the editor state the lifelong session asks for; the
        cost meter counts the passes of `compute`, not those of editing."""

        def measured(batch: list[Instance]) -> list:
            with self.cost.answering():
                return compute(batch)

        if self.lifelong is None:
            return measured(requests)
        return self.lifelong.answer(requests, [tags_of(r) for r in requests], measured)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):  # type: ignore[no-untyped-def]
        with self.switch.generating(context.shape[1]):
            out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        self.cost.count_generated(out[:, context.shape[1] :], self.tokenizer.pad_token_id)
        return out

    # ------------------------------------------------------------------ scoring
    def loglikelihood(
        self, requests: list[Instance], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """Score requests; those tagged by `pairing.baseline_loglikelihood` run switched OFF."""
        return self._scored(requests, super().loglikelihood, disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False):  # type: ignore[no-untyped-def]
        """Whole-text scores (perplexity): no prompt, so `positions=last` edits every token.
        Requests tagged by `pairing.baseline_loglikelihood` run switched OFF."""
        with self.switch.scoring_rolling():
            return self._scored(requests, super().loglikelihood_rolling, disable_tqdm)

    def _scored(self, requests: list[Instance], score: Any, disable_tqdm: bool) -> list[Any]:
        """`score` requests in groups by their tags: OFF ones with the switch off, ones naming
        a target with only that target's interventions on, ones asking for per-token scores
        with `score_tokens`, the others as they are; in the lifelong session's order."""

        def state_of(request: Instance) -> tuple[bool, str | None, bool]:
            args = request.args
            return pairing.is_enabled(args), pairing.target_of(args), pairing.wants_tokens(args)

        def answer(state: tuple[bool, str | None, bool], group: list[Instance]) -> list[Any]:
            enabled, target, tokens = state
            if state == (True, None, False):
                return score(group, disable_tqdm=disable_tqdm)
            group_score = self._score_tokens if tokens else score
            with (
                self.switch.set(enabled and self.switch.enabled),
                self.edits.only(target),
                self._no_partial_cache(),
            ):
                return self.unedited.reuse(
                    group,
                    lambda todo: group_score(
                        [untagged(r) for r in todo], disable_tqdm=disable_tqdm
                    ),
                )

        return self._in_edit_order(requests, lambda batch: in_groups(batch, state_of, answer))

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

    def _score_tokens(self, requests: list[Instance], disable_tqdm: bool = True) -> list[list]:
        """Per-token teacher-forced scores (`TokenScore.as_json`) of (context, continuation)."""
        pairs = [self._encode_pair(*r.args[:2]) for r in requests]

        def forward(inputs: torch.Tensor, last_prompt: torch.Tensor) -> torch.Tensor:
            with self.switch.scoring(last_prompt):
                return self._model_call(inputs)

        scores = score_tokens(pairs, forward, self.max_length, self.device)
        return [s.as_json() for s in scores]

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

        lm-eval keys its cache by request arguments only; we move this
        model's entries into a SQLite table named after the intervention fingerprint.
        """
        if cache_hook.dbdict is not None:
            _use_table(cache_hook.dbdict, f"ce_bench_{self.fingerprint}")
        super().set_cache_hook(cache_hook)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        attached = zip(self.edits.artifacts, self.edits.interventions, strict=True)
        info["ce_bench"] = RunConfig(
            base_model=self.model_name,
            fingerprint=self.fingerprint,
            interventions=[AttachedArtifact.of(a, i.params) for a, i in attached],
            versions=stack_versions(),
            lifelong=self.lifelong.describe() if self.lifelong is not None else None,
        ).to_json()
        info["ce_bench"]["cost"] = self.cost.report(
            self.lifelong.edit_seconds if self.lifelong is not None else None,
            _locate_seconds(self.edits.artifacts),
        )
        return info


def _locate_seconds(artifacts: list[Artifact]) -> float | None:
    """The seconds locating the attached artifacts took, when each recorded it."""
    seconds = [a.provenance.seconds for a in artifacts]
    if not seconds or None in seconds:
        return None
    return round(sum(s for s in seconds if s is not None), 3)


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


def _use_table(dbdict: Any, table: str) -> None:
    """Point a sqlitedict at another table of the same file (created if missing)."""
    dbdict.tablename = table
    dbdict.conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (key TEXT PRIMARY KEY, value BLOB)')
    dbdict.conn.commit()
