"""The pure parts of the core-isolation study (C4): which tasks are related, how their core
overlaps line up with that, the training orders and consolidation stages, and paired comparisons.
No training here, so every piece is unit-tested on small numbers.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .stats import hierarchical_interval, per_task_intervals, spearman, task_agreement
from .verdicts import Estimate

Mask = dict[str, torch.Tensor]

# Task families of the built-in tasks: tasks of one family share their skill by construction
# (`trace` and `arith` are the same mod-10 chains written two ways and `add` is arithmetic too;
# `sort` and `reverse` both rewrite a short list). A task not named here is its own family.
FAMILIES = {"add": "arithmetic", "trace": "arithmetic", "arith": "arithmetic", "sort": "list", "reverse": "list",
            "hop": "lookup", "copy": "copy"}


def family_of(task: str, families: Mapping[str, str]) -> str:
    return families.get(task, FAMILIES.get(task, task))


def related(a: str, b: str, families: Mapping[str, str]) -> bool:
    return a != b and family_of(a, families) == family_of(b, families)


@dataclass(frozen=True)
class OverlapSummary:
    """Core overlap (Jaccard) of related against unrelated task pairs."""

    pairs: list[tuple[str, str, bool, float]]  # (task a, task b, related?, Jaccard)
    related_mean: float  # nan when no pair is related
    unrelated_mean: float  # nan when every pair is
    difference: float  # related minus unrelated
    rho: float  # Spearman of Jaccard against relatedness (0/1) over pairs
    p_value: float  # one-sided (related pairs overlap more), exact permutation over pairs

    def to_dict(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "related_mean": self.related_mean, "unrelated_mean": self.unrelated_mean,
                "difference": self.difference, "rho": self.rho, "p_value": self.p_value}


def overlap_summary(tasks: Sequence[str], jaccard: Sequence[Sequence[float]], families: Mapping[str, str]) -> OverlapSummary:
    """Pairs i < j of ``tasks`` with their Jaccard; related pairs (same family) against the rest.
    The permutation p-value treats pairs as exchangeable, which they are not quite (pairs share
    tasks), so it is a description, not a verdict."""
    pairs = [(tasks[i], tasks[j], related(tasks[i], tasks[j], families), float(jaccard[i][j]))
             for i, j in itertools.combinations(range(len(tasks)), 2)]
    rel = [v for _, _, r, v in pairs if r]
    unrel = [v for _, _, r, v in pairs if not r]
    rel_mean = float(np.mean(rel)) if rel else float("nan")
    unrel_mean = float(np.mean(unrel)) if unrel else float("nan")
    if rel and unrel:
        test = spearman([float(r) for _, _, r, _ in pairs], [v for *_, v in pairs], alternative="greater")
        rho, p = test.statistic, test.p_value
    else:
        rho, p = float("nan"), float("nan")
    return OverlapSummary(pairs, rel_mean, unrel_mean, rel_mean - unrel_mean, rho, p)


def heuristic_order(tasks: Sequence[str], jaccard: Sequence[Sequence[float]]) -> list[str]:
    """Temporal scheduling by core overlap: start with the task whose core overlaps the others
    least (mean Jaccard), then always append the unplaced task whose core overlaps the last placed
    one most, so tasks that share weights are trained next to each other and a phase builds on
    the regions the previous one moved instead of overwriting another task's. Ties go to the
    earlier task."""
    n = len(tasks)
    if n == 0:
        return []
    mean = [np.mean([jaccard[i][j] for j in range(n) if j != i]) if n > 1 else 0.0 for i in range(n)]
    order = [min(range(n), key=lambda i: (mean[i], i))]
    while len(order) < n:
        last = order[-1]
        order.append(max((i for i in range(n) if i not in order), key=lambda i: (jaccard[last][i], -i)))
    return [tasks[i] for i in order]


def random_order(tasks: Sequence[str], seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 7741])
    return [tasks[i] for i in rng.permutation(len(tasks))]


@dataclass(frozen=True)
class Stage:
    """One consolidation stage: the tasks it trains on, the tasks whose cores stay frozen, steps."""

    tasks: tuple[str, ...]
    frozen: tuple[str, ...]
    steps: int


def consolidation_stages(tasks: Sequence[str], groups: Sequence[Sequence[int]], steps: int) -> list[Stage]:
    """CPI-FT's pipelined consolidation: one stage per core group (groups in order), each on a
    balanced mix of its group's tasks with the cores of every earlier group frozen. ``steps`` are
    shared among stages in proportion to their task counts (at least one each), so the total
    budget does not depend on how the tasks group."""
    n = sum(len(g) for g in groups)
    out, done, used = [], [], 0
    for k, group in enumerate(groups):
        names = tuple(tasks[i] for i in group)
        share = steps - used if k == len(groups) - 1 else max(1, round(steps * len(group) / n))
        share = max(1, share)
        out.append(Stage(names, tuple(done), share))
        used += share
        done.extend(names)
    return out


def union(masks: Sequence[Mask], like: Mapping[str, torch.Tensor]) -> Mask:
    """Entry-wise OR of masks over the names of ``like`` (all False when no mask is given)."""
    out = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in like.items()}
    for m in masks:
        for k in out:
            if k in m:
                out[k] |= m[k].to(torch.bool)
    return out


def trainable_outside(frozen: Mask) -> Mask:
    """The train mask (True = may change) that freezes exactly the entries of ``frozen``."""
    return {k: ~v for k, v in frozen.items()}


def paired(diffs: Sequence[float], tasks: Sequence[str], seeds: Sequence[int], level: float) -> tuple[Estimate, str]:
    """The mean over tasks of paired differences (one per task and seed; seeds nest in tasks),
    its t-interval over task means (coverage = ``level``, exact for normal task means; nan with
    fewer than two tasks), and how many tasks agree in sign (exact sign test, honest at any size)."""
    iv = hierarchical_interval(list(diffs), list(tasks), list(seeds), level=level, method="t")
    agreement = task_agreement(per_task_intervals(list(diffs), list(tasks), list(seeds), level=level), 0.0).summary()
    return Estimate(iv.estimate, (iv.lo, iv.hi), iv.achieved if np.isfinite(iv.achieved) else level), agreement
