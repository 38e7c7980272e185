"""Sparsity and concentration metrics, as plain tensor functions over the last dimension.

Shared by the weight-delta analysis (on |delta|) and the activation studies (on hidden states,
REFERENCE C1). Every function takes ``x`` of shape (..., d) and returns one value per leading
index, shape (...), in float64; batches are computed at once.

Conventions, fixed once:
- top-k mass uses the Lorenz curve: the top fraction f of d entries is floor(f*d) whole entries
  plus the remaining fraction of the next one, so the figure is continuous in f and equals the
  plain "sum of the top f*d entries" whenever f*d is a whole number.
- An all-zero vector has nothing to concentrate: it is treated as perfectly dense (top-k mass = f,
  Gini = 0, Hoyer = 0, normalised effective rank = 1); a zero matrix has effective rank 0.
- "l0" (C1) is the fraction of entries with |x| > mean(|x|) + std(|x|), population std.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def _abs64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().to(torch.float64)


def topk_mass(x: torch.Tensor, fraction: float, power: float = 1.0) -> torch.Tensor:
    """Share of sum(|x|^power) held by the top ``fraction`` of entries by |x| (Lorenz-interpolated)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1]")
    v = _abs64(x) ** power
    d = v.shape[-1]
    ordered = v.sort(dim=-1, descending=True).values  # (..., d), largest first
    whole = math.floor(fraction * d)
    part = fraction * d - whole
    top = ordered[..., :whole].sum(-1)
    if whole < d:
        top = top + part * ordered[..., whole]
    total = v.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(total, fraction))


def topk_l1_mass(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """C1 "top-k% L1 mass": sum of the top-k% |x_i| over sum |x_i|."""
    return topk_mass(x, fraction, power=1.0)


def topk_energy(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """C1 "top-k% energy": the same on x_i^2."""
    return topk_mass(x, fraction, power=2.0)


def l0_fraction(x: torch.Tensor) -> torch.Tensor:
    """C1 "l0": fraction of entries with |x| > mean(|x|) + std(|x|) (population std)."""
    a = _abs64(x)
    cut = a.mean(-1, keepdim=True) + a.std(-1, correction=0, keepdim=True)
    return (a > cut).to(torch.float64).mean(-1)


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of |x|: sum_i (2i - d - 1) a_(i) / (d * sum a), a sorted ascending, i = 1..d.
    0 for equal entries, (d-1)/d for a single non-zero entry."""
    a = _abs64(x).sort(dim=-1).values  # (..., d) ascending
    d = a.shape[-1]
    weights = 2.0 * torch.arange(1, d + 1, dtype=torch.float64, device=a.device) - d - 1  # (d,)
    total = a.sum(-1)
    g = (a * weights).sum(-1) / (d * total.clamp_min(torch.finfo(torch.float64).tiny))
    return torch.where(total > 0, g, torch.zeros_like(total))


def hoyer_from_norms(l1: torch.Tensor, l2: torch.Tensor, d: int) -> torch.Tensor:
    """Hoyer sparsity (sqrt(d) - l1/l2) / (sqrt(d) - 1) from the norms; 0 for d = 1 or a zero vector."""
    l1, l2 = torch.as_tensor(l1, dtype=torch.float64), torch.as_tensor(l2, dtype=torch.float64)
    if d <= 1:
        return torch.zeros_like(l1)
    root = math.sqrt(d)
    h = (root - l1 / l2.clamp_min(torch.finfo(torch.float64).tiny)) / (root - 1)
    return torch.where(l2 > 0, h, torch.zeros_like(h))


def hoyer(x: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity of x: 0 for equal magnitudes, 1 for a single non-zero entry."""
    a = _abs64(x)
    return hoyer_from_norms(a.sum(-1), a.pow(2).sum(-1).sqrt(), a.shape[-1])


def entropy_of_shares(weights: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of weights / sum(weights) along the last dim, with 0 log 0 = 0;
    log(d) (uniform) for an all-zero row."""
    w = weights.to(torch.float64)
    total = w.sum(-1, keepdim=True)
    p = torch.where(total > 0, w / total.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(w) / w.shape[-1])
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)


def normalised_effective_rank(x: torch.Tensor) -> torch.Tensor:
    """C1 "normalised effective rank": exp(entropy of |x| / sum |x|) / d, in (0, 1]."""
    return torch.exp(entropy_of_shares(_abs64(x))) / x.shape[-1]


def effective_rank(matrix: torch.Tensor) -> float:
    """Effective rank of a 2-D matrix (Roy & Vetterli): exp of the entropy of its normalised singular
    values; between 1 and min(shape), and 0 for a zero matrix. Computed on the matrix's device."""
    if matrix.ndim != 2:
        raise ValueError(f"effective_rank needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    s = torch.linalg.svdvals(matrix.to(torch.float32))
    if not bool((s > 0).any()):
        return 0.0
    return float(torch.exp(entropy_of_shares(s.to(torch.float64))))


def sparsity_profile(x: torch.Tensor, fractions: Iterable[float] = (0.01, 0.05, 0.10)) -> dict[str, torch.Tensor]:
    """Every C1 metric of x (..., d) at once: top-k% L1 mass and energy for each fraction, l0,
    Gini, Hoyer and normalised effective rank; keys like ``top5_l1``, ``top5_energy``, ``gini``."""
    out: dict[str, torch.Tensor] = {}
    for f in fractions:
        tag = f"top{100 * f:g}"
        out[f"{tag}_l1"] = topk_l1_mass(x, f)
        out[f"{tag}_energy"] = topk_energy(x, f)
    out["l0"] = l0_fraction(x)
    out["gini"] = gini(x)
    out["hoyer"] = hoyer(x)
    out["eff_rank"] = normalised_effective_rank(x)
    return out
