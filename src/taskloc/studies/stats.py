"""Uncertainty for verdicts, honest about the number of independent units behind it.

A study's evidence is nested: tasks, then seeds (fine-tunes) within a task, then examples within a
seed. Only tasks are independent draws from "the tasks we care about", so an interval for the
mean over tasks rests on ``n_tasks`` units, however many seeds and examples sit below them.

Which function to use (coverage = share of simulated studies whose interval held the true mean,
measured by ``taskloc.studies.coverage.simulate_coverage`` with normal task effects, 3 seeds per
task, 4000 simulated studies; the tests in tests/studies/test_coverage.py re-measure these):

===============================================  =========  =========  =========
nominal 95%, by number of tasks                   3 tasks    4 tasks    7 tasks
===============================================  =========  =========  =========
``hierarchical_interval(method="t")``            0.95       0.95       0.95       exact for normal task means
``hierarchical_interval(method="order")``        0.75       0.875      0.984      exact for any continuous symmetric law
``hierarchical_interval(method="bootstrap")``    0.78-0.98  0.87-0.99  0.93-0.99  two-level, expanded percentile (*)
``bootstrap_mean(..., clusters=tasks)`` (old)    ~0.75      ~0.80      ~0.88      percentile cluster bootstrap
===============================================  =========  =========  =========

(*) rising with seed noise relative to the spread between tasks (0.1x to 4x). The t-interval is
exact for normal task effects, conservative for heavy-tailed ones (Laplace: 0.96-0.97) and short
for strongly skewed ones (centred exponential: ~0.90 at 3-7 tasks).

- ``hierarchical_interval(method="t")`` is the default: a t-interval on the task means with
  n_tasks - 1 degrees of freedom. Every level of noise (seed, example) is inside a task's mean, so
  their spread carries it; exact when task means are normal and equally precise, wide at 3 tasks
  (t = 4.30) because that is what 3 tasks can support.
- Bootstrap intervals never reach outside the observed task means, so with n tasks they cover at
  most about 1 - 2^(1-n) (0.75 at 3 tasks) whatever they are called. Every returned ``Interval``
  carries both the ``nominal`` level asked for and the ``achieved`` level the method delivers at
  that size, with a one-line ``basis`` saying where the figure comes from.
- Where no interval can honestly reach the nominal level, the rule that is honest at tiny sizes is
  ``per_task_intervals`` (each task on its own seeds) plus ``task_agreement`` ("k of n tasks
  agree", with the exact sign-test p-value: 3 of 3 gives p = 0.125, the smallest 3 tasks allow).
- ``wilson`` is honest for a proportion of independent trials. ``bootstrap_mean`` without
  clusters and ``bootstrap_diff`` are honest for roughly 20+ independent values; with
  ``clusters=`` and fewer than ~10 clusters they under-cover (table above). They stay for callers
  that need them; new code should use ``hierarchical_interval``.
- ``paired_permutation_test`` (sign flips, exact up to 16 pairs) and ``spearman`` (rank
  correlation with an exact or Monte-Carlo permutation p-value) are for paired item-level designs.

How a study calls it (one value per run, or per example with its run's seed label)::

    iv = hierarchical_interval(values, tasks=task_of_value, seeds=seed_of_value)   # Interval
    claim.interval = iv.as_tuple(); report iv.label() / iv.achieved, never just "95%"
    per = per_task_intervals(values, task_of_value, seed_of_value)              # {task: Interval}
    agree = task_agreement(per, threshold=0.0, direction="above")               # Agreement
    agree.summary()  # "3 of 3 tasks > 0 (exact sign test p = 0.125; ...)"

Paired differences (e.g. top-k minus DARE, run by run) go in as the values themselves. Everything
random is seeded, so a run's intervals and p-values are reproducible.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from ..errors import ConfigError

Z95 = 1.959963984540054
NAN_INTERVAL = (float("nan"), float("nan"))
INTERVAL_METHODS = ("t", "order", "bootstrap")
_EXACT_SIGN_FLIPS = 16  # up to 2^16 sign patterns are enumerated; beyond, Monte Carlo
_EXACT_PERMUTATIONS = 8  # up to 8! orderings are enumerated for Spearman


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level {level} must lie strictly between 0 and 1, e.g. 0.95.")


# -- distributions ---------------------------------------------------------------------------------

def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with a whole number of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4: a finite trigonometric series for integer df)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_cdf needs a whole df >= 1, got {df}")
    theta = math.atan2(t, math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # A = (2/pi)(theta + sin cos (1 + 2/3 cos^2 + (2*4)/(3*5) cos^4 + ...))
        series, term = 0.0, 1.0
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * j) / (2 * j + 1)
        a = (2 / math.pi) * (theta + s * math.cos(theta) * series) if df > 1 else (2 / math.pi) * theta
    else:  # A = sin (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...)
        series, term = 0.0, 1.0
        for j in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * j - 1) / (2 * j)
        a = s * series
    return 0.5 + 0.5 * a  # a is signed with t: P(|T| < |t|) * sign(t)


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Inverse of ``t_cdf`` (bisection to machine precision; df a whole number >= 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def binomial_tail(n: int, k: int, p: float = 0.5) -> float:
    """Exact P(Binomial(n, p) >= k)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))))


# -- the interval record -------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """An interval with the level it was asked for and the level it actually delivers.

    estimate: the point estimate (mean of task means for hierarchical intervals).
    lo, hi: the bounds (nan when there is no interval to be had, e.g. one task).
    nominal: the level asked for (e.g. 0.95).
    achieved: the coverage the method delivers at this size: exact where ``basis`` says so,
        otherwise measured by simulation with known truth; report this figure, not ``nominal``.
    method: "t", "order", "bootstrap" or "t (per task, seeds)" etc.
    n_units: independent units behind it (tasks, or seeds/examples for a per-task interval).
    basis: one line on where ``achieved`` comes from and what it assumes.
    """

    estimate: float
    lo: float
    hi: float
    nominal: float
    achieved: float
    method: str
    n_units: int
    basis: str

    def as_tuple(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def excludes(self, value: float = 0.0) -> bool:
        """True when the whole interval lies strictly on one side of ``value`` (False when nan)."""
        return bool(self.lo > value or self.hi < value)

    def label(self) -> str:
        """How a report should name it, e.g. "t interval over 3 tasks, 95% (exact if normal)"."""
        return f"{self.method} interval over {self.n_units} units, nominal {self.nominal:.0%}, achieved {self.achieved:.1%}"

    def to_dict(self) -> dict:
        return asdict(self)


def _empty(method: str, n_units: int, level: float, estimate: float, basis: str) -> Interval:
    return Interval(estimate, float("nan"), float("nan"), level, float("nan"), method, n_units, basis)


# -- grouping values into tasks and seeds ----------------------------------------------------------

@dataclass(frozen=True)
class Nested:
    """Values grouped bottom-up: ``seed_means[t, s]`` is the mean of task t's seed s over its
    examples (nan beyond ``n_seeds[t]``); every seed weighs the same within a task and every task
    the same in the overall mean, so a task with more seeds or examples does not count for more."""

    tasks: list
    seed_means: np.ndarray  # (T, S_max), nan-padded
    n_seeds: np.ndarray  # (T,) int
    n_values: np.ndarray  # (T,) int: raw values per task

    @property
    def task_means(self) -> np.ndarray:  # (T,)
        return np.nanmean(self.seed_means, axis=1)


def _labels(labels: Sequence | None, n: int, what: str) -> list:
    if labels is None:
        return list(range(n))
    out = list(labels)
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} labels for {n} values; give one label per value.")
    return out


def nest(values: Sequence[float], tasks: Sequence[Hashable], seeds: Sequence[Hashable] | None = None) -> Nested:
    """Group ``values`` (one per example, or one per run) by task and, within a task, by seed.
    ``seeds=None`` treats every value of a task as coming from one seed. Tasks keep first-seen order."""
    x = np.asarray(values, dtype=np.float64).ravel()
    task_of = _labels(tasks, x.size, "tasks")
    seed_of = [0] * x.size if seeds is None else _labels(seeds, x.size, "seeds")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contain nan or inf; drop or fix those runs before computing an interval.")
    order: dict = {}
    for t, s, v in zip(task_of, seed_of, x):
        order.setdefault(t, {}).setdefault(s, []).append(v)
    n_tasks = len(order)
    s_max = max((len(s) for s in order.values()), default=0)
    seed_means = np.full((n_tasks, s_max), np.nan)
    for i, per_seed in enumerate(order.values()):
        seed_means[i, : len(per_seed)] = [float(np.mean(v)) for v in per_seed.values()]
    return Nested(list(order), seed_means,
                  np.array([len(s) for s in order.values()], dtype=np.int64),
                  np.array([sum(len(v) for v in s.values()) for s in order.values()], dtype=np.int64))


# -- vectorised interval cores (leading batch dims, used by the simulation too) --------------------

def t_bounds(task_means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and t-interval bounds over the last axis (n units, n - 1 df): (..., n) -> 3 x (...)."""
    n = task_means.shape[-1]
    est = task_means.mean(-1)
    if n < 2:
        nan = np.full_like(est, np.nan)
        return est, nan, nan
    half = t_quantile((1 + level) / 2, n - 1) * task_means.std(-1, ddof=1) / math.sqrt(n)
    return est, est - half, est + half


def order_rank(n: int, level: float) -> tuple[int, float]:
    """The widest-needed symmetric order statistics for a distribution-free interval of the median
    of n values: returns (j, achieved) for [x_(j), x_(n+1-j)], 1-based, with the largest j whose
    exact coverage 1 - 2 P(Bin(n, 1/2) < j) still reaches ``level``; j = 1 (the range) with its
    exact coverage when even the range falls short."""
    best = (1, 1 - 2 * 0.5**n)
    for j in range(2, n // 2 + 1):
        cover = 1 - 2 * (1 - binomial_tail(n, j, 0.5))
        if cover >= level:
            best = (j, cover)
    return best


def order_bounds(task_means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, distribution-free order-statistic bounds for the median over the last axis, and the
    exact achieved level: (..., n) -> 3 x (...), float."""
    n = task_means.shape[-1]
    est = task_means.mean(-1)
    if n < 2:
        nan = np.full_like(est, np.nan)
        return est, nan, nan, float("nan")
    j, achieved = order_rank(n, level)
    ordered = np.sort(task_means, axis=-1)
    return est, ordered[..., j - 1], ordered[..., n - j], achieved


def expanded_alpha(n: int, level: float) -> float:
    """Hesterberg's expanded-percentile correction for a bootstrap over n units: the tail share
    alpha'/2 = Phi(sqrt(n/(n-1)) * t_{alpha/2, n-1}), so the percentile interval is widened to the
    t-interval's width for normal data. (At 3 units it asks for the 1e-7 quantile: the bootstrap
    cannot widen past the range of the data.)"""
    return NormalDist().cdf(math.sqrt(n / (n - 1)) * t_quantile((1 - level) / 2, n - 1))


def hierarchical_bootstrap_bounds(seed_means: np.ndarray, n_seeds: np.ndarray, level: float, rng: np.random.Generator,
                                  n_boot: int = 2000, expanded: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-level bootstrap of the mean of task means: draw tasks with replacement, then seeds with
    replacement within each drawn task; percentile bounds (expanded, see ``expanded_alpha``).

    seed_means: (..., T, S_max), nan beyond each task's n_seeds; n_seeds: (T,), shared by the batch.
    Examples are not redrawn: a seed's mean already carries its example noise, and redrawing it
    again would count that noise twice. Returns mean, lo, hi, each (...).
    """
    batch, (n_tasks, s_max) = seed_means.shape[:-2], seed_means.shape[-2:]
    est = np.nanmean(seed_means, axis=-1).mean(-1)
    if n_tasks < 2:
        nan = np.full_like(est, np.nan)
        return est, nan, nan
    task_draw = rng.integers(0, n_tasks, size=(*batch, n_boot, n_tasks))  # (..., B, T)
    seeds_of_draw = n_seeds[task_draw]  # (..., B, T)
    seed_draw = np.floor(rng.random((*batch, n_boot, n_tasks, s_max)) * seeds_of_draw[..., None]).astype(np.int64)  # (..., B, T, S)
    flat = seed_means.reshape(*batch, 1, n_tasks * s_max)  # (..., 1, T*S)
    picked = np.take_along_axis(flat, (task_draw[..., None] * s_max + seed_draw).reshape(*batch, n_boot, -1), axis=-1)
    picked = picked.reshape(*batch, n_boot, n_tasks, s_max)
    used = np.arange(s_max) < seeds_of_draw[..., None]  # (..., B, T, S): a task with s seeds redraws s of them
    boot = (np.where(used, picked, 0.0).sum(-1) / seeds_of_draw).mean(-1)  # (..., B)
    tail = expanded_alpha(n_tasks, level) if expanded else (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=-1)
    return est, lo, hi


def cluster_percentile_bounds(sums: np.ndarray, counts: np.ndarray, draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The old percentile cluster bootstrap: clusters drawn with replacement, the mean of all drawn
    values (clusters weighted by their size). sums, counts: (..., G); draws: (..., B, G) cluster
    indices. Returns lo, hi, each (...)."""
    s = np.take_along_axis(sums[..., None, :], draws, axis=-1).sum(axis=-1)  # (..., B)
    c = np.take_along_axis(counts[..., None, :], draws, axis=-1).sum(axis=-1)
    lo, hi = np.quantile(s / c, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return lo, hi


@functools.lru_cache(maxsize=64)
def _bootstrap_level(n_seeds: tuple[int, ...], level: float) -> float:
    """Simulated coverage of the two-level bootstrap at this layout in its least favourable case
    measured: seed noise 0.1 of the task spread (coverage rises with seed noise, e.g. at 3 tasks x
    3 seeds from ~0.78 to ~0.98 as the ratio goes from 0.1 to 4). 1000 studies: +-0.015."""
    from .coverage import simulate_coverage  # the simulation imports this module's cores

    return simulate_coverage("hierarchical_bootstrap", len(n_seeds), n_seeds, 1, level=level, seed_sd=0.1, example_sd=0.0,
                             n_sims=1000, n_boot=500, seed=0).coverage


# -- the intervals callers use ---------------------------------------------------------------------

def hierarchical_interval(values: Sequence[float], tasks: Sequence[Hashable], seeds: Sequence[Hashable] | None = None,
                          level: float = 0.95, method: str = "t", seed: int = 0, n_boot: int = 2000) -> Interval:
    """Interval for the mean over tasks of values nested as tasks -> seeds -> examples.

    values: one number per example (or per run); tasks, seeds: one label per value (seeds=None:
    one seed per task). The estimate is the mean of task means (each the mean of its seed means).
    method:
      "t"         t-interval on the task means, n_tasks - 1 df. achieved = nominal, exact when
                  task means are normal with equal precision (the default; use this).
      "order"     distribution-free interval for the median task mean from order statistics;
                  achieved is the exact binomial level (0.75 at 3 tasks, 0.875 at 4, 0.984 at 7).
      "bootstrap" two-level (tasks, then seeds) bootstrap with the expanded-percentile correction;
                  achieved is measured by simulation at this task/seed layout (normal effects,
                  least favourable noise ratio), ~0.3 s the first time per layout, then cached.
    Fewer than two tasks give nan bounds and nan achieved.
    """
    _check_level(level)
    if method not in INTERVAL_METHODS:
        raise ConfigError(f"unknown interval method {method!r}; choose one of {', '.join(INTERVAL_METHODS)}.")
    nested = nest(values, tasks, seeds)
    means = nested.task_means
    n = len(nested.tasks)
    if n < 2:
        return _empty(method, n, level, float(means.mean()) if n else float("nan"), "needs at least 2 tasks")
    if method == "t":
        est, lo, hi = t_bounds(means, level)
        return Interval(float(est), float(lo), float(hi), level, level, "t", n,
                        f"t on {n} task means, {n - 1} df: exact if task means are normal with equal precision")
    if method == "order":
        est, lo, hi, achieved = order_bounds(means, level)
        j, _ = order_rank(n, level)
        return Interval(float(est), float(lo), float(hi), level, achieved, "order", n,
                        f"order statistics {j} and {n + 1 - j} of {n} task means: exact binomial coverage of the median task mean")
    est, lo, hi = hierarchical_bootstrap_bounds(nested.seed_means, nested.n_seeds, level, np.random.default_rng(seed), n_boot)
    achieved = _bootstrap_level(tuple(int(s) for s in nested.n_seeds), level)
    return Interval(float(est), float(lo), float(hi), level, achieved, "bootstrap", n,
                    f"two-level bootstrap over {n} tasks: coverage simulated at this layout, normal task effects, "
                    "seed noise 0.1 of the task spread (its worst case)")


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """t-interval for the mean of independent values (e.g. per-item paired differences)."""
    _check_level(level)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return _empty("t", int(x.size), level, float(x.mean()) if x.size else float("nan"), "needs at least 2 values")
    est, lo, hi = t_bounds(x, level)
    return Interval(float(est), float(lo), float(hi), level, level, "t", int(x.size),
                    f"t on {x.size} independent values: exact if they are normal")


def per_task_intervals(values: Sequence[float], tasks: Sequence[Hashable], seeds: Sequence[Hashable] | None = None,
                       level: float = 0.95) -> dict[Hashable, Interval]:
    """One t-interval per task for that task's own mean. With two or more seeds it runs over the
    seed means (seed-to-seed variation included); with one seed it runs over that seed's values
    (examples) and says so in ``basis``: it then covers example noise only, not a new fine-tune."""
    _check_level(level)
    x = np.asarray(values, dtype=np.float64).ravel()
    task_of = _labels(tasks, x.size, "tasks")
    seed_of = [0] * x.size if seeds is None else _labels(seeds, x.size, "seeds")
    out: dict[Hashable, Interval] = {}
    for task in dict.fromkeys(task_of):
        idx = [i for i, t in enumerate(task_of) if t == task]
        nested = nest(x[idx], [task] * len(idx), [seed_of[i] for i in idx])
        seed_means = nested.seed_means[0]
        if nested.n_seeds[0] >= 2:
            est, lo, hi = t_bounds(seed_means, level)
            out[task] = Interval(float(est), float(lo), float(hi), level, level, "t (seeds)", int(nested.n_seeds[0]),
                                 f"t on {nested.n_seeds[0]} seed means of this task: exact if they are normal")
        elif len(idx) >= 2:
            est, lo, hi = t_bounds(x[idx], level)
            out[task] = Interval(float(est), float(lo), float(hi), level, level, "t (examples, one seed)", len(idx),
                                 "t on one seed's values: covers example noise only, not another fine-tune")
        else:
            out[task] = _empty("t", len(idx), level, float(x[idx].mean()), "one value: no interval")
    return out


@dataclass(frozen=True)
class Agreement:
    """"k of n tasks agree" with exact binomial p-values; honest at any number of tasks.

    k_sign: tasks whose estimate lies beyond ``threshold`` in ``direction`` (ties do not count).
    p_sign: exact one-sided sign-test p-value, P(Bin(n, 1/2) >= k_sign), for the null "the median
        task effect is at the threshold"; the smallest possible is 0.5^n (0.125 with 3 tasks).
    k_interval: tasks whose own interval lies entirely beyond the threshold.
    p_interval: P(Bin(n, tail) >= k_interval) with tail = (1 - level)/2 the one-sided error of
        each per-task interval, for the null "no task has an effect" (a stronger null, so a
        smaller p; valid only as far as the per-task intervals are).
    level_sign: 1 - p_sign, the exact confidence that the median task effect lies beyond.
    """

    direction: str
    threshold: float
    n: int
    k_sign: int
    p_sign: float
    k_interval: int
    p_interval: float
    smallest_p: float
    level_sign: float

    def summary(self) -> str:
        side = ">" if self.direction == "above" else "<"
        return (f"{self.k_sign} of {self.n} tasks {side} {self.threshold:g} (exact sign test p = {self.p_sign:.3g}; "
                f"{self.smallest_p:.3g} is the smallest {self.n} tasks allow); {self.k_interval} of {self.n} with their own "
                f"interval {side} {self.threshold:g} (p = {self.p_interval:.2g} if no task has an effect)")

    def to_dict(self) -> dict:
        return asdict(self)


def task_agreement(intervals: Mapping[Hashable, Interval] | Sequence[Interval], threshold: float = 0.0,
                   direction: str = "above") -> Agreement:
    """Count tasks agreeing on a direction, from per-task intervals (see ``per_task_intervals``)."""
    if direction not in ("above", "below"):
        raise ConfigError(f"direction {direction!r} must be 'above' or 'below'.")
    items = list(intervals.values()) if isinstance(intervals, Mapping) else list(intervals)
    n = len(items)
    sign = 1.0 if direction == "above" else -1.0
    k_sign = sum(1 for iv in items if sign * (iv.estimate - threshold) > 0)
    k_int = sum(1 for iv in items if (iv.lo > threshold if sign > 0 else iv.hi < threshold))
    levels = [iv.nominal for iv in items if np.isfinite(iv.lo)]
    tail = (1 - min(levels)) / 2 if levels else 0.5
    p_sign = binomial_tail(n, k_sign, 0.5)
    return Agreement(direction, threshold, n, k_sign, p_sign, k_int, binomial_tail(n, k_int, tail),
                     0.5**n if n else 1.0, 1 - p_sign)


# -- permutation tests -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PermutationTest:
    statistic: float
    p_value: float
    alternative: str
    n_permutations: int  # patterns or orderings evaluated
    exact: bool  # True: every pattern enumerated; False: Monte Carlo, p = (hits + 1) / (n + 1)

    def to_dict(self) -> dict:
        return asdict(self)


_ALTERNATIVES = ("two-sided", "greater", "less")


def _p_from_null(observed: float, null: np.ndarray, alternative: str, exact: bool) -> float:
    eps = 1e-12 * max(1.0, abs(observed))  # ties with the observed value count as extreme
    if alternative == "greater":
        hits = int((null >= observed - eps).sum())
    elif alternative == "less":
        hits = int((null <= observed + eps).sum())
    else:
        hits = int((np.abs(null) >= abs(observed) - eps).sum())
    return hits / null.size if exact else (hits + 1) / (null.size + 1)


def paired_permutation_test(a: Sequence[float], b: Sequence[float] | None = None, alternative: str = "two-sided",
                            n_perm: int = 10000, seed: int = 0) -> PermutationTest:
    """Sign-flip permutation test of mean(a - b) = 0 for paired values (b=None: a are differences).

    Under the null each pair's difference is symmetric about 0, so its sign is a coin flip. Up to
    16 pairs every sign pattern is enumerated (exact p; n pairs cannot give a two-sided p below
    2^(1-n)); beyond, ``n_perm`` random patterns with p = (hits + 1) / (n_perm + 1).
    alternative: "two-sided", "greater" (mean difference > 0) or "less".
    """
    if alternative not in _ALTERNATIVES:
        raise ConfigError(f"alternative {alternative!r} must be one of {', '.join(_ALTERNATIVES)}.")
    d = np.asarray(a, dtype=np.float64).ravel()
    if b is not None:
        other = np.asarray(b, dtype=np.float64).ravel()
        if other.size != d.size:
            raise ConfigError(f"paired test needs equal lengths, got {d.size} and {other.size}; pair each item with its partner.")
        d = d - other
    n = d.size
    if n == 0:
        return PermutationTest(float("nan"), float("nan"), alternative, 0, True)
    observed = float(d.mean())
    exact = n <= _EXACT_SIGN_FLIPS
    if exact:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n), every pattern
    else:
        signs = np.where(np.random.default_rng(seed).random((n_perm, n)) < 0.5, -1.0, 1.0)  # (n_perm, n)
    null = (signs * d).mean(axis=1)
    return PermutationTest(observed, _p_from_null(observed, null, alternative, exact), alternative, int(null.size), exact)


def rank_average(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of the vector x with every row of y: (n,), (m, n) -> (m,)."""
    xc = x - x.mean()
    yc = y - y.mean(axis=-1, keepdims=True)
    denom = math.sqrt(float((xc**2).sum())) * np.sqrt((yc**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (yc @ xc) / denom


def spearman(x: Sequence[float], y: Sequence[float], alternative: str = "two-sided", n_perm: int = 10000,
             seed: int = 0) -> PermutationTest:
    """Spearman rank correlation (average ranks for ties) with a permutation p-value: y's ranks
    are shuffled against x's; every ordering is enumerated up to 8 values, otherwise ``n_perm``
    random ones. A constant x or y gives rho = nan and p = 1."""
    if alternative not in _ALTERNATIVES:
        raise ConfigError(f"alternative {alternative!r} must be one of {', '.join(_ALTERNATIVES)}.")
    xa, ya = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xa.size != ya.size:
        raise ConfigError(f"spearman needs equal lengths, got {xa.size} and {ya.size}.")
    n = xa.size
    if n < 2:
        return PermutationTest(float("nan"), float("nan"), alternative, 0, True)
    rx, ry = rank_average(xa), rank_average(ya)
    rho = float(_pearson_rows(rx, ry[None, :])[0])
    if not np.isfinite(rho):
        return PermutationTest(float("nan"), 1.0, alternative, 0, True)
    exact = n <= _EXACT_PERMUTATIONS
    if exact:
        perms = np.array(list(itertools.permutations(range(n))))  # (n!, n)
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)
    null = _pearson_rows(rx, ry[perms])
    return PermutationTest(rho, _p_from_null(rho, null, alternative, exact), alternative, int(null.size), exact)


# -- kept for existing callers ---------------------------------------------------------------------

def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 and 1). Honest for a
    proportion of independent trials; not for trials that share a task or a fine-tune."""
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

    Honest only with many units: with clusters it cannot reach outside the observed cluster means,
    and at 3 / 4 / 7 clusters a nominal 95% covers about 75% / 80% / 88% (module docstring). For
    a mean over tasks use ``hierarchical_interval``.
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
    lo, hi = cluster_percentile_bounds(sums, counts, draw, level)
    return (float(lo), float(hi))


def bootstrap_diff(a: Sequence[float], b: Sequence[float], seed: int = 0, n_boot: int = 2000,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for two *independent* samples (for
    paired data, use ``paired_permutation_test`` or a ``t_interval`` of the differences). Honest
    for roughly 20+ independent values per sample; short at a handful."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    da = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    db = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))
