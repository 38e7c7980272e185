"""Statistics over prompts for `taskloc activations`: per-level means with bootstrap intervals,
Spearman correlation with difficulty, and localisation (which sites and which hidden dimensions
move most between the lowest and the highest difficulty level).

Units: each prompt is one independent draw (its all-token figure is the mean over its own
tokens, so a long prompt does not count more). Intervals are ``studies.stats`` percentile
bootstraps over prompts, honest for roughly 20+ prompts per group and short below that; every
group with fewer is flagged ``few``. Spearman p-values are permutation p-values per test, not
corrected for the number of tests (which is reported beside them).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics import metric_definitions
from ..studies.stats import bootstrap_diff, bootstrap_mean, spearman
from .profile import ActivationProfile
from .reducers import RunningMoments

FEW = 20  # below this many prompts in a group a percentile bootstrap is known to under-cover
HEADLINE = ("top5_energy", "l0", "gini", "hoyer")  # the terminal table's columns (C1's metrics)


def _layer(site: str) -> int | None:
    parts = site.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def _group(values: np.ndarray, level: float, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_mean(values, seed=seed, n_boot=n_boot, level=level)
    return {"n": int(values.size), "mean": float(values.mean()) if values.size else math.nan, "lo": lo, "hi": hi,
            "few": bool(values.size < FEW)}


def _change(low: np.ndarray, high: np.ndarray, level: float, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_diff(high, low, seed=seed, n_boot=n_boot, level=level)
    return {"diff": float(high.mean() - low.mean()), "lo": lo, "hi": hi}


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


def analyse(profile: ActivationProfile, *, level: float = 0.95, n_boot: int = 2000, n_perm: int = 1000,
            top_dims: int = 5, seed: int = 0) -> dict[str, Any]:
    """The JSON document of `taskloc activations` (numbers only; command.py draws it)."""
    p, lv = profile.prompts, profile.levels
    members = [np.flatnonzero(lv.of_prompt == i) for i in range(len(lv))]
    labelled = {name: np.array([i for i, lab in enumerate(p.labels) if lab == name]) for name in ("familiar", "unfamiliar")}
    compare_labels = all(idx.size for idx in labelled.values())
    sites = []
    for site in profile.sites:
        entry: dict[str, Any] = {"site": site, "layer": _layer(site), "width": profile.widths[site], "modes": {}, "localisation": {}}
        for mode in profile.modes:
            values = profile.values[mode][site]  # (N, M)
            per_metric = {}
            for j, metric in enumerate(profile.metric_names):
                v = values[:, j]
                rec: dict[str, Any] = {"by_level": [{"level": lv.names[i], **_group(v[idx], level, n_boot, seed)}
                                                    for i, idx in enumerate(members)]}
                rho = spearman(p.difficulty, v, n_perm=n_perm, seed=seed)
                rec["spearman"] = {"rho": rho.statistic, "p": rho.p_value, "exact": rho.exact}
                if len(lv) > 1:
                    rec["change"] = _change(v[members[0]], v[members[-1]], level, n_boot, seed)
                if compare_labels:
                    fam, unf = v[labelled["familiar"]], v[labelled["unfamiliar"]]
                    rec["by_label"] = {"familiar": _group(fam, level, n_boot, seed), "unfamiliar": _group(unf, level, n_boot, seed),
                                       "unfamiliar_minus_familiar": _change(fam, unf, level, n_boot, seed)}
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
        "interval": {"method": "percentile bootstrap over prompts (taskloc.studies.stats.bootstrap_mean / bootstrap_diff)",
                     "nominal": level, "n_boot": n_boot,
                     "basis": f"prompts treated as independent draws; the nominal level is roughly reached with {FEW}+ prompts "
                              f"per group and not below (groups with fewer are flagged few=true)"},
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


def _shift(sites: list[dict], name: str, mode: str) -> float:
    rec = next(s for s in sites if s["site"] == name)["localisation"][mode]
    return rec["shift"] if math.isfinite(rec["shift"]) else -math.inf
