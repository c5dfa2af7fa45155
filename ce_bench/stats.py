"""How ce-bench decides: paired tests and intervals over the same documents.

An edit is measured on the same documents as the unedited model (a paired task, or two runs with
`--log_samples`), so the question "did it get worse" is asked of the per-document differences,
not of two means with their own standard errors. 0/1 metrics (acc, exact_match) use the exact
McNemar test, i.e. a binomial test on the discordant documents; continuous per-document metrics
a sign-flip permutation test (exact up to `EXACT_UP_TO` documents). Intervals are seeded
percentile bootstrap intervals of the mean difference. Several metrics in one decision are
corrected with Holm's step-down method.

Example:
    >>> result = compare_paired([1, 1, 0, 1], [0, 1, 0, 1], higher_is_better=True)
    >>> result.delta, result.discordant, result.p_worse
    (-0.25, (1, 0), 0.5)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
PERMUTATIONS = 10_000  # Monte Carlo sign flips when exact enumeration is too large
EXACT_UP_TO = 16  # documents with a nonzero difference: 2**16 sign patterns, enumerated
LEVEL = 0.95
SEED = 0


def binomial_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2), exactly."""
    if successes <= 0:
        return 1.0
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials


def mcnemar(worse: int, better: int) -> tuple[float, float]:
    """Exact McNemar p-values (one-sided "worse", two-sided) from the discordant counts: `worse`
    documents right before and wrong after, `better` the other way round."""
    n = worse + better
    one_sided = binomial_tail(worse, n)
    two_sided = min(1.0, 2 * binomial_tail(max(worse, better), n)) if n else 1.0
    return one_sided, two_sided


def sign_flip(differences: np.ndarray, seed: int = SEED) -> tuple[float, float]:
    """Permutation p-values (one-sided "mean below 0", two-sided) of paired differences: under
    no effect each difference is as likely negative as positive. Exact over every sign pattern
    up to EXACT_UP_TO nonzero differences, else PERMUTATIONS seeded random patterns."""
    d = differences[differences != 0]
    if d.size == 0:
        return 1.0, 1.0
    observed = d.sum()
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1, -1), repeat=d.size)), dtype=float)
        sums = signs @ d
        below = np.mean(sums <= observed + 1e-12)
        apart = np.mean(np.abs(sums) >= abs(observed) - 1e-12)
        return float(below), float(apart)
    rng = np.random.default_rng(seed)
    sums = (rng.choice((1.0, -1.0), size=(PERMUTATIONS, d.size)) * d).sum(axis=1)
    below = (np.sum(sums <= observed + 1e-12) + 1) / (PERMUTATIONS + 1)
    apart = (np.sum(np.abs(sums) >= abs(observed) - 1e-12) + 1) / (PERMUTATIONS + 1)
    return float(below), float(apart)


def bootstrap_ci(
    differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval (LEVEL) of the mean paired difference, resampling
    documents with replacement; seeded, so a board is reproducible."""
    if differences.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)  # the same draws as bootstrap_interval, all at once
    means = differences[rng.integers(0, differences.size, size=(resamples, differences.size))]
    return _percentiles(means.mean(axis=1))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval (LEVEL) of `statistic(document indices)` over `n` paired
    documents resampled with replacement (both states of a document move together)."""
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    return _percentiles(np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)]))


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: reject where adjusted <= alpha controls the chance
    of any false rejection among the metrics at alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedComparison:
    """A metric of the same documents, unedited (base) vs edited (candidate).

    `delta` is candidate - base (negative: lower). `p_worse` tests "the candidate is worse" in
    the metric's direction, `p_two_sided` "they differ"; `discordant` is (worse, better) for
    0/1 metrics, None for continuous ones.
    """

    n: int
    base: float
    candidate: float
    delta: float
    ci: tuple[float, float]
    p_worse: float
    p_two_sided: float
    discordant: tuple[int, int] | None
    test: str  # "mcnemar" or "sign-flip"


def compare_paired(
    base: Sequence[float], candidate: Sequence[float], higher_is_better: bool = True
) -> PairedComparison:
    """Paired test and interval of one metric over documents given in the same order."""
    a, b = np.asarray(base, dtype=float), np.asarray(candidate, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired values need one value per document each, got {a.shape}, {b.shape}"
        )
    keep = np.isfinite(a) & np.isfinite(b)  # a document scored in only one state is not paired
    a, b = a[keep], b[keep]
    differences = b - a
    oriented = differences if higher_is_better else -differences  # negative: worse
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        worse, better = int(np.sum(oriented < 0)), int(np.sum(oriented > 0))
        p_worse, p_two = mcnemar(worse, better)
        discordant: tuple[int, int] | None = (worse, better)
        test = "mcnemar"
    else:
        p_worse, p_two = sign_flip(oriented)
        discordant, test = None, "sign-flip"
    return PairedComparison(
        n=int(a.size),
        base=_mean(a),
        candidate=_mean(b),
        delta=_mean(differences),
        ci=bootstrap_ci(differences),
        p_worse=p_worse,
        p_two_sided=p_two,
        discordant=discordant,
        test=test,
    )


def compare_weighted(
    base: np.ndarray,
    candidate: np.ndarray,
    weights: np.ndarray,
    aggregate: Callable[[float, float], float],
) -> PairedComparison:
    """Paired comparison of a corpus-level metric such as perplexity, built from per-document
    log-likelihoods and weights (words, bytes): `aggregate(sum of loglikelihoods, sum of
    weights)`. Worse means the texts became less likely. The test is the sign flip on the
    per-document change in loglikelihood per word or byte; the interval is the bootstrap of the
    aggregate's difference over resampled documents."""
    a, b, w = (np.asarray(x, dtype=float) for x in (base, candidate, weights))
    keep = np.isfinite(a) & np.isfinite(b) & (w > 0)
    a, b, w = a[keep], b[keep], w[keep]

    def delta(index: np.ndarray) -> float:
        total = w[index].sum()
        return aggregate(b[index].sum(), total) - aggregate(a[index].sum(), total)

    everything = np.arange(a.size)
    p_worse, p_two = sign_flip((b - a) / w)  # negative: the edited model finds a text less likely
    return PairedComparison(
        n=int(a.size),
        base=aggregate(a.sum(), w.sum()) if a.size else math.nan,
        candidate=aggregate(b.sum(), w.sum()) if a.size else math.nan,
        delta=delta(everything) if a.size else math.nan,
        ci=bootstrap_interval(delta, a.size),
        p_worse=p_worse,
        p_two_sided=p_two,
        discordant=None,
        test="sign-flip",
    )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def unpaired_interval(
    delta: float, stderr_a: float | None, stderr_b: float | None
) -> tuple[tuple[float, float], float | None]:
    """The normal-approximation LEVEL interval of a difference of two independent means and
    its two-sided p-value: the fallback where documents are not paired. Without both stderrs
    (lm-eval writes "N/A" for one document, or for perplexity) nothing can be said: a NaN
    interval and p None, never a spuriously small p."""
    if stderr_a is None or stderr_b is None or not math.isfinite(stderr_a + stderr_b):
        return (math.nan, math.nan), None
    se = math.hypot(stderr_a, stderr_b)
    if se == 0:
        return (delta, delta), None
    z = NormalDist().inv_cdf(1 - (1 - LEVEL) / 2)
    p = 2 * (1 - NormalDist().cdf(abs(delta) / se))
    return (delta - z * se, delta + z * se), p


def unpaired_detectable_drop(stderr_base: float | None, stderr_candidate: float | None) -> float:
    """The smallest drop the unpaired rule (more than two combined standard errors) can see: a
    gate without per-document samples is blind to anything smaller. A missing stderr counts 0."""
    return 2 * math.hypot(stderr_base or 0.0, stderr_candidate or 0.0)
