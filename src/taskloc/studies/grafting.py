"""Grafting: base + (a chosen part of) a delta, scored three ways, as a share of what the full
delta gained. Shared by every study that asks "how much of the skill does this subset keep".

share kept (exact match, per-token accuracy):  (graft - base) / (tuned - base)
share kept (loss):                              (loss_base - loss_graft) / (loss_base - loss_tuned)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..models import load_weights
from ..tasks.base import Example
from ..tasks.scoring import skill_scores

StateDict = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]
MEASURES = ("exact", "token", "loss")
MEASURE_NAMES = {"exact": "exact match", "token": "per-token accuracy", "loss": "share of the loss gap"}


def graft(base: StateDict, delta: StateDict, mask: Mask, scale: float = 1.0) -> StateDict:
    """base + scale * mask * delta, tensor by tensor (entries outside the mask keep the base)."""
    return {k: torch.where(mask[k], base[k] + scale * delta[k].to(base[k].dtype), base[k]) for k in base}


def deltas_of(tuned: StateDict, base: StateDict) -> StateDict:
    return {k: tuned[k].float() - base[k].float() for k in base}


@dataclass(frozen=True)
class Scores:
    """Mean skill of one model on one evaluation set, per measure."""

    exact: float
    token: float
    loss: float

    def get(self, measure: str) -> float:
        return float(getattr(self, measure))


class Scorer:
    """Scores state dicts on a fixed evaluation set with one reusable model (weights swapped in)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, state: StateDict, examples: list[Example]) -> Scores:
        load_weights(self.model, state)
        s = skill_scores(self.model, examples)
        return Scores(float(s["exact"].mean()), float(s["token"].mean()), float(s["loss"].mean()))


def share_kept(graft_scores: Scores, base: Scores, tuned: Scores, measure: str) -> float:
    """How much of the full delta's gain a graft keeps on ``measure`` (1 = all of it; nan when the
    full delta gained nothing on it)."""
    if measure == "loss":
        gap = base.loss - tuned.loss
        return (base.loss - graft_scores.loss) / gap if gap > 0 else float("nan")
    gain = tuned.get(measure) - base.get(measure)
    return (graft_scores.get(measure) - base.get(measure)) / gain if gain > 0 else float("nan")


def gaussian_like(delta: StateDict, seed: int) -> StateDict:
    """A dense Gaussian delta with each tensor's own root-mean-square: the null a selector is held
    against (any skill it 'finds' there is fitted, not carried)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, d in delta.items():
        rms = float(d.float().square().mean().sqrt())
        out[name] = torch.randn(d.shape, generator=gen) * rms
    return out


def update_size(delta: StateDict, base: StateDict, moved: float = 1e-3) -> dict[str, float]:
    """How big a fine-tune's update is: ||delta|| / ||base|| and the share of entries that moved by
    more than ``moved`` times their tensor's RMS weight."""
    num = sum(float(d.float().square().sum()) for d in delta.values())
    den = sum(float(b.float().square().sum()) for b in base.values())
    total = sum(d.numel() for d in delta.values())
    count = sum(int((delta[k].abs() > moved * float(base[k].float().square().mean().sqrt())).sum()) for k in delta)
    return {"relative_norm": float(np.sqrt(num / den)) if den else float("nan"), "moved_share": count / total}


def curve(select: Callable[[float], Mask], fractions: list[float], score: Callable[[Mask, float], Scores]) -> dict[float, Scores]:
    """Scores of a selector's graft at each fraction k."""
    return {k: score(select(k), k) for k in fractions}
