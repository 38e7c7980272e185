import itertools
import math

import numpy as np
import pytest

from taskloc.errors import ConfigError
from taskloc.studies import stats
from taskloc.studies.stats import bootstrap_diff, bootstrap_mean, wilson


def test_wilson_matches_the_formula_and_stays_in_unit_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_bootstrap_interval_covers_the_mean_and_needs_two_values():
    lo, hi = bootstrap_mean([1.0, 2.0, 3.0, 4.0], seed=0)
    assert lo < 2.5 < hi
    assert all(math.isnan(v) for v in bootstrap_mean([5.0]))
    assert all(math.isnan(v) for v in bootstrap_diff([1.0], [2.0, 3.0]))


def test_cluster_bootstrap_is_wider_than_treating_values_as_independent():
    # Two clusters whose members are identical: 20 values, but only 2 independent units.
    values = [0.0] * 10 + [1.0] * 10
    clusters = ["a"] * 10 + ["b"] * 10
    naive = bootstrap_mean(values, seed=1)
    clustered = bootstrap_mean(values, seed=1, clusters=clusters)
    assert clustered[1] - clustered[0] > 2 * (naive[1] - naive[0])
    assert clustered == (0.0, 1.0)  # resampling 2 clusters: all-a, mixed or all-b
    assert all(math.isnan(v) for v in bootstrap_mean(values, clusters=["a"] * 20))


def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).normal(size=30)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)


# -- distributions --------------------------------------------------------------------------------

def _t_density(x, df):
    return math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x * x / df) ** (-(df + 1) / 2)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 6, 9])
def test_t_cdf_matches_numerical_integration_of_the_density(df):
    grid = np.linspace(0.0, 6.0, 60001)
    dens = np.array([_t_density(v, df) for v in grid])
    area = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(grid))])
    for t in (0.3, 1.0, 2.5, 6.0):
        i = round(t / 6.0 * 60000)
        assert stats.t_cdf(t, df) == pytest.approx(0.5 + area[i], abs=1e-8)
        assert stats.t_cdf(-t, df) == pytest.approx(0.5 - area[i], abs=1e-8)


def test_t_quantile_matches_closed_forms():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-11)
        a = 2 * p - 1
        assert stats.t_quantile(p, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), rel=1e-11)
        alpha = 4 * p * (1 - p)  # df = 4: t = 2 sqrt(q - 1), q = cos(arccos(sqrt(alpha)) / 3) / sqrt(alpha)
        q = math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha)
        assert stats.t_quantile(p, 4) == pytest.approx(2 * math.sqrt(q - 1), rel=1e-11)
        assert stats.t_quantile(1 - p, 4) == pytest.approx(-2 * math.sqrt(q - 1), rel=1e-11)


def test_binomial_tail_is_exact():
    assert stats.binomial_tail(3, 3) == 0.125
    assert stats.binomial_tail(4, 3) == 5 / 16
    assert stats.binomial_tail(7, 0) == 1.0 and stats.binomial_tail(7, 8) == 0.0
    assert stats.binomial_tail(5, 2, 0.025) == pytest.approx(1 - 0.975**5 - 5 * 0.025 * 0.975**4, rel=1e-12)


# -- hierarchical intervals -----------------------------------------------------------------------

def _nested_example():
    # task a: seeds 1, 2 with 2 and 3 examples; task b: one seed; task c: seeds 1, 2, 3 with one example each
    values = [1.0, 3.0, 4.0, 4.0, 7.0, 5.0, 6.0, -1.0, 0.0, 4.0]
    tasks = ["a"] * 5 + ["b"] * 2 + ["c"] * 3
    seeds = [1, 1, 2, 2, 2, 1, 1, 1, 2, 3]
    task_means = [np.mean([2.0, 5.0]), 5.5, 1.0]  # each seed, then each task, weighs the same
    return values, tasks, seeds, np.array(task_means)


def test_t_interval_on_task_means_by_hand():
    values, tasks, seeds, means = _nested_example()
    iv = stats.hierarchical_interval(values, tasks, seeds, level=0.95)
    half = 4.302652729749463 * means.std(ddof=1) / math.sqrt(3)
    assert iv.estimate == pytest.approx(means.mean(), rel=1e-12)
    assert (iv.lo, iv.hi) == pytest.approx((means.mean() - half, means.mean() + half), rel=1e-10)
    assert (iv.nominal, iv.achieved, iv.method, iv.n_units) == (0.95, 0.95, "t", 3)
    assert iv.basis == "t on 3 task means, 2 df: exact if task means are normal with equal precision"
    assert iv.as_tuple() == (iv.lo, iv.hi) and iv.to_dict()["achieved"] == 0.95
    assert iv.excludes(iv.hi + 1.0) and iv.excludes(iv.lo - 1.0) and not iv.excludes(iv.estimate)
    assert iv.label() == "t interval over 3 units, nominal 95%, achieved 95.0%"
    # Without seed labels a task's values are one seed: task a's mean becomes the mean of its 5 values.
    flat = stats.hierarchical_interval(values, tasks, level=0.9)
    assert flat.estimate == pytest.approx(np.mean([np.mean(values[:5]), 5.5, 1.0]))


def test_order_interval_reports_its_exact_level():
    values, tasks, seeds, means = _nested_example()
    iv = stats.hierarchical_interval(values, tasks, seeds, method="order")
    assert (iv.lo, iv.hi) == (means.min(), means.max())
    assert iv.achieved == 0.75 and iv.nominal == 0.95  # 3 tasks cannot do better without assumptions
    seven = stats.hierarchical_interval(list(range(7)), list("abcdefg"), method="order")
    assert (seven.lo, seven.hi, seven.achieved) == (0.0, 6.0, 1 - 2 / 128)
    # 20 tasks: order statistics 6 and 15 still reach 95%: 1 - 2 P(Bin(20, 1/2) <= 5) =
    # 1 - 2 (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20; the 7th and 14th would give 0.885
    assert stats.order_rank(20, 0.95) == (6, pytest.approx(1 - 2 * 21700 / 2**20, rel=1e-12))


def test_bootstrap_interval_is_seeded_and_says_what_it_achieves():
    values, tasks, seeds, _ = _nested_example()
    a = stats.hierarchical_interval(values, tasks, seeds, method="bootstrap", seed=4)
    assert a == stats.hierarchical_interval(values, tasks, seeds, method="bootstrap", seed=4)
    assert a.lo < a.estimate < a.hi
    assert 0.6 < a.achieved < 0.95  # 3 tasks (2, 1, 3 seeds): measured well short of the nominal 95%


def test_one_task_gives_no_interval_and_bad_input_is_named():
    iv = stats.hierarchical_interval([1.0, 2.0, 3.0], ["a"] * 3)
    assert math.isnan(iv.lo) and math.isnan(iv.hi) and math.isnan(iv.achieved) and iv.estimate == 2.0
    with pytest.raises(ConfigError, match="unknown interval method 'wald'; choose one of t, order, bootstrap"):
        stats.hierarchical_interval([1.0, 2.0], ["a", "b"], method="wald")
    with pytest.raises(ConfigError, match="confidence level 95 must lie strictly between 0 and 1"):
        stats.hierarchical_interval([1.0, 2.0], ["a", "b"], level=95)
    with pytest.raises(ValueError, match="tasks has 1 labels for 2 values"):
        stats.hierarchical_interval([1.0, 2.0], ["a"])


def test_per_task_intervals_and_agreement():
    values, tasks, seeds, _ = _nested_example()
    per = stats.per_task_intervals(values, tasks, seeds)
    assert list(per) == ["a", "b", "c"]
    assert per["a"].n_units == 2 and per["a"].method == "t (seeds)"
    half = 12.706204736174698 * np.std([2.0, 5.0], ddof=1) / math.sqrt(2)
    assert (per["a"].lo, per["a"].hi) == pytest.approx((3.5 - half, 3.5 + half))
    assert per["b"].method == "t (examples, one seed)" and "example noise only" in per["b"].basis
    assert per["c"].estimate == 1.0
    agree = stats.task_agreement(per, threshold=0.0)
    assert (agree.k_sign, agree.n, agree.p_sign, agree.smallest_p) == (3, 3, 0.125, 0.125)
    assert agree.k_interval == sum(iv.lo > 0 for iv in per.values())
    assert agree.p_interval == stats.binomial_tail(3, agree.k_interval, 0.025)
    below = stats.task_agreement(per, threshold=2.0, direction="below")
    assert below.k_sign == 1 and below.p_sign == 7 / 8
    assert agree.summary().startswith("3 of 3 tasks > 0 (exact sign test p = 0.125; 0.125 is the smallest 3 tasks allow)")


# -- permutation tests ----------------------------------------------------------------------------

def test_sign_flip_test_equals_brute_force_enumeration():
    a = np.array([0.3, 1.2, -0.1, 0.8, 0.5, 0.9])
    b = np.array([0.1, 0.7, 0.0, 0.2, 0.6, 0.1])
    d = a - b
    null = np.array([np.mean(np.array(s) * d) for s in itertools.product([-1, 1], repeat=d.size)])
    res = stats.paired_permutation_test(a, b)
    assert res.exact and res.n_permutations == 64 and res.statistic == pytest.approx(d.mean())
    assert res.p_value == pytest.approx(np.mean(np.abs(null) >= abs(d.mean()) - 1e-12))
    assert stats.paired_permutation_test(d, alternative="greater").p_value == pytest.approx(np.mean(null >= d.mean() - 1e-12))
    assert stats.paired_permutation_test([1.0, 2.0, 3.0], alternative="greater").p_value == 0.125


def test_sign_flip_monte_carlo_is_seeded_and_near_the_exact_value():
    d = np.random.default_rng(2).normal(0.3, 1.0, size=18)
    signs = 1.0 - 2.0 * ((np.arange(2**18)[:, None] >> np.arange(18)) & 1)
    exact = np.mean(np.abs((signs * d).mean(1)) >= abs(d.mean()) - 1e-12)
    mc = stats.paired_permutation_test(d, n_perm=20000, seed=1)
    assert not mc.exact and mc == stats.paired_permutation_test(d, n_perm=20000, seed=1)
    assert mc.p_value == pytest.approx(exact, abs=0.01)
    with pytest.raises(ConfigError, match="paired test needs equal lengths, got 2 and 3"):
        stats.paired_permutation_test([1.0, 2.0], [1.0, 2.0, 3.0])


def test_spearman_matches_ranks_and_exact_permutations():
    x = [1.0, 2.0, 2.0, 5.0, 7.0]
    y = [0.5, 0.1, 0.9, 3.0, 2.0]
    rx, ry = np.array([1, 2.5, 2.5, 4, 5]), np.array([2, 1, 3, 5, 4])
    rho = np.corrcoef(rx, ry)[0, 1]
    res = stats.spearman(x, y)
    assert res.statistic == pytest.approx(rho, rel=1e-12) and res.exact and res.n_permutations == 120
    null = np.array([np.corrcoef(rx, ry[list(p)])[0, 1] for p in itertools.permutations(range(5))])
    assert res.p_value == pytest.approx(np.mean(np.abs(null) >= abs(rho) - 1e-12))
    assert stats.spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], alternative="greater").p_value == pytest.approx(1 / 120)
    big = stats.spearman(np.arange(30), np.arange(30) ** 2, n_perm=2000, seed=0)
    assert big.statistic == pytest.approx(1.0) and big.p_value == pytest.approx(1 / 2001) and not big.exact
    const = stats.spearman([1, 1, 1], [1, 2, 3])
    assert math.isnan(const.statistic) and const.p_value == 1.0
