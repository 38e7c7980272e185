"""Choose gamma from a KL budget: the largest gamma (in the vector's direction, or against it)
whose mean KL(unsteered || steered) of the next-token distribution at the last position of each
calibration prompt stays within the budget.

KL need not grow monotonically with gamma, so "largest" means: the end of the first stretch from
0 that stays within the budget. The search doubles gamma from ``start`` until the budget is
exceeded (or ``gamma_max`` is reached), then bisects between the last gamma within and the first
beyond it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import LanguageModel
from .inject import steering
from .vector import SteeringVector


@dataclass
class Calibration:
    gamma: float  # signed: negative when calibrated against the vector
    kl: float  # mean KL at gamma
    budget: float
    reached: bool  # False when even gamma_max stayed within the budget
    trace: list[tuple[float, float]] = field(default_factory=list)  # (gamma, mean KL) evaluated


@torch.no_grad()
def _last_logprobs(model: LanguageModel, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """batches: equal-length prompt ids (B, T) -> log-probabilities at the last position (B, V), float64."""
    return [torch.log_softmax(model(ids.to(model.device))[:, -1].double(), -1).cpu() for ids in batches]


@torch.no_grad()
def mean_kl(model: LanguageModel, vec: SteeringVector, gamma: float, batches: list[torch.Tensor],
            base: list[torch.Tensor] | None = None) -> float:
    """Mean over prompts of KL(unsteered || steered) at the last position. ``base``: the unsteered
    log-probabilities, when already computed."""
    base = base if base is not None else _last_logprobs(model, batches)
    with steering(model, vec, gamma):
        steered = _last_logprobs(model, batches)
    kl = [(b.exp() * (b - s)).sum(-1) for b, s in zip(base, steered)]  # each (B,)
    return float(torch.cat(kl).mean())


def calibrate_gamma(model: LanguageModel, vec: SteeringVector, batches: list[torch.Tensor], budget: float, sign: int = 1,
                    start: float = 0.125, gamma_max: float = 64.0, bisections: int = 10) -> Calibration:
    """batches: calibration prompts as equal-length id tensors (``text.group_by_length``)."""
    if not budget > 0:
        from ..errors import ConfigError

        raise ConfigError(f"KL budget {budget} must be positive (nats).")
    base = _last_logprobs(model, batches)
    trace: list[tuple[float, float]] = []

    def kl(g: float) -> float:
        value = mean_kl(model, vec, sign * g, batches, base)
        trace.append((sign * g, value))
        return value

    lo, lo_kl, hi = 0.0, 0.0, None
    g = start
    while g <= gamma_max:
        value = kl(g)
        if value > budget:
            hi = g
            break
        lo, lo_kl = g, value
        g *= 2
    if hi is None:
        return Calibration(sign * lo, lo_kl, budget, False, trace)
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        value = kl(mid)
        if value > budget:
            hi = mid
        else:
            lo, lo_kl = mid, value
    return Calibration(sign * lo, lo_kl, budget, True, trace)
