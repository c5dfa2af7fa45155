"""What every judge backend shares: the pairwise verdict, both-orders comparison, batching, usage.

Unified Concept Editing (section 4.1, Appendix A.5) rates an original and an edited generation side
by side and, because LLM judges favour one position, asks twice with the order swapped and averages.
A backend only says how to rate one ordered pair (`rate`); `Judge.compare` does the two orders and
the averaging, so no backend can get that part wrong.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from tqdm.auto import tqdm

PARSE_FAILURE = "parse"


@dataclass(frozen=True)
class Rating:
    """The outcome of one ordered request: (Sentence 1, Sentence 2) scores, or why there are none.

    `failure` is "parse" for a reply without valid scores, "api: <what>" for a failed request.
    """

    scores: tuple[int, int] | None
    failure: str | None = None

    def __post_init__(self) -> None:
        if (self.scores is None) == (self.failure is None):
            raise ValueError("a Rating has exactly one of scores and failure")


@dataclass(frozen=True)
class PairItem:
    """One comparison to make: the degree of `emotion` in `original` vs `edited`."""

    emotion: str
    original: str
    edited: str


@dataclass(frozen=True)
class PairVerdict:
    """Both orders' raw scores and the position-averaged score of each sentence.

    `original_first` is (original, edited) as rated with the original shown as Sentence 1;
    `edited_first` is (edited, original) as rated with the edited one shown first. When either
    order failed, `failure` holds the first reason and `original`/`edited` are None: a verdict
    with a failure is never a score.
    """

    original_first: tuple[int, int] | None
    edited_first: tuple[int, int] | None
    original: float | None
    edited: float | None
    failure: str | None

    @classmethod
    def from_ratings(cls, original_first: Rating, edited_first: Rating) -> PairVerdict:
        failure = original_first.failure or edited_first.failure
        if failure is not None or original_first.scores is None or edited_first.scores is None:
            return cls(original_first.scores, edited_first.scores, None, None, failure)
        (orig_a, edit_a), (edit_b, orig_b) = original_first.scores, edited_first.scores
        return cls(
            original_first.scores,
            edited_first.scores,
            original=(orig_a + orig_b) / 2,
            edited=(edit_a + edit_b) / 2,
            failure=None,
        )

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class JudgeOptions:
    """Options every backend takes (see `ce_bench.judge` for the user-facing names).

    Args:
        concurrency: how many pairs `compare_many` judges at once.
    """

    concurrency: int = 8

    def __post_init__(self) -> None:
        check_positive(self, "concurrency")


def check_positive(options: object, *names: str) -> None:
    """Raise ValueError naming the first of `names` whose value on `options` is not > 0."""
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"judge option {name} must be a positive number, got {value!r}")


class Judge(ABC):
    """Rates the degree of an emotion in an original and an edited sentence (Unified Concept Editing
    A.5).

    Subclasses set `name`, `Options` (a frozen JudgeOptions subclass) and `counters` (the usage
    counts they keep), implement `rate`, and register with `@register_judge`. Counting is
    thread-safe, so `compare_many` may run `rate` from several threads.

    Example:
        >>> judge = make_judge("lexicon")
        >>> verdict = judge.compare("anger", "I went home.", "I was furious and hated it.")
        >>> verdict.edited > verdict.original
        True
    """

    name: ClassVar[str]
    Options: ClassVar[type[JudgeOptions]] = JudgeOptions
    counters: ClassVar[tuple[str, ...]] = ("pairs", "failed_pairs")

    def __init__(self, options: JudgeOptions) -> None:
        self.options = options
        self._counts: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    @abstractmethod
    def rate(self, emotion: str, first: str, second: str) -> Rating:
        """Rate `first` (Sentence 1) and `second` (Sentence 2) in one request; never raises for a
        failed request or an unparseable reply, it returns a Rating with the failure instead."""

    def compare(self, emotion: str, original: str, edited: str) -> PairVerdict:
        """Rate the pair in both orders (original first, then edited first) and average."""
        original_first = self.rate(emotion, original, edited)
        edited_first = self.rate(emotion, edited, original)
        verdict = PairVerdict.from_ratings(original_first, edited_first)
        self.count(pairs=1, failed_pairs=0 if verdict.ok else 1)
        return verdict

    def compare_many(
        self,
        items: Sequence[PairItem],
        max_concurrency: int | None = None,
        progress: bool = True,
    ) -> list[PairVerdict]:
        """`compare` for each item, `max_concurrency` at a time (default: the `concurrency`
        option), with a progress bar; verdicts come back in the order of `items`."""
        workers = max_concurrency or self.options.concurrency
        bar = tqdm(total=len(items), desc=f"judge ({self.name})", disable=not progress)
        with bar, ThreadPoolExecutor(max_workers=workers) as pool:

            def run(item: PairItem) -> PairVerdict:
                verdict = self.compare(item.emotion, item.original, item.edited)
                bar.update(1)
                return verdict

            return list(pool.map(run, items))

    def count(self, **increments: int) -> None:
        """Add to the usage counters named in `counters` (thread-safe)."""
        unknown = set(increments) - set(self.counters)
        if unknown:
            raise KeyError(f"{type(self).__name__} has no counter {sorted(unknown)[0]!r}")
        with self._lock:
            self._counts.update(increments)

    def count_failure(self, reason: str) -> None:
        """Count one failed request or reply under `reason` ("parse", "api: status 500", ...)."""
        with self._lock:
            self._failures[reason] += 1

    def usage(self) -> dict[str, Any]:
        """What identifies the judge (`describe()`), its counters and failures by reason, for the
        results JSON."""
        with self._lock:
            counts = {name: self._counts[name] for name in self.counters}
            failures = dict(self._failures)
        return {"judge": self.name, **self.describe(), **counts, "failures": failures}

    def describe(self) -> dict[str, Any]:
        """What identifies this judge's scores (model, prompt version, ...); for `usage()`."""
        return {}
