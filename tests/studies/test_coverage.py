"""Coverage of the study's intervals, measured by simulation with a known truth (issue 15).

Tolerances come from the simulation's own Monte-Carlo error: a method "has" coverage c when c
lies within 4 binomial standard errors of the measured share (8000 studies: +-0.0097 at 0.95).
"""
import math

import numpy as np
import pytest

from taskloc.errors import ConfigError
from taskloc.studies import stats
from taskloc.studies.coverage import simulate_coverage, simulate_seed_means

STUDY_SIZES = [3, 4, 7]  # tasks, 3 seeds each, as the weight-delta study runs them


@pytest.mark.parametrize("n_tasks", STUDY_SIZES)
def test_the_interval_called_95_covers_95_at_the_studys_sizes(n_tasks):
    cov = simulate_coverage("t", n_tasks, 3, 50, n_sims=8000, seed=n_tasks)
    assert cov.nominal == 0.95 and cov.claimed == 0.95
    assert cov.consistent_with(0.95), f"t over {n_tasks} tasks: measured {cov.coverage:.4f} +- {cov.mc_se:.4f}"


def test_the_t_interval_holds_when_one_task_has_a_single_seed():
    cov = simulate_coverage("t", 3, (3, 3, 1), 50, n_sims=8000, seed=11)
    assert cov.n_seeds == (3, 3, 1)
    assert cov.consistent_with(0.95), f"measured {cov.coverage:.4f}"


@pytest.mark.parametrize(("n_tasks", "ceiling"), [(2, 0.60), (3, 0.80), (4, 0.84), (7, 0.91)])
def test_the_old_percentile_cluster_bootstrap_under_covers(n_tasks, ceiling):
    # What the weight-delta study reported as "95%": bootstrap_mean(per-run values, clusters=tasks).
    # Measured: ~0.52 / 0.75 / 0.79 / 0.87.
    cov = simulate_coverage("cluster_bootstrap", n_tasks, 3, 50, n_sims=2000, n_boot=1000, seed=n_tasks)
    assert cov.coverage < ceiling and not cov.consistent_with(0.95), f"measured {cov.coverage:.4f}"


@pytest.mark.parametrize("n_tasks", STUDY_SIZES)
def test_order_interval_delivers_the_exact_level_it_claims(n_tasks):
    cov = simulate_coverage("order", n_tasks, 3, 50, n_sims=8000, seed=20 + n_tasks)
    assert cov.claimed == pytest.approx(1 - 2 * 0.5**n_tasks)
    assert cov.consistent_with(cov.claimed), f"claimed {cov.claimed:.4f}, measured {cov.coverage:.4f}"


def test_hierarchical_bootstrap_is_short_of_95_at_3_tasks_in_its_worst_case():
    cov = simulate_coverage("hierarchical_bootstrap", 3, 3, 1, seed_sd=0.1, example_sd=0.0, n_sims=1000, n_boot=500, seed=3)
    assert cov.coverage < 0.85
    # and hierarchical_interval reports that figure as achieved, not 0.95
    iv = stats.hierarchical_interval(np.arange(9.0), [0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 1, 2] * 3, method="bootstrap")
    assert iv.achieved == pytest.approx(cov.coverage, abs=0.05) and iv.nominal == 0.95


def test_heavy_tails_keep_and_skew_costs_t_coverage():
    heavy = simulate_coverage("t", 3, 3, 50, task_dist="laplace", n_sims=8000, seed=5)
    skewed = simulate_coverage("t", 3, 3, 50, task_dist="skewed", n_sims=8000, seed=5)
    assert heavy.coverage > 0.95 - 4 * heavy.mc_se
    assert skewed.coverage < 0.93  # documented caveat: exact only for normal task effects


@pytest.mark.parametrize("dist", ["normal", "laplace", "skewed"])
def test_simulated_studies_have_the_variance_components_asked_for(dist):
    means, layout = simulate_seed_means(4, 3, 25, n_sims=40000, between_task_sd=1.5, seed_sd=0.5, example_sd=2.0, task_dist=dist, seed=1)
    assert means.shape == (40000, 4, 3) and layout.tolist() == [3, 3, 3, 3]
    task_means = means.mean(-1)  # (N, T)
    expected = 1.5**2 + (0.5**2 + 2.0**2 / 25) / 3  # between + (seed + example/E) / S
    assert task_means.mean() == pytest.approx(0.0, abs=4 * math.sqrt(expected / task_means.size))
    assert task_means.var() == pytest.approx(expected, rel=0.03)
    within = means - task_means[..., None]  # deviations of seeds from their task: (seed + example/E) * (S-1)/S
    assert within.var() == pytest.approx((0.5**2 + 2.0**2 / 25) * 2 / 3, rel=0.03)


def test_unequal_seed_layouts_pad_with_nan():
    means, layout = simulate_seed_means(3, (3, 1, 2), 10, n_sims=5, seed=0)
    assert layout.tolist() == [3, 1, 2]
    assert np.isnan(means[:, 1, 1:]).all() and np.isnan(means[:, 2, 2]).all() and np.isfinite(means[:, 0]).all()


def test_batched_cores_equal_the_single_study_functions():
    means, _ = simulate_seed_means(4, (3, 2, 3, 1), 20, n_sims=6, seed=2)
    task_means = np.nanmean(means, -1)
    _, lo, hi = stats.t_bounds(task_means, 0.95)
    _, olo, ohi, _ = stats.order_bounds(task_means, 0.95)
    for i in range(6):
        vals = [v for v in means[i].ravel() if np.isfinite(v)]
        tasks = [t for t in range(4) for s in range(3) if np.isfinite(means[i, t, s])]
        seeds = [s for t in range(4) for s in range(3) if np.isfinite(means[i, t, s])]
        iv = stats.hierarchical_interval(vals, tasks, seeds)
        assert (iv.lo, iv.hi) == pytest.approx((lo[i], hi[i]), rel=1e-12)
        ov = stats.hierarchical_interval(vals, tasks, seeds, method="order")
        assert (ov.lo, ov.hi) == (olo[i], ohi[i])
    # the old cluster bootstrap's core, batched, equals bootstrap_mean study by study on the same draws
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 9))
    clusters = np.repeat(np.arange(3), 3)
    sums = np.stack([np.bincount(clusters, weights=v) for v in values])
    counts = np.full((5, 3), 3.0)
    draws = np.stack([np.random.default_rng(s).integers(0, 3, size=(2000, 3)) for s in range(5)])
    blo, bhi = stats.cluster_percentile_bounds(sums, counts, draws, 0.95)
    for s in range(5):
        assert stats.bootstrap_mean(values[s], seed=s, clusters=clusters.tolist()) == (blo[s], bhi[s])


def test_simulation_is_deterministic_and_checks_its_input():
    a = simulate_coverage("cluster_bootstrap", 3, 3, 10, n_sims=200, n_boot=200, seed=9)
    assert a == simulate_coverage("cluster_bootstrap", 3, 3, 10, n_sims=200, n_boot=200, seed=9)
    assert a != simulate_coverage("cluster_bootstrap", 3, 3, 10, n_sims=200, n_boot=200, seed=10)
    with pytest.raises(ConfigError, match="unknown coverage method 'wald'; choose one of t, order, hierarchical_bootstrap, cluster_bootstrap"):
        simulate_coverage("wald", 3)
    with pytest.raises(ConfigError, match=r"n_seeds must be a whole number >= 1 or one such number per task \(3\), got \(3, 3\)"):
        simulate_coverage("t", 3, (3, 3))
    with pytest.raises(ConfigError, match="unknown task distribution 'cauchy'"):
        simulate_coverage("t", 3, task_dist="cauchy")
