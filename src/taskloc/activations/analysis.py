"""Statistics over prompts for `taskloc activations`: per-level means with t-intervals,
Spearman correlation with difficulty, and localisation (which sites and which hidden dimensions
move most between the lowest and the highest difficulty level).

Units: each prompt is one independent draw (its all-token figure is the mean over its own
tokens, so a long prompt does not count more). Intervals: a group's mean gets a Student t-interval
over its prompts (n - 1 df), exact for normal per-prompt values at any n >= 2 (a percentile
bootstrap, used before, covers ~75% at 3 prompts); a difference between two groups gets Welch's
t-interval. Welch is not exact at small or unequal sizes, so its coverage is measured by
simulation (``studies.coverage``) at this run's own sizes and reported as ``achieved`` beside the
nominal level, flagged where it falls short. Spearman p-values are permutation p-values per test,
not corrected for the number of tests (which is reported beside them).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics import metric_definitions
from ..studies.coverage import simulate_mean_coverage, simulate_two_sample_coverage
from ..studies.stats import spearman, t_interval, t_quantile
from .profile import ActivationProfile
from .reducers import RunningMoments

COVERAGE_SIMS = 4000  # simulated studies per coverage figure: Monte-Carlo error ~0.0035 at 95%
SD_RATIOS = (0.25, 1.0, 4.0)  # spread of sd(high) / sd(low) over which a difference's coverage is measured
HEADLINE = ("top5_energy", "l0", "gini", "hoyer")  # the terminal table's columns (C1's metrics)


def _layer(site: str) -> int | None:
    parts = site.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def welch_bounds(a: np.ndarray, b: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean(b) - mean(a) and Welch's t-interval over the last axis: (..., n_a), (..., n_b) -> 3 x (...).
    Welch-Satterthwaite df, rounded down to a whole number (``t_quantile`` takes whole df; fewer
    df only widen the interval); nan bounds when a sample has fewer than 2 values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n_a, n_b = a.shape[-1], b.shape[-1]
    diff = b.mean(-1) - a.mean(-1) if n_a and n_b else np.full(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), math.nan)
    if n_a < 2 or n_b < 2:
        nan = np.full_like(diff, math.nan)
        return diff, nan, nan
    u_a, u_b = a.var(-1, ddof=1) / n_a, b.var(-1, ddof=1) / n_b  # squared standard errors of the two means
    se2 = u_a + u_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2**2 / (u_a**2 / (n_a - 1) + u_b**2 / (n_b - 1))
    df = np.clip(np.floor(np.where(np.isfinite(df), df, n_a + n_b - 2)), 1, n_a + n_b - 2)  # both spreads 0: 0/0
    quantile = {int(k): t_quantile((1 + level) / 2, int(k)) for k in np.unique(df)}
    half = np.vectorize(quantile.__getitem__, otypes=[np.float64])(df.astype(int)) * np.sqrt(se2)
    return diff, diff - half, diff + half


def _group(values: np.ndarray, level: float) -> dict[str, Any]:
    iv = t_interval(values, level)  # nan bounds below 2 prompts
    return {"n": int(values.size), "mean": float(values.mean()) if values.size else math.nan, "lo": iv.lo, "hi": iv.hi}


def _change(low: np.ndarray, high: np.ndarray, level: float, achieved: dict[tuple[int, int], float]) -> dict[str, Any]:
    diff, lo, hi = welch_bounds(low, high, level)
    reached = achieved.get((low.size, high.size), math.nan)
    return {"diff": float(diff), "lo": float(lo), "hi": float(hi), "achieved": reached,
            "short": bool(reached < level - 2 * math.sqrt(level * (1 - level) / COVERAGE_SIMS))}


def difference_coverage(n_a: int, n_b: int, level: float, seed: int = 0) -> float:
    """The lowest measured coverage of ``welch_bounds`` at sizes (n_a, n_b) over normal values with
    sd ratios SD_RATIOS: the level a difference interval at these sizes can be relied on to reach."""
    if n_a < 2 or n_b < 2:
        return math.nan
    return min(simulate_two_sample_coverage(welch_bounds, n_a, n_b, sd_b=r, level=level, n_sims=COVERAGE_SIMS, seed=seed).coverage
               for r in SD_RATIOS)


def _coverage_record(group_sizes: list[int], pairs: list[tuple[int, int]], level: float, seed: int) -> dict[str, Any]:
    """What the intervals of this run reach, measured at its own sizes."""
    sizes = sorted({n for n in group_sizes if n >= 2})
    means = [{"n": n, **{dist: simulate_mean_coverage(n, level=level, dist=dist, n_sims=COVERAGE_SIMS, seed=seed).coverage
                         for dist in ("normal", "skewed")}} for n in sizes]
    # n_a, n_b: the first and second group (lowest and highest level, or familiar and unfamiliar)
    diffs = [{"n_a": a, "n_b": b, "achieved": difference_coverage(a, b, level, seed)} for a, b in sorted(set(pairs))]
    return {"simulations": COVERAGE_SIMS, "mc_se": math.sqrt(level * (1 - level) / COVERAGE_SIMS), "mean": means, "difference": diffs}


def _moments(m: RunningMoments) -> tuple[np.ndarray, np.ndarray, int]:
    ddof = 1 if m.count > 1 else 0
    return m.mean.cpu().numpy(), m.variance(ddof).cpu().numpy(), m.count


def localise(low: RunningMoments, high: RunningMoments, top: int) -> dict[str, Any]:
    """Per-dimension standardised difference d_j = (mean_high - mean_low) / pooled sd, its root
    mean square over dimensions (``shift``) and the ``top`` dimensions by |d_j|. ``null_rms`` is
    what ``shift`` would be with no difference at all and independent rows, sqrt(1/n_low + 1/n_high);
    ``null_max`` the expected largest |d_j| of D such dimensions, sqrt(2 ln D) * null_rms."""
    if not low.count or not high.count:
        return {"shift": math.nan, "null_rms": math.nan, "null_max": math.nan, "top_dims": []}
    m_lo, v_lo, n_lo = _moments(low)
    m_hi, v_hi, n_hi = _moments(high)
    dof = max(1, n_lo + n_hi - 2)
    pooled = np.sqrt(((n_lo - 1) * v_lo + (n_hi - 1) * v_hi) / dof) if n_lo + n_hi > 2 else np.sqrt((v_lo + v_hi) / 2)
    floor = 1e-6 * float(np.median(pooled)) + 1e-12  # a dead dimension (sd 0) must not dominate
    d = (m_hi - m_lo) / np.maximum(pooled, floor)  # (D,)
    null_rms = math.sqrt(1 / n_lo + 1 / n_hi)
    order = np.argsort(-np.abs(d), kind="stable")[:top]
    return {"shift": float(np.sqrt(np.mean(d**2))), "null_rms": null_rms,
            "null_max": math.sqrt(2 * math.log(max(2, d.size))) * null_rms, "n_lowest": n_lo, "n_highest": n_hi,
            "top_dims": [{"dim": int(j), "d": float(d[j]), "mean_lowest": float(m_lo[j]), "mean_highest": float(m_hi[j])}
                         for j in order]}


def analyse(profile: ActivationProfile, *, level: float = 0.95, n_perm: int = 1000,
            top_dims: int = 5, seed: int = 0) -> dict[str, Any]:
    """The JSON document of `taskloc activations` (numbers only; command.py draws it)."""
    p, lv = profile.prompts, profile.levels
    members = [np.flatnonzero(lv.of_prompt == i) for i in range(len(lv))]
    labelled = {name: np.array([i for i, lab in enumerate(p.labels) if lab == name]) for name in ("familiar", "unfamiliar")}
    compare_labels = all(idx.size for idx in labelled.values())
    pairs = ([(members[0].size, members[-1].size)] if len(lv) > 1 else []) + \
            ([(labelled["familiar"].size, labelled["unfamiliar"].size)] if compare_labels else [])
    coverage = _coverage_record([idx.size for idx in members] + [idx.size for idx in labelled.values() if compare_labels],
                                pairs, level, seed)
    achieved = {(d["n_a"], d["n_b"]): d["achieved"] for d in coverage["difference"]}
    sites = []
    for site in profile.sites:
        entry: dict[str, Any] = {"site": site, "layer": _layer(site), "width": profile.widths[site], "modes": {}, "localisation": {}}
        for mode in profile.modes:
            values = profile.values[mode][site]  # (N, M)
            per_metric = {}
            for j, metric in enumerate(profile.metric_names):
                v = values[:, j]
                rec: dict[str, Any] = {"by_level": [{"level": lv.names[i], **_group(v[idx], level)}
                                                    for i, idx in enumerate(members)]}
                rho = spearman(p.difficulty, v, n_perm=n_perm, seed=seed)
                rec["spearman"] = {"rho": rho.statistic, "p": rho.p_value, "exact": rho.exact}
                if len(lv) > 1:
                    rec["change"] = _change(v[members[0]], v[members[-1]], level, achieved)
                if compare_labels:
                    fam, unf = v[labelled["familiar"]], v[labelled["unfamiliar"]]
                    rec["by_label"] = {"familiar": _group(fam, level), "unfamiliar": _group(unf, level),
                                       "unfamiliar_minus_familiar": _change(fam, unf, level, achieved)}
                per_metric[metric] = rec
            entry["modes"][mode] = per_metric
            low, high = profile.moments[mode][site]
            entry["localisation"][mode] = localise(low, high, top_dims) if len(lv) > 1 else None
        sites.append(entry)
    n_tests = len(profile.sites) * len(profile.modes) * len(profile.metric_names)
    ranking = {mode: sorted((s["site"] for s in sites if s["localisation"][mode]),
                            key=lambda name: -_shift(sites, name, mode)) for mode in profile.modes}
    return {
        "model": profile.model,
        "prompts": {"path": str(p.source), "n": len(p), "tokens_mean": float(profile.tokens.mean()),
                    "levels": [{"level": name, "n": int(idx.size),
                                "difficulty_min": float(p.difficulty[idx].min()), "difficulty_max": float(p.difficulty[idx].max())}
                               for name, idx in zip(lv.names, members)],
                    "binned": lv.binned, "labels": {k: int(v.size) for k, v in labelled.items()}},
        "convention": profile.convention,
        "metrics": metric_definitions(profile.convention),
        "modes": {"last": "the prompt's last real token (last non-padding position)",
                  "all": "every real token of the prompt, metric averaged over the prompt's tokens"},
        "interval": {"method": "Student t over prompts for a mean (n - 1 df); Welch t for a difference of two means "
                               "(Welch-Satterthwaite df rounded down)",
                     "nominal": level,
                     "basis": _basis(coverage, level),
                     "coverage": coverage},
        "spearman": {"method": "Spearman rank correlation of the metric with difficulty over prompts, permutation p-value "
                               "(taskloc.studies.stats.spearman)", "permutations": n_perm, "tests": n_tests,
                     "note": f"p-values are per test and uncorrected: {n_tests} tests, so about {0.05 * n_tests:.0f} "
                             "would fall below 0.05 by chance alone"},
        "localisation": {"compares": f"lowest level {lv.names[0]} vs highest level {lv.names[-1]}" if len(lv) > 1 else None,
                         "method": "per hidden dimension, d = (mean_highest - mean_lowest) / pooled sd from running moments; "
                                   "shift = root mean square of d over dimensions; null_rms = its value with no change "
                                   "and independent rows (all-token rows of one prompt are not independent, so there "
                                   "the null is too small)",
                         "ranking": ranking},
        "sites": sites,
    }


def _basis(coverage: dict[str, Any], level: float) -> str:
    """The coverage the intervals reach at this run's sizes, in words (measured, not assumed)."""
    means = ", ".join(f"{m['skewed']:.2f} at n = {m['n']}" for m in coverage["mean"])
    normal = ", ".join(f"{m['normal']:.3f}" for m in coverage["mean"])
    diffs = ", ".join(f"{d['achieved']:.3f} at {d['n_a']} vs {d['n_b']}" for d in coverage["difference"])
    text = (f"prompts treated as independent draws; a mean's t-interval is exact for normal per-prompt values at any n >= 2 "
            f"(simulated: {normal}), and covers less if they are skewed "
            f"(an exponential's skew: {means or 'no group of 2+'})")
    if diffs:
        text += (f"; a difference's Welch interval reaches {diffs} (lowest over sd ratios {', '.join(f'{r:g}' for r in SD_RATIOS)}, "
                 f"normal values, {coverage['simulations']} simulations each), shown as 'achieved' and flagged * where below "
                 f"{level:.0%}")
    return text


def _shift(sites: list[dict], name: str, mode: str) -> float:
    rec = next(s for s in sites if s["site"] == name)["localisation"][mode]
    return rec["shift"] if math.isfinite(rec["shift"]) else -math.inf
