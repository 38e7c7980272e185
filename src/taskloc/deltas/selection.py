"""Global top-k: how many entries (``TopK``), and where the selected entries go (sinks).

The streaming analysis finds the exact threshold; entries strictly above it are always selected,
and among the entries equal to it the first ones in (tensor order, flat index) order fill the
count -- so the selection is deterministic and holds exactly k entries. A sink receives the
selection tensor by tensor, as entries certainly selected and as candidates (with their |delta|
bit patterns) that the threshold decides on once known: ``MaskSink`` builds boolean masks in
memory; ``PatchSink`` (patch.py) writes a sparse patch file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .sources import Loaded

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"


@dataclass(frozen=True)
class TopK:
    """A fraction of all analysed entries (``--top 1%`` or ``--top 0.01``) or a count (``--top 1000``)."""

    fraction: float | None = None
    count: int | None = None
    text: str = ""

    def entries(self, n: int) -> int:
        if self.count is not None:
            if self.count > n:
                raise ConfigError(f"--top {self.text} asks for {self.count} entries but the checkpoints hold only {n}; use a percent.")
            return self.count
        return min(n, math.floor(self.fraction * n + 0.5))  # type: ignore[operator]

    def describe(self, n: int) -> str:
        k = self.entries(n)
        if self.count is not None:
            return f"top {k:,} entries ({100 * k / max(n, 1):.4g}% of {n:,})"
        return f"top {100 * self.fraction:g}% of {n:,} entries = {k:,}"  # type: ignore[operator]


def parse_top(text: str) -> TopK:
    """``"1%"`` -> 1 percent; ``"0.01"`` -> the fraction 0.01 (also 1 percent); ``"1000"`` -> 1000
    entries. A plain number with a decimal point must lie in [0, 1]; an integer is a count."""
    t = str(text).strip()
    if re.fullmatch(_NUMBER + "%", t):
        pct = float(t[:-1])
        if pct > 100:
            raise ConfigError(f"--top {text}: a percent must lie between 0% and 100%.")
        return TopK(fraction=pct / 100, text=t)
    if re.fullmatch(r"[0-9]+", t):
        return TopK(count=int(t), text=t)
    if re.fullmatch(_NUMBER, t):
        value = float(t)
        if value > 1:
            raise ConfigError(
                f"--top {text} is ambiguous: write {t}% for a percent, or a whole number of entries; "
                "a plain decimal is a fraction of all entries and must lie in [0, 1]."
            )
        return TopK(fraction=value, text=t)
    raise ConfigError(f"--top {text!r} is not a size: use a percent (1%), a fraction (0.01) or a count of entries (1000).")


def choose_candidates(bits: np.ndarray, t_bits: int, quota: int) -> np.ndarray:
    """Which candidates (|delta| bit patterns, in flat-index order) are selected: every one above
    the threshold's pattern, and the first ``quota`` equal to it. Returns a bool mask."""
    keep = bits > t_bits
    if quota:
        keep[np.flatnonzero(bits == t_bits)[:quota]] = True
    return keep


class SelectionSink:
    """Receives the selection of one tensor at a time, in tensor order."""

    def definite(self, name: str, idx: torch.Tensor, item: Loaded) -> None:
        """Entries certainly selected (flat indices, ascending)."""
        raise NotImplementedError

    def candidates(self, name: str, idx: torch.Tensor, bits: np.ndarray, item: Loaded) -> None:
        """Entries that may be selected (flat indices ascending, int32 |delta| bit patterns); which
        are is known only at the end. At most one call per tensor."""
        raise NotImplementedError

    def resolve(self, t_bits: int, quotas: dict[str, int]) -> None:
        """Threshold known: keep candidates above ``t_bits`` and the first ``quotas[name]`` equal to it."""
        raise NotImplementedError

    def discard(self) -> None:
        """Forget every candidate (the threshold fell outside their range; a later pass selects)."""
        raise NotImplementedError


class MaskSink(SelectionSink):
    """Boolean masks in memory, one per tensor, shaped like the tensor."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.flat = {name: torch.zeros(math.prod(shape), dtype=torch.bool) for name, shape in shapes.items()}
        self._pending: list[tuple[str, torch.Tensor, np.ndarray]] = []

    def definite(self, name: str, idx: torch.Tensor, item: Loaded) -> None:
        self.flat[name][idx.cpu()] = True

    def candidates(self, name: str, idx: torch.Tensor, bits: np.ndarray, item: Loaded) -> None:
        self._pending.append((name, idx.cpu(), bits))

    def resolve(self, t_bits: int, quotas: dict[str, int]) -> None:
        for name, idx, bits in self._pending:
            keep = torch.from_numpy(choose_candidates(bits, t_bits, quotas.get(name, 0)))
            self.flat[name][idx[keep]] = True
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: flat.view(self.shapes[name]) for name, flat in self.flat.items()}
