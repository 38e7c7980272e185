"""Core regions (CPI-FT, REFERENCE.md C4): per task the global top p% of |task - base|, their
Jaccard overlaps, and the groups they form.

    Jaccard(C_i, C_j) = |C_i & C_j| / |C_i | C_j|   (0 when both are empty)
    tasks i != j are linked when Jaccard >= tau; groups are the connected components, listed by
    their first task, tasks in input order.

``core_regions`` finds the regions (one streaming analysis per task); ``core_overlap`` counts the
overlaps in one more streamed pass; ``core_masks`` gives the boolean masks of in-memory models,
for a consolidation fine-tune that freezes them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..progress import progress_bar
from .inputs import MergeInputs, ModelLike
from .options import parse_percent, unit_interval
from .regions import TopRegion, find_region

DEFAULT_P = 1.0  # percent, as in the CPI-FT paper
DEFAULT_TAU = 0.1


@dataclass
class CoreReport:
    models: list[str]  # task models, in input order (the base is not one)
    base: str
    p: float  # percent
    tau: float
    n: int  # floating entries per model
    sizes: list[int]  # |C_i|
    intersections: list[list[int]]  # |C_i & C_j|
    jaccard: list[list[float]]
    groups: list[list[int]]  # task indices (0-based) per group

    def to_json(self) -> dict:
        return {"format": "taskloc-cores/1", **asdict(self)}


def core_regions(inputs: MergeInputs, p: float) -> list[TopRegion]:
    return [find_region(source, p) for source in inputs.sources]


def task_masks(inputs: MergeInputs, regions: Sequence[TopRegion], name: str, base: torch.Tensor,
               tasks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each task's core entries (n,) bool in tensor ``name`` (all False for non-float tensors)."""
    return [r.mask(name, t - base) for r, t in zip(regions, tasks)]


def groups_of(jaccard: Sequence[Sequence[float]], tau: float) -> list[list[int]]:
    """Connected components of the graph linking i != j with jaccard[i][j] >= tau."""
    n = len(jaccard)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if jaccard[i][j] >= tau:
                parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def jaccard_of(sizes: Sequence[int], inter: Sequence[Sequence[int]]) -> list[list[float]]:
    n = len(sizes)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            union = sizes[i] + sizes[j] - inter[i][j]
            out[i][j] = inter[i][j] / union if union else 0.0
    return out


class OverlapCounter:
    """Accumulates |C_i| and |C_i & C_j| tensor by tensor."""

    def __init__(self, n_tasks: int) -> None:
        self.inter = [[0] * n_tasks for _ in range(n_tasks)]

    def add(self, masks: Sequence[torch.Tensor]) -> None:
        for i, a in enumerate(masks):
            self.inter[i][i] += int(a.sum())
            for j in range(i + 1, len(masks)):
                both = int((a & masks[j]).sum())
                self.inter[i][j] += both
                self.inter[j][i] += both

    def report(self, inputs: MergeInputs, regions: Sequence[TopRegion], p: float, tau: float) -> CoreReport:
        sizes = [self.inter[i][i] for i in range(len(self.inter))]
        jac = jaccard_of(sizes, self.inter)
        return CoreReport(models=inputs.labels[1:], base=inputs.labels[0], p=p, tau=tau, n=sum(inputs.base.numel(x) for x in inputs.floats),
                          sizes=sizes, intersections=self.inter, jaccard=jac, groups=groups_of(jac, tau))


def core_overlap(inputs: MergeInputs, p: float = DEFAULT_P, tau: float = DEFAULT_TAU,
                 regions: Sequence[TopRegion] | None = None) -> CoreReport:
    """Core sizes, pairwise intersections, Jaccard matrix and groups, streamed tensor by tensor."""
    regions = list(regions) if regions is not None else core_regions(inputs, p)
    counter = OverlapCounter(inputs.n_tasks)
    names = [n for n in inputs.names if n in inputs.floats]
    with progress_bar("core overlap", total=len(names)) as advance:
        for name in names:
            base, tasks = inputs.load(name)
            counter.add(task_masks(inputs, regions, name, base, tasks))
            advance()
    return counter.report(inputs, regions, p, tau)


def core_masks(base: ModelLike, tasks: Sequence[ModelLike], p: float = DEFAULT_P) -> list[dict[str, torch.Tensor]]:
    """Per task, {tensor name: bool mask shaped like the tensor} of its core region (floating
    tensors only). For in-memory models (a study's state dicts): the masks are model-sized."""
    with MergeInputs.open(base, tasks) as inputs:
        regions = core_regions(inputs, p)
        out: list[dict[str, torch.Tensor]] = [{} for _ in regions]
        for name in inputs.names:
            if name not in inputs.floats:
                continue
            b, ts = inputs.load(name)
            shape = inputs.base.shape(name)
            for i, m in enumerate(task_masks(inputs, regions, name, b, ts)):
                out[i][name] = m.view(shape)
        return out


def cores_of_paths(base: ModelLike, tasks: Sequence[ModelLike], p: float | str = DEFAULT_P, tau: float = DEFAULT_TAU,
                   allow_pickle: bool = False) -> CoreReport:
    """``taskloc cores``: the overlap report of checkpoints on disk (or in memory). ``p`` is a
    percent in (0, 100] (1, "1" or "1%"), ``tau`` a Jaccard level in [0, 1]."""
    percent, level = parse_percent("--p", p), unit_interval("--tau", tau)
    with MergeInputs.open(base, tasks, allow_pickle=allow_pickle) as inputs:
        return core_overlap(inputs, percent, level)
