"""Sparsity and concentration metrics, as plain tensor functions over the last dimension.

Shared by the weight-delta analysis (on |delta|) and the activation studies (on hidden states,
REFERENCE C1). Every function takes ``x`` of shape (..., d) and returns one value per leading
index, shape (...), in float64; batches are computed at once. ``metric_profile`` returns every C1
metric of a batch (N, d) as a dict of (N,) tensors, under a named convention:

``convention="taskloc"`` (ours, the default)
- top-k mass uses the Lorenz curve: the top fraction f of d entries is floor(f*d) whole entries
  plus the remaining fraction of the next one, so the figure is continuous in f and equals the
  plain "sum of the top f*d entries" whenever f*d is a whole number.
- "l0" is the fraction of entries with |x| > mean(|x|) + std(|x|), population std (ddof = 0).
- ``eff_rank_norm``: exp(entropy of p) / d with p = x^2 / sum x^2 (0 log 0 = 0), in [1/d, 1].
- An all-zero vector has nothing to concentrate: it is treated as perfectly dense (top-k mass = f,
  Gini = 0, Hoyer = 0, normalised effective rank = 1); a zero matrix has effective rank 0.

``convention="paper"`` (the authors' code, REFERENCE C1; sparsityLLM QA-bench/rankmath/
deepmath_sparsity.py for the energy ratios and effective rank, cot/utils/rank.py for l0, L1 mass
and Gini, QA-bench/robustness for Hoyer)
- top-k mass over k = max(1, int(d * f)) whole entries (int truncates d*f as Python computes it).
- "l0" threshold mean(|h|) + std(|h|) with ``abs_h.std()`` on a torch tensor, i.e. torch's default
  unbiased std (Bessel, d - 1); numpy's default would have been the population std, which is ours.
- ``eff_rank``: exp(-sum p log p) with p = h^2 / sum h^2 + 1e-10 (the 1e-10 added to p itself,
  so it enters both factors), not divided by d: a count in [1, d] (plus d * 1e-10 terms).
- An all-zero vector returns 0 for every ratio and for the effective rank (the authors' early
  return), Gini 0 and Hoyer 0.
- The authors cast hidden states to float32 before these steps; here everything is float64, so
  parity with their figures is to float32 precision (~1e-6 relative), not bit for bit.

The same in both: Gini of sorted |x| (their 2 sum(i a_i)/(d sum a) - (d+1)/d is ours,
rearranged), Hoyer (sqrt(d) - l1/l2)/(sqrt(d) - 1), the L1 norm, and two of ours the paper does
not use: ``near_zero`` (share of |x_i| <= rel_tol * rms(x)) and ``above_zero`` (share of x_i > 0,
for MLP activations after the nonlinearity). nan or inf in a row propagate (the authors return
zeros for such rows; a study should see them instead).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .errors import ConfigError

CONVENTIONS = ("taskloc", "paper")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.10)
NEAR_ZERO_TOL = 0.01
PAPER_LOG_EPS = 1e-10
_TINY = torch.finfo(torch.float64).tiny


def _abs64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().to(torch.float64)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1]")


def _lorenz_share(ordered: torch.Tensor, fraction: float) -> torch.Tensor:
    """Top-``fraction`` share of rows already sorted descending (..., d): floor(f*d) whole entries
    plus the remaining part of the next; f for an all-zero row."""
    _check_fraction(fraction)
    d = ordered.shape[-1]
    whole = math.floor(fraction * d)
    part = fraction * d - whole
    top = ordered[..., :whole].sum(-1)
    if whole < d:
        top = top + part * ordered[..., whole]
    total = ordered.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(_TINY), torch.full_like(total, fraction))


def _whole_share(ordered: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the k largest entries of rows sorted descending (..., d); 0 for an all-zero row."""
    if not 1 <= k <= ordered.shape[-1]:
        raise ValueError(f"k={k} must lie in [1, {ordered.shape[-1]}]")
    total = ordered.sum(-1)
    return torch.where(total > 0, ordered[..., :k].sum(-1) / total.clamp_min(_TINY), torch.zeros_like(total))


def _descending(x: torch.Tensor) -> torch.Tensor:
    return _abs64(x).sort(dim=-1, descending=True).values  # (..., d), largest |x| first


def topk_mass(x: torch.Tensor, fraction: float, power: float = 1.0) -> torch.Tensor:
    """Share of sum(|x|^power) held by the top ``fraction`` of entries by |x| (Lorenz-interpolated)."""
    return _lorenz_share(_descending(x) ** power, fraction)


def paper_k(d: int, fraction: float) -> int:
    """The authors' top-k count: max(1, int(d * fraction)) whole entries."""
    _check_fraction(fraction)
    return max(1, int(d * fraction))


def topk_mass_whole(x: torch.Tensor, k: int, power: float = 1.0) -> torch.Tensor:
    """Share of sum(|x|^power) held by the k largest |x| (whole entries, no interpolation);
    0 for an all-zero row, as the authors' code returns."""
    return _whole_share(_descending(x) ** power, k)


def topk_l1_mass(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """C1 "top-k% L1 mass": sum of the top-k% |x_i| over sum |x_i|."""
    return topk_mass(x, fraction, power=1.0)


def topk_energy(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """C1 "top-k% energy": the same on x_i^2."""
    return topk_mass(x, fraction, power=2.0)


def l0_fraction(x: torch.Tensor, correction: int = 0) -> torch.Tensor:
    """C1 "l0": fraction of entries with |x| > mean(|x|) + std(|x|). correction = 0: population std
    (ours); 1: the unbiased std, torch's default, as the authors' code. With d <= correction the
    std is undefined and no entry counts (0)."""
    a = _abs64(x)
    mean = a.mean(-1, keepdim=True)
    dof = a.shape[-1] - correction
    var = (a - mean).pow(2).sum(-1, keepdim=True) / dof if dof > 0 else torch.full_like(mean, float("nan"))
    return (a > mean + var.sqrt()).to(torch.float64).mean(-1)


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of |x|: sum_i (2i - d - 1) a_(i) / (d * sum a), a sorted ascending, i = 1..d.
    0 for equal entries, (d-1)/d for a single non-zero entry."""
    a = _abs64(x).sort(dim=-1).values  # (..., d) ascending
    d = a.shape[-1]
    weights = 2.0 * torch.arange(1, d + 1, dtype=torch.float64, device=a.device) - d - 1  # (d,)
    total = a.sum(-1)
    g = (a * weights).sum(-1) / (d * total.clamp_min(_TINY))
    return torch.where(total > 0, g, torch.zeros_like(total))


def hoyer_from_norms(l1: torch.Tensor, l2: torch.Tensor, d: int) -> torch.Tensor:
    """Hoyer sparsity (sqrt(d) - l1/l2) / (sqrt(d) - 1) from the norms; 0 for d = 1 or a zero vector."""
    l1, l2 = torch.as_tensor(l1, dtype=torch.float64), torch.as_tensor(l2, dtype=torch.float64)
    if d <= 1:
        return torch.zeros_like(l1)
    root = math.sqrt(d)
    h = (root - l1 / l2.clamp_min(_TINY)) / (root - 1)
    return torch.where(l2 > 0, h, torch.zeros_like(h))


def hoyer(x: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity of x: 0 for equal magnitudes, 1 for a single non-zero entry."""
    a = _abs64(x)
    return hoyer_from_norms(a.sum(-1), a.pow(2).sum(-1).sqrt(), a.shape[-1])


def l1_norm(x: torch.Tensor) -> torch.Tensor:
    """sum |x_i| (C1 "L1 norm"; the authors' ``abs_h.sum()``)."""
    return _abs64(x).sum(-1)


def near_zero_fraction(x: torch.Tensor, rel_tol: float = NEAR_ZERO_TOL) -> torch.Tensor:
    """Share of entries with |x_i| <= rel_tol * rms(x): scale-free, so layers of different norm
    compare. An all-zero row is all near zero (1)."""
    a = _abs64(x)
    rms = a.pow(2).mean(-1, keepdim=True).sqrt()
    return (a <= rel_tol * rms).to(torch.float64).mean(-1)


def positive_fraction(x: torch.Tensor) -> torch.Tensor:
    """Share of entries x_i > 0 (signed: for MLP activations after the nonlinearity)."""
    return (x.detach() > 0).to(torch.float64).mean(-1)


def entropy_of_shares(weights: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of weights / sum(weights) along the last dim, with 0 log 0 = 0;
    log(d) (uniform) for an all-zero row."""
    w = weights.to(torch.float64)
    total = w.sum(-1, keepdim=True)
    p = torch.where(total > 0, w / total.clamp_min(_TINY), torch.ones_like(w) / w.shape[-1])
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)


def normalised_effective_rank(x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """exp(entropy of |x|^power / sum |x|^power) / d, in [1/d, 1]; 1 for an all-zero row.
    power = 1 shares |x| (the authors' ranking utility); power = 2 shares energy, as C1 defines the
    effective rank (``metric_profile``'s ``eff_rank_norm``)."""
    return torch.exp(entropy_of_shares(_abs64(x) ** power)) / x.shape[-1]


def paper_effective_rank(x: torch.Tensor) -> torch.Tensor:
    """The authors' effective rank: p = x^2 / sum x^2, then p + 1e-10, exp(-sum p log p); not
    divided by d; 0 for an all-zero row (their early return)."""
    e = _abs64(x).pow(2)
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(_TINY) + PAPER_LOG_EPS  # (..., d)
    rank = torch.exp(-(p * torch.log(p)).sum(-1))
    return torch.where(total.squeeze(-1) > 0, rank, torch.zeros_like(rank))


def effective_rank(matrix: torch.Tensor) -> float:
    """Effective rank of a 2-D matrix (Roy & Vetterli): exp of the entropy of its normalised singular
    values; between 1 and min(shape), and 0 for a zero matrix. Computed on the matrix's device."""
    if matrix.ndim != 2:
        raise ValueError(f"effective_rank needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    s = torch.linalg.svdvals(matrix.to(torch.float32))
    if not bool((s > 0).any()):
        return 0.0
    return float(torch.exp(entropy_of_shares(s.to(torch.float64))))


def _tag(fraction: float) -> str:
    return f"top{100 * fraction:g}"


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown metric convention {convention!r}; choose 'taskloc' (ours) or 'paper' (the authors' code).")


def metric_profile(x: torch.Tensor, convention: str = "taskloc", fractions: Iterable[float] = DEFAULT_FRACTIONS,
                   near_zero_tol: float = NEAR_ZERO_TOL) -> dict[str, torch.Tensor]:
    """Every C1 metric of the rows of x: (N, d) -> {name: (N,)} (or (d,) -> {name: 0-d}), float64.

    Keys: ``top{k}_l1`` and ``top{k}_energy`` for each fraction (k in percent: top1, top5, top10),
    ``l0``, ``gini``, ``hoyer``, ``l1_norm``, ``near_zero``, ``above_zero``, and the effective rank
    as ``eff_rank_norm`` (taskloc: divided by d) or ``eff_rank`` (paper: a count, not divided) -
    different names because they are on different scales. ``metric_definitions`` gives each key's
    one-line definition for a report; record ``convention`` beside the figures.
    """
    _check_convention(convention)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"metric_profile needs rows of at least one entry, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    paper = convention == "paper"
    out: dict[str, torch.Tensor] = {}
    desc = _descending(x)  # (..., d): one sort serves every fraction and both powers
    energy = desc.pow(2)
    for f in fractions:
        if paper:
            out[f"{_tag(f)}_l1"] = _whole_share(desc, paper_k(d, f))
            out[f"{_tag(f)}_energy"] = _whole_share(energy, paper_k(d, f))
        else:
            out[f"{_tag(f)}_l1"] = _lorenz_share(desc, f)
            out[f"{_tag(f)}_energy"] = _lorenz_share(energy, f)
    out["l0"] = l0_fraction(x, correction=1 if paper else 0)
    out["gini"] = gini(x)
    out["hoyer"] = hoyer(x)
    if paper:
        out["eff_rank"] = paper_effective_rank(x)
    else:
        out["eff_rank_norm"] = normalised_effective_rank(x, power=2.0)
    out["l1_norm"] = l1_norm(x)
    out["near_zero"] = near_zero_fraction(x, near_zero_tol)
    out["above_zero"] = positive_fraction(x)
    return out


def metric_definitions(convention: str = "taskloc", fractions: Iterable[float] = DEFAULT_FRACTIONS,
                       near_zero_tol: float = NEAR_ZERO_TOL) -> dict[str, str]:
    """One line per key of ``metric_profile`` under ``convention``, for reports and JSON."""
    _check_convention(convention)
    paper = convention == "paper"
    out: dict[str, str] = {}
    for f in fractions:
        count = f"the max(1, int(d*{f:g})) largest |h_i|" if paper else f"the top {100 * f:g}% of entries (Lorenz-interpolated)"
        out[f"{_tag(f)}_l1"] = f"share of sum |h_i| held by {count}"
        out[f"{_tag(f)}_energy"] = f"share of sum h_i^2 held by {count}"
    std = "unbiased std (d - 1, torch's default, as the authors)" if paper else "population std"
    out["l0"] = f"share of |h_i| > mean(|h|) + {std}"
    out["gini"] = "Gini of sorted |h|: sum (2i - d - 1) a_(i) / (d sum a)"
    out["hoyer"] = "(sqrt(d) - ||h||_1 / ||h||_2) / (sqrt(d) - 1)"
    if paper:
        out["eff_rank"] = "exp(-sum p log p), p = h^2 / sum h^2 + 1e-10, not divided by d (the authors' code)"
    else:
        out["eff_rank_norm"] = "exp(entropy of h^2 / sum h^2) / d, in [1/d, 1]"
    out["l1_norm"] = "sum |h_i|"
    out["near_zero"] = f"share of |h_i| <= {near_zero_tol:g} * rms(h)"
    out["above_zero"] = "share of h_i > 0"
    return out


def sparsity_profile(x: torch.Tensor, fractions: Iterable[float] = DEFAULT_FRACTIONS) -> dict[str, torch.Tensor]:
    """``metric_profile(x, "taskloc", fractions)``: kept under its old name for existing callers."""
    return metric_profile(x, "taskloc", fractions)
