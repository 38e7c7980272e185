"""The merge methods, one registry. Each merges one tensor name at a time: ``tensor(name, base,
tasks)`` gets flat float32 tensors (n,) of the base and the N task models and returns (n,).
A method that needs whole-model figures first (a global top-k threshold) computes them in
``prepare``, streaming, before the merge pass. Formulas and their relation to mergekit are in the
package docstring (merge/__init__.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry
from .cores import OverlapCounter, core_regions
from .inputs import MergeInputs
from .ops import dare, dare_seed, sign_consensus, slerp, top_entries, weighted_sum
from .regions import TopRegion, find_region


class MergeMethod:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, inputs: MergeInputs, options: dict[str, Any]) -> None:
        self.inputs, self.options = inputs, options
        self.check()

    def check(self) -> None:
        """Refuse option values that do not fit these inputs (before any data is read)."""
        weights = self.options.get("weights")
        if weights is not None and len(weights) != self.inputs.n_tasks:
            raise ConfigError(f"--weights has {len(weights)} values but {self.inputs.n_tasks} models follow the base; give one weight per model.")

    @property
    def weights(self) -> list[float]:
        return list(self.options.get("weights") or [1.0] * self.inputs.n_tasks)

    def prepare(self) -> None:
        pass

    def tensor(self, name: str, base: torch.Tensor, tasks: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


METHODS: Registry[type[MergeMethod]] = Registry("merge method")


def _register(cls: type[MergeMethod]) -> type[MergeMethod]:
    return METHODS.register(cls.name)(cls)


def _deltas(base: torch.Tensor, tasks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t - base for t in tasks]  # N x (n,)


@_register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + lambda * sum_i w_i (task_i - base)  (Ilharco et al. 2023)"
    defaults: ClassVar[dict[str, Any]] = {"lambda_": 1.0, "weights": None}

    def tensor(self, name, base, tasks):
        return base + self.options["lambda_"] * weighted_sum(_deltas(base, tasks), self.weights)


@_register
class Ties(MergeMethod):
    name = "ties"
    summary = "trim each task vector to its top-k%, elect signs by summed mass, disjoint mean, scale lambda (Yadav et al. 2023)"
    defaults: ClassVar[dict[str, Any]] = {"lambda_": 1.0, "weights": None, "k": 20.0, "trim": "tensor"}
    regions: list[TopRegion]

    def prepare(self):
        if self.options["trim"] == "global":
            self.regions = [find_region(s, self.options["k"]) for s in self.inputs.sources]

    def keep(self, name: str, task: int, delta: torch.Tensor) -> torch.Tensor:
        if self.options["trim"] == "global":
            return self.regions[task].mask(name, delta)
        return top_entries(delta, int(self.options["k"] / 100 * delta.numel()))  # mergekit: int(density * numel)

    def tensor(self, name, base, tasks):
        trimmed = [torch.where(self.keep(name, i, d), d, 0.0) for i, d in enumerate(_deltas(base, tasks))]
        return base + self.options["lambda_"] * sign_consensus(trimmed, self.weights, disjoint_mean=True)


class _Dare(MergeMethod):
    defaults: ClassVar[dict[str, Any]] = {"lambda_": 1.0, "weights": None, "drop": 90.0, "seed": 0}

    def dropped(self, name: str, base: torch.Tensor, tasks: list[torch.Tensor]) -> list[torch.Tensor]:
        drop, seed = self.options["drop"] / 100, self.options["seed"]
        return [dare(d, drop, dare_seed(seed, i, name)) for i, d in enumerate(_deltas(base, tasks))]


@_register
class DareLinear(_Dare):
    name = "dare_linear"
    summary = "drop each task-vector entry with probability p, rescale by 1/(1-p), weighted sum, scale lambda (Yu et al. 2024)"

    def tensor(self, name, base, tasks):
        return base + self.options["lambda_"] * weighted_sum(self.dropped(name, base, tasks), self.weights)


@_register
class DareTies(_Dare):
    name = "dare_ties"
    summary = "DARE drop and rescale, then TIES sign election; agreeing entries summed (mergekit's dare_ties), scale lambda"

    def tensor(self, name, base, tasks):
        return base + self.options["lambda_"] * sign_consensus(self.dropped(name, base, tasks), self.weights, disjoint_mean=False)


@_register
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation BASE -> A at t, per tensor, lerp when nearly collinear (mergekit's slerp)"
    defaults: ClassVar[dict[str, Any]] = {"t": 0.5}

    def check(self):
        if self.inputs.n_tasks != 1:
            raise ConfigError(f"--method slerp interpolates between two models (BASE and one other) but got {self.inputs.n_tasks} after the base.")

    def tensor(self, name, base, tasks):
        return slerp(self.options["t"], base, tasks[0])


@_register
class CoreIsolation(MergeMethod):
    name = "core_isolation"
    summary = "CPI-FT fusion: transplant each task's top-p% core values, fuse non-core values by SLERP (Wang et al. 2025)"
    defaults: ClassVar[dict[str, Any]] = {"p": 1.0, "noncore": "slerp", "masks": None}
    regions: list[TopRegion]

    def check(self):
        masks = self.options.get("masks")
        if masks is not None and len(masks) != self.inputs.n_tasks:
            raise ConfigError(f"masks has {len(masks)} entries but {self.inputs.n_tasks} models follow the base; give one mask per model.")
        self.overlap = OverlapCounter(self.inputs.n_tasks)

    def prepare(self):
        if self.options.get("masks") is None:
            self.regions = core_regions(self.inputs, self.options["p"])

    def cores(self, name: str, base: torch.Tensor, tasks: list[torch.Tensor]) -> list[torch.Tensor]:
        given = self.options.get("masks")
        if given is not None:
            return [m[name].reshape(-1).to(torch.bool) for m in given]
        return [r.mask(name, t - base) for r, t in zip(self.regions, tasks)]

    def tensor(self, name, base, tasks):
        cores = self.cores(name, base, tasks)  # N x (n,) bool
        self.overlap.add(cores)
        count = torch.stack(cores).sum(dim=0)  # (n,) tasks whose core holds the entry
        noncore = count == 0
        fused = self.fuse_noncore(base, tasks, noncore)
        if not bool((~noncore).any()):
            return fused
        # an entry in several cores takes the mean of those tasks' values
        transplant = sum(torch.where(c, t, 0.0) for c, t in zip(cores, tasks)) / count.clamp(min=1)
        return torch.where(noncore, fused, transplant)

    def fuse_noncore(self, base: torch.Tensor, tasks: list[torch.Tensor], among: torch.Tensor) -> torch.Tensor:
        """The non-core values: the base's, the task models' mean, or their SLERP (two models at
        t = 1/2; more by m_1 = task_1, m_i = slerp(m_{i-1}, task_i, 1/i), which is the mean when
        they are collinear), with angles measured over the non-core entries."""
        rule = self.options["noncore"]
        if rule == "base" or not bool(among.any()):
            return base
        if all(torch.equal(tasks[0], t) for t in tasks[1:]):
            return tasks[0]  # one distinct model: its values exactly, not an average rounded in float32
        if rule == "linear":
            return torch.stack(tasks).mean(dim=0)
        fused = tasks[0]
        for i, task in enumerate(tasks[1:], start=2):
            fused = slerp(1.0 / i, fused, task, among=among)
        return fused


def method_table() -> list[tuple[str, str, str]]:
    """(name, options it takes, summary) for help texts."""
    from .options import CHECKS

    return [(n, " ".join(CHECKS[k][0] for k in METHODS.get(n).defaults if k != "masks"), METHODS.get(n).summary) for n in METHODS.names()]
