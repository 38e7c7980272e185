import math

import numpy as np
import pytest

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
