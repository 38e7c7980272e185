"""Where a delta lands: tensors grouped by layer and by module kind (names.py reads both from the
tensor name). One definition for the streaming report (DeltaReport.profile) and for the studies'
in-memory deltas (inmemory.tensor_profile): the same groups, order, labels and shares."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .names import KINDS, kind_of, layer_of

AXES = ("layer", "kind")
OUTSIDE_BLOCKS = "outside blocks"


class Grouped(Protocol):
    """What grouping needs of one tensor (analysis.TensorStats has it all)."""

    layer: int | None
    kind: str
    n: int
    energy: float
    base_energy: float | None
    selected: int | None


@dataclass(frozen=True)
class TensorShare:
    """A Grouped tensor of an in-memory delta: layer and kind read from its name."""

    name: str
    n: int
    energy: float  # sum delta^2
    base_energy: float | None = None  # sum base^2; None when unknown (a LoRA delta has no base)
    selected: int = 0  # entries in the global top-k

    @property
    def layer(self) -> int | None:
        return layer_of(self.name)

    @property
    def kind(self) -> str:
        return kind_of(self.name)


def group_label(axis: str, value: int | str | None) -> str:
    """How a group is shown: "block 3", "outside blocks", or the kind itself."""
    if axis == "layer":
        return OUTSIDE_BLOCKS if value is None else f"block {value}"
    return str(value)


def profile_groups(tensors: Iterable[Grouped], k: int | None = None) -> dict[str, list[dict]]:
    """Per axis, one row per group: tensors, entries, share of all entries ("param_share"), share
    of the delta energy, relative norm of the group's delta, share of the top-k entries. Layers come
    in block order, tensors outside any block last; kinds in names.KINDS order."""
    tensors = list(tensors)
    n_all = sum(t.n for t in tensors) or 1
    e_all = sum(t.energy for t in tensors)
    return {axis: _rows(tensors, axis, n_all, e_all, k) for axis in AXES}


def _rows(tensors: list[Grouped], axis: str, n_all: int, e_all: float, k: int | None) -> list[dict]:
    groups: dict[object, list[Grouped]] = {}
    for t in tensors:
        groups.setdefault(getattr(t, axis), []).append(t)
    order = (lambda g: (g is None, g or 0)) if axis == "layer" else KINDS.index
    rows = []
    for value in sorted(groups, key=order):
        members = groups[value]
        n = sum(t.n for t in members)
        energy = sum(t.energy for t in members)
        known = all(t.base_energy is not None for t in members)
        rows.append({
            axis: value, "tensors": len(members), "n": n, "param_share": n / n_all,
            "energy_share": energy / e_all if e_all > 0 else 0.0,
            "rel_norm": rel_norm(energy, sum(t.base_energy or 0.0 for t in members) if known else None),
            "topk_share": sum(t.selected or 0 for t in members) / k if k else None,
        })
    return rows


def rel_norm(energy: float, base_energy: float | None) -> float | None:
    """||delta|| / ||base|| from the squared norms; inf for a change of an all-zero base."""
    if base_energy is None:
        return None
    if base_energy <= 0:
        return 0.0 if energy == 0 else math.inf
    return math.sqrt(energy / base_energy)
