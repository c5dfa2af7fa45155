"""Paired requests: the same request with the intervention OFF (baseline) and ON, in one run.

A task that compares the edited model with the unedited one asks for both answers itself, so
both reach its `process_results` together:

- generation: two `generate_until` requests; the baseline's gen_kwargs carry
  `{"ce_bench_intervention": "off"}` (`baseline_generation`). `edited_hf` generates OFF and ON
  requests in separate batches and removes its keys before calling `generate()`.
- loglikelihood and loglikelihood_rolling: the baseline request's arguments get one more,
  last element `{"ce_bench_intervention": "off"}` (`baseline_loglikelihood`); `edited_hf` scores
  those with the switch off.

A scoring request may also name the class whose intervention it measures
(`for_target(args, "Sports")`): with several artifacts loaded (`intervention=a+b+...`), only
those located for that target (and those located for none) are on for it. The erasure tasks use
this to measure every class's erasure in one run. A request about one record of a lifelong edit
stream says which (`for_edit`, `edit_generation`), and scoring ones get per-token answers, which
any scoring request can ask for (`per_token`).
All of a request's tags live in one dict (`tag_of`).

Only the baseline is tagged; the ON request is an ordinary request. Tags are part of the request
arguments, so lm-eval's `--use_cache` keys OFF and ON answers apart. Tasks call
`require_edited_hf` when they build requests: any other model type gets a clear error.

Some scores need the unedited model on text that exists only after generation (the perplexity
of an edited output, Unified Concept Editing A.8). `unedited_perplexity` asks this process's
`edited_hf` model for them while the task scores its results (each process of a multi-process run
has its own).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

SWITCH_KEY = "ce_bench_intervention"
TARGET_KEY = "ce_bench_target"
EDIT_KEY, STREAM_KEY = "ce_bench_edit", "ce_bench_stream"
CHECKPOINT_KEY = "ce_bench_checkpoint"
DETAIL_KEY, TOKENS = "ce_bench_detail", "tokens"
TAG_KEYS = (SWITCH_KEY, TARGET_KEY, EDIT_KEY, STREAM_KEY, CHECKPOINT_KEY, DETAIL_KEY)
OFF = "off"
BASE_SUFFIX = "_base"  # a paired task reports metric m of the unedited model as m_base
_live_models: weakref.WeakSet[Any] = weakref.WeakSet()


def announce_model(model: Any) -> None:
    """Called by `edited_hf` when it is built: paired tasks may now run in this process."""
    _live_models.add(model)


def require_edited_hf(task_name: str) -> None:
    """Raise unless an `edited_hf` model exists in this process."""
    if not _live_models:
        raise RuntimeError(
            f"task {task_name!r} scores each document with the intervention off and on in one run;"
            " it needs `--model edited_hf` (ce-bench's model type), not another model type"
        )


def unedited_perplexity(pairs: list[tuple[str, str]]) -> list[float]:
    """Perplexity of each (context, continuation) continuation under the unedited model.

    An empty continuation has no perplexity: it gets `inf`.
    """
    from lm_eval.api.instance import Instance

    require_edited_hf("perplexity under the unedited model")
    model = next(iter(_live_models))
    scored = [(i, pair) for i, pair in enumerate(pairs) if pair[1].strip()]
    requests = [
        Instance("loglikelihood", doc={}, arguments=baseline_loglikelihood(pair), idx=0)
        for _, pair in scored
    ]
    results = model.loglikelihood(requests, disable_tqdm=True) if requests else []
    perplexities = [math.inf] * len(pairs)
    for (i, (_, continuation)), (logprob, _) in zip(scored, results, strict=True):
        perplexities[i] = math.exp(-logprob / max(1, len(model.tok_encode(continuation))))
    return perplexities


def baseline_generation(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Generation kwargs of the switched-OFF copy of a request."""
    return {**gen_kwargs, SWITCH_KEY: OFF}


def baseline_loglikelihood(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Arguments of the switched-OFF copy of a loglikelihood or loglikelihood_rolling request."""
    return with_tag(args, {SWITCH_KEY: OFF})


def for_target(args: tuple[Any, ...], target: str) -> tuple[Any, ...]:
    """Arguments of a switched-ON scoring request that measures the intervention for `target`."""
    return with_tag(args, {TARGET_KEY: target})


def for_edit(
    args: tuple[Any, ...], index: int, stream: str, checkpoint: int | None = None
) -> tuple[Any, ...]:
    """Arguments of a scoring request about record `index` of the edit stream with digest
    `stream`, answered with a per-token score (`ce_bench.scoring.TokenScore`).

    The model checks the digest against the stream it edited (a mismatch is an error) and, with
    `eval_at=immediate`, answers the request right after edit `index`; with a `checkpoint` (of
    an `eval_at=1+10+...` schedule), after that many edits."""
    tag = {EDIT_KEY: index, STREAM_KEY: stream, DETAIL_KEY: TOKENS}
    return with_tag(args, tag if checkpoint is None else {**tag, CHECKPOINT_KEY: checkpoint})


def per_token(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Arguments of a scoring request answered with a per-token score
    (`ce_bench.scoring.TokenScore`) instead of lm-eval's (logprob, is_greedy)."""
    return with_tag(args, {DETAIL_KEY: TOKENS})


def edit_generation(gen_kwargs: dict[str, Any], index: int, stream: str) -> dict[str, Any]:
    """Generation kwargs of a request about record `index` of the edit stream `stream`."""
    return {**gen_kwargs, EDIT_KEY: index, STREAM_KEY: stream}


def with_tag(args: tuple[Any, ...], tag: dict[str, Any]) -> tuple[Any, ...]:
    """Scoring arguments with `tag`'s keys added to the request's tag."""
    return (*strip_tag(args), {**tag_of(args), **tag})


def tag_of(args: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
    """The ce-bench tag of scoring arguments, or of generation kwargs (empty if none)."""
    if isinstance(args, dict):
        return {k: v for k, v in args.items() if k in TAG_KEYS}
    return dict(args[-1]) if args and isinstance(args[-1], dict) else {}


def target_of(args: tuple[Any, ...]) -> str | None:
    """The target a scoring request names, if any."""
    return tag_of(args).get(TARGET_KEY)


def edit_of(tag: dict[str, Any]) -> tuple[int, str] | None:
    """(record index, stream digest) of a tagged request about an edit, if it is one."""
    return (tag[EDIT_KEY], tag[STREAM_KEY]) if EDIT_KEY in tag else None


def checkpoint_of(tag: dict[str, Any]) -> int | None:
    """The checkpoint a tagged request about an edit is asked at, if any."""
    return tag.get(CHECKPOINT_KEY)


def wants_tokens(args: tuple[Any, ...]) -> bool:
    """True if a scoring request asks for a per-token score."""
    return tag_of(args).get(DETAIL_KEY) == TOKENS


def untagged_kwargs(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Generation kwargs without ce-bench's keys (generate() rejects them)."""
    return {k: v for k, v in gen_kwargs.items() if k not in TAG_KEYS}


def is_enabled(args: tuple[Any, ...] | dict[str, Any]) -> bool:
    """True unless the scoring arguments' (or generation kwargs') tag says OFF."""
    return _enabled(tag_of(args).get(SWITCH_KEY, "on"))


def strip_tag(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Scoring arguments as HFLM expects them: without the tag."""
    return tuple(args[:-1]) if args and isinstance(args[-1], dict) else tuple(args)


def _enabled(value: str) -> bool:
    if value not in ("on", OFF):
        raise ValueError(f"{SWITCH_KEY} must be 'on' or 'off', got {value!r}")
    return value == "on"
