"""The statistics ce-bench decides with, against hand-computed values and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from ce_bench.stats import (
    BOOTSTRAP_RESAMPLES,
    binomial_tail,
    bootstrap_ci,
    compare_paired,
    compare_weighted,
    holm,
    mcnemar,
    sign_flip,
    unpaired_detectable_drop,
    unpaired_interval,
)


def test_mcnemar_on_hand_computed_two_by_two_tables() -> None:
    assert mcnemar(6, 0) == (1 / 64, 2 / 64)  # six flips to wrong, none back
    assert mcnemar(3, 3) == (42 / 64, 1.0)  # P(X >= 3 | 6) = (20 + 15 + 6 + 1) / 64
    assert mcnemar(0, 0) == (1.0, 1.0)
    assert mcnemar(0, 5) == (1.0, 2 / 32)


@pytest.mark.parametrize(("worse", "better"), [(7, 2), (12, 9), (1, 14), (40, 25)])
def test_mcnemar_equals_scipys_exact_binomial_test(worse: int, better: int) -> None:
    n = worse + better
    one, two = mcnemar(worse, better)
    assert one == pytest.approx(scipy.stats.binomtest(worse, n, alternative="greater").pvalue)
    assert two == pytest.approx(scipy.stats.binomtest(worse, n).pvalue)
    assert binomial_tail(0, n) == 1.0


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_sign_flip_enumerates_every_sign_pattern_for_few_documents() -> None:
    # patterns of [1, 2]: sums 3, -1, 1, -3
    assert sign_flip(np.array([1.0, 2.0])) == (1.0, 0.5)
    assert sign_flip(np.array([-1.0, -2.0])) == (0.25, 0.5)
    assert sign_flip(np.array([0.0, 0.0])) == (1.0, 1.0)


@pytest.mark.parametrize("n", [10, 40])
def test_sign_flip_agrees_with_scipys_paired_permutation_test(n: int) -> None:
    rng = np.random.default_rng(n)
    d = rng.normal(-0.3, 1.0, size=n)
    ours = sign_flip(d)
    for alternative, p in zip(("less", "two-sided"), ours, strict=True):
        theirs = scipy.stats.permutation_test(
            (d,), np.mean, permutation_type="samples", alternative=alternative,
            n_resamples=20_000 if n > 16 else np.inf, random_state=1,
        ).pvalue  # fmt: skip
        assert p == pytest.approx(theirs, abs=0.02 if n > 16 else 1e-9)


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_means() -> None:
    d = np.array([0.0, -1.0, -1.0, 0.5, 0.0, -0.5, 1.0, -1.0])
    rng = np.random.default_rng(0)
    means = [d[rng.integers(0, d.size, size=d.size)].mean() for _ in range(BOOTSTRAP_RESAMPLES)]
    assert bootstrap_ci(d) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_ci(np.full(5, 0.2)) == pytest.approx((0.2, 0.2))


def test_twelve_point_drop_on_fifty_items_is_seen_by_the_paired_test() -> None:
    """The issue's case: acc 0.30, six right answers turned wrong, none back."""
    base = [1.0] * 15 + [0.0] * 35
    edited = [0.0] * 6 + [1.0] * 9 + [0.0] * 35
    result = compare_paired(base, edited)
    assert result.delta == pytest.approx(-0.12) and result.discordant == (6, 0)
    assert result.p_worse == pytest.approx(1 / 64) and result.test == "mcnemar"
    assert result.ci[1] < 0
    se = np.sqrt(0.3 * 0.7 / 49)
    assert unpaired_detectable_drop(se, se) > 0.12  # what the unpaired rule needed: blind


def test_lower_is_better_metrics_count_a_rise_as_worse() -> None:
    base, edited = [10.0, 12.0, 9.0, 11.0], [13.0, 15.0, 12.0, 14.0]
    result = compare_paired(base, edited, higher_is_better=False)
    assert result.delta == pytest.approx(3.0) and result.test == "sign-flip"
    assert result.p_worse == pytest.approx(1 / 16)  # only the observed pattern is that bad
    assert compare_paired(base, edited, higher_is_better=True).p_worse == 1.0


def test_documents_scored_in_only_one_state_are_left_out() -> None:
    result = compare_paired([1.0, float("nan"), 0.0], [0.0, 1.0, 0.0])
    assert result.n == 2 and result.discordant == (1, 0)
    with pytest.raises(ValueError, match="one value per document"):
        compare_paired([1.0, 0.0], [1.0])


def test_perplexity_comparison_bootstraps_the_corpus_metric_and_tests_per_word_change() -> None:
    base_ll = np.array([-100.0, -50.0, -80.0, -120.0])
    words = np.array([40.0, 20.0, 30.0, 50.0])
    edited_ll = base_ll - words * 0.1  # every text 0.1 nats per word less likely

    def perplexity(ll: float, n: float) -> float:
        return float(np.exp(-ll / n))

    result = compare_weighted(base_ll, edited_ll, words, perplexity)
    expected = perplexity(edited_ll.sum(), words.sum()) - perplexity(base_ll.sum(), words.sum())
    assert result.delta == pytest.approx(expected) and result.delta > 0
    assert result.ci[0] > 0 and result.p_worse == pytest.approx(1 / 16)
    assert compare_weighted(base_ll, base_ll, words, perplexity).p_worse == 1.0


def test_unpaired_interval_is_the_normal_interval_and_needs_both_stderrs() -> None:
    (low, high), p = unpaired_interval(0.1, 0.05, 0.05)
    half = 1.959964 * (0.05**2 * 2) ** 0.5
    assert (low, high) == pytest.approx((0.1 - half, 0.1 + half))
    assert p == pytest.approx(scipy.stats.norm.sf(0.1 / (0.05 * 2**0.5)) * 2)
    (low, high), p = unpaired_interval(0.4, None, 0.1)  # one document: lm-eval has no stderr
    assert np.isnan(low) and np.isnan(high) and p is None
