"""Exact global top-p% regions of one task's |task - base|, found by the streaming delta analysis
and applied again tensor by tensor, so no model-sized mask is ever held.

The analysis (deltas.analysis.analyse) returns the exact threshold and how many entries each
tensor contributes; a tensor's mask is then every entry above the threshold plus its share of the
entries equal to it in flat-index order -- the same entries ``deltas.global_topk_mask`` selects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..deltas.analysis import analyse
from ..deltas.selection import TopK
from ..deltas.sources import DeltaSource


@dataclass(frozen=True)
class TopRegion:
    """The global top ``percent`` of |delta| for one task."""

    percent: float
    k: int  # entries selected over all floating tensors
    n: int  # all floating entries
    threshold: float | None  # |delta| of the k-th largest entry; None when k is 0 or n
    selected: dict[str, int]  # tensor name -> entries it contributes

    def mask(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """(n,) bool: this tensor's entries of the region, from its float32 delta (n,)."""
        want = self.selected.get(name, 0)
        if want == delta.numel():
            return torch.ones(delta.numel(), dtype=torch.bool)
        if want == 0 or self.threshold is None:
            return torch.zeros(delta.numel(), dtype=torch.bool)
        mag = delta.abs()
        keep = mag > self.threshold  # the threshold is a float32 value, so the comparison is exact
        missing = want - int(keep.sum())
        if missing:
            keep[torch.nonzero(mag == self.threshold).flatten()[:missing]] = True
        return keep


def find_region(source: DeltaSource, percent: float) -> TopRegion:
    """One streaming pass (two when the predicted threshold bucket misses) over ``source``."""
    report = analyse(source, top=TopK(fraction=percent / 100, text=f"{percent:g}%"), grid=(), rank_max_dim=0)
    sel = report.selection
    assert sel is not None  # a top was asked for
    selected = {s.name: int(s.selected or 0) for s in report.tensors}
    return TopRegion(percent, sel.k, report.total.n, sel.threshold, selected)
