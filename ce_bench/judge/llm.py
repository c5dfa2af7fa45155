"""The part of an LLM judge that does not depend on the API: prompt, cache, parsing, counting.

A backend for a new API subclasses `LLMJudge`, implements `complete(prompt)` and extends
`reply_settings()` with whatever else its replies depend on; it inherits the A.5 prompt (Unified
Concept Editing), the persistent reply cache and the rule that a failed request or an unparseable
reply is a counted failure, never a score, and is not cached.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from ce_bench.judge.base import PARSE_FAILURE, Judge, JudgeOptions, Rating
from ce_bench.judge.cache import Completion, ReplyCache, ReplyKey, ReplySettings
from ce_bench.judge.prompt import PROMPT_VERSION, JudgeParseError, build_prompt, parse_scores

API_FAILURE_PREFIX = "api: "


class JudgeAPIError(Exception):
    """A request to the judge model that failed for good (after any retries).

    `reason` is short and stable ("status 500", "timeout", "connection") so failures can be
    counted by reason.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class LLMJudgeOptions(JudgeOptions):
    """Options of every judge backed by a language model.

    Args:
        model: the judge model's name, as the API knows it; part of every cache key.
        cache_path: the sqlite reply cache (default `$CE_BENCH_HOME/judge_cache.sqlite`).
    """

    model: str = ""
    cache_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("judge option model must name the judge model")


class LLMJudge(Judge):
    """A judge that asks a language model the A.5 question, one request per order."""

    Options = LLMJudgeOptions
    options: LLMJudgeOptions
    counters = (*Judge.counters, "calls", "cache_hits", "prompt_tokens", "completion_tokens")

    def __init__(self, options: LLMJudgeOptions) -> None:
        super().__init__(options)
        self.cache = ReplyCache(options.cache_path)

    @abstractmethod
    def complete(self, prompt: str) -> Completion:
        """The model's reply to `prompt`; raises JudgeAPIError when the request fails for good."""

    def reply_settings(self) -> ReplySettings:
        """Everything besides the request that decides the reply: part of every cache key, so a
        reply is only served to a judge that would be asked the same way. A backend extends it
        (server, sampling) rather than the cache knowing about backends."""
        return {"model": self.options.model, "prompt_version": PROMPT_VERSION}

    def rate(self, emotion: str, first: str, second: str) -> Rating:
        key = ReplyKey(self.reply_settings(), emotion, first, second)
        completion = self.cache.get(key)
        if completion is not None:
            self.count(cache_hits=1)
            return self._rating(completion)
        try:
            completion = self.complete(build_prompt(emotion, first, second))
        except JudgeAPIError as err:
            return self._failed(API_FAILURE_PREFIX + err.reason)
        self.count(
            calls=1,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
        )
        rating = self._rating(completion)
        if rating.scores is not None:  # a failure is not kept, so the next run asks again
            self.cache.put(key, completion)
        return rating

    def _rating(self, completion: Completion) -> Rating:
        try:
            return Rating(parse_scores(completion.text))
        except JudgeParseError:
            return self._failed(PARSE_FAILURE)

    def _failed(self, reason: str) -> Rating:
        self.count_failure(reason)
        return Rating(None, reason)

    def describe(self) -> dict[str, Any]:
        return {**self.reply_settings(), "cache": str(self.cache.path)}
