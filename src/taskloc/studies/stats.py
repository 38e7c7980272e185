"""Uncertainty for verdicts: Wilson intervals for proportions and a percentile bootstrap of the
mean that can resample whole clusters (e.g. all seeds of one task together, since seeds of one
task are not independent evidence). Everything is seeded so a run's intervals are reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
NAN_INTERVAL = (float("nan"), float("nan"))


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 and 1)."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean(values: Sequence[float], seed: int = 0, clusters: Sequence | None = None,
                   n_boot: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    clusters: one label per value; when given, whole clusters are resampled (a cluster
    bootstrap), so the interval reflects the number of clusters, not of values. Fewer than two
    values (or clusters) give (nan, nan): there is no interval to be had.
    """
    x = np.asarray(values, dtype=np.float64)
    labels = list(range(x.size)) if clusters is None else list(clusters)
    groups = sorted(set(labels), key=str)
    if x.size < 2 or len(groups) < 2:
        return NAN_INTERVAL
    index = {g: i for i, g in enumerate(groups)}
    member = np.array([index[g] for g in labels])
    sums = np.bincount(member, weights=x, minlength=len(groups))  # per-cluster sum
    counts = np.bincount(member, minlength=len(groups)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(groups), size=(n_boot, len(groups)))  # clusters drawn with replacement
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def bootstrap_diff(a: Sequence[float], b: Sequence[float], seed: int = 0, n_boot: int = 2000,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for two *independent* samples (for
    paired data, bootstrap the per-pair differences with bootstrap_mean instead)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    da = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    db = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))
