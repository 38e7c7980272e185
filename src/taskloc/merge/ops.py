"""The merge formulas on one tensor: flat float32 tensors in, a flat float32 tensor out.

Every function here sees one tensor name at a time (the streaming loop in plan.py feeds them), so
memory is a few copies of one tensor per model. Shapes: ``n`` entries per tensor, ``N`` task models.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

# mergekit's slerp constants: above this |cos| the two vectors count as collinear and are lerped;
# a vector whose norm is at most SLERP_EPS is used as is instead of normalized
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


def top_entries(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Mask (n,) bool of the ``k`` entries with the largest |delta|; ties at the k-th magnitude go
    to lower flat indices, so the choice is deterministic and holds exactly k entries."""
    n = delta.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool)
    mag = np.abs(delta.numpy())  # (n,)
    # numpy's introselect on a scratch copy is several times faster than torch.kthvalue on CPU
    scratch = mag.copy()
    scratch.partition(n - k)
    kth = scratch[n - k]  # the k-th largest magnitude
    del scratch
    keep = mag > kth
    missing = k - int(np.count_nonzero(keep))
    if missing:
        keep[np.flatnonzero(mag == kth)[:missing]] = True  # flatnonzero lists indices ascending
    return torch.from_numpy(keep)


def weighted_sum(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """sum_i w_i * delta_i, (n,), accumulated in model order (the order mergekit's stacked sum
    adds them in), one (n,) buffer at a time."""
    total = deltas[0] * weights[0]
    for d, w in zip(deltas[1:], weights[1:]):
        total += d * w
    return total


def sign_consensus(deltas: list[torch.Tensor], weights: list[float], disjoint_mean: bool) -> torch.Tensor:
    """TIES steps 2-3 on (trimmed) task vectors: elect each entry's sign as the sign of the summed
    weighted mass (a zero sum elects +, as mergekit does), keep the weighted entries that agree with
    it (zeros never agree), and return their sum, or their weighted mean when ``disjoint_mean``
    (divided by the summed weights of the agreeing entries; entries with none stay 0). (n,)"""
    positive = weighted_sum(deltas, weights) >= 0  # (n,) the elected sign is +
    mixed = torch.zeros_like(deltas[0])  # (n,)
    divisor = torch.zeros_like(deltas[0]) if disjoint_mean else None
    for d, w in zip(deltas, weights):
        wd = d * w  # (n,)
        agree = torch.where(positive, wd > 0, wd < 0)  # (n,) bool
        mixed += torch.where(agree, wd, 0.0)
        if divisor is not None:
            divisor += agree * w
    if divisor is None:
        return mixed
    divisor[divisor == 0] = 1.0
    return mixed / divisor


def dare_seed(seed: int, task: int, name: str) -> int:
    """The generator seed of one task's drop mask on one tensor: a hash of (seed, task position,
    tensor name), so a mask depends on nothing else -- not on the order tensors are visited, the
    other tensors, or the storage layout."""
    digest = hashlib.sha256(f"taskloc-dare/{seed}/{task}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare(delta: torch.Tensor, drop: float, seed: int) -> torch.Tensor:
    """DARE on one task vector (n,): drop each entry with probability ``drop`` (a fraction in
    [0, 1)) and divide the survivors by 1 - drop, which keeps the expectation."""
    if drop == 0:
        return delta
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(delta.numel(), generator=gen) >= drop  # (n,), P(keep) = 1 - drop
    return torch.where(keep, delta / (1.0 - drop), 0.0)


def slerp_coefficients(t: float, dot: float, norm0: float, norm1: float) -> tuple[float, float] | None:
    """(s0, s1) with slerp = s0 * v0 + s1 * v1, or None when the vectors are nearly collinear and
    the caller should lerp. ``dot`` = v0 . v1; vectors with norm <= SLERP_EPS are not normalized
    (mergekit's rule)."""
    cos = dot / (norm0 if norm0 > SLERP_EPS else 1.0) / (norm1 if norm1 > SLERP_EPS else 1.0)
    if abs(cos) > SLERP_DOT_THRESHOLD:
        return None
    theta0 = math.acos(cos)
    sin0 = math.sin(theta0)
    return math.sin(theta0 - theta0 * t) / sin0, math.sin(theta0 * t) / sin0


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, among: torch.Tensor | None = None) -> torch.Tensor:
    """Spherical interpolation of two flat tensors (n,): t=0 gives v0, t=1 gives v1, and nearly
    collinear tensors are lerped. ``among`` (n,) bool restricts the angle to those entries (core
    isolation measures it over non-core entries only); the coefficients apply to every entry."""
    a, b = (v0, v1) if among is None else (torch.where(among, v0, 0.0), torch.where(among, v1, 0.0))
    dot = float(torch.dot(a, b))
    coeffs = slerp_coefficients(t, dot, float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b)))
    if coeffs is None:
        return (1 - t) * v0 + t * v1
    s0, s1 = coeffs
    return s0 * v0 + s1 * v1
