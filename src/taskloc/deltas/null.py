"""The dense Gaussian null: what a delta of the same per-tensor size would look like if it were
dense random noise, so "concentrated" always means "more than that".

Choice: analytic, not sampled. Tensor t of the null holds n_t iid N(0, s_t^2) entries, with s_t^2
the tensor's own mean squared delta (so the null has the delta's expected energy, tensor by
tensor). In the large-n limit the share of the top fraction q of entries is exact:

    one tensor:  z = threshold / s solves q = erfc(z / sqrt 2)
                 L1 share     = exp(-z^2 / 2)
                 energy share = q + 2 z phi(z)
    all tensors: one threshold t over the mixture, solved from  sum_t n_t erfc(t / (s_t sqrt 2)) = q N,
                 then each tensor's top mass summed with its weight (n_t s_t for L1, n_t s_t^2 for
                 energy) -- a mixture of different scales, handled exactly, no sampling noise.

For tiny tensors (a bias of 64 entries) the finite-sample curve of one draw scatters around this
limit. Null Gini and Hoyer come from the same model, in closed form (see gaussian_null_gini).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..metrics import hoyer_from_norms

SQRT2 = math.sqrt(2.0)
GINI_HALF_NORMAL = SQRT2 - 1.0
_erfc = np.frompyfunc(math.erfc, 1, 1)  # numpy has no erfc; these arrays are small (tensors x grid)


def _erfc_np(x: np.ndarray) -> np.ndarray:
    return _erfc(x).astype(np.float64)


def _scales(sizes: Sequence[int], mean_squares: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray([float(s) for s in sizes], dtype=np.float64)  # (T,)
    sigma = np.sqrt(np.maximum(np.asarray([float(m) for m in mean_squares], dtype=np.float64), 0.0))  # (T,)
    return n, sigma


def gaussian_null_curve(sizes: Sequence[int], mean_squares: Sequence[float], fractions: Sequence[float]) -> dict[str, list[float]]:
    """Top-``fractions`` shares of L1 mass and of energy for the dense Gaussian null of tensors with
    ``sizes`` entries and mean squared deltas ``mean_squares``. Returns {"l1": [...], "energy": [...]}.
    Tensors with zero delta add entries but no mass; an all-zero delta gives the uniform curve (q)."""
    n, sigma = _scales(sizes, mean_squares)
    q = np.asarray([float(f) for f in fractions], dtype=np.float64)  # (G,)
    live = sigma > 0
    if not live.any() or not len(q):
        return {"l1": q.tolist(), "energy": q.tolist()}
    n_all = n.sum()
    n, sigma = n[live], sigma[live]
    t = _mixture_threshold(n, sigma, q, n_all)  # (G,)
    z = t[:, None] / sigma[None, :]  # (G, T)
    share_count = _erfc_np(z / SQRT2)  # fraction of each tensor's entries above the threshold
    phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    l1 = (n * sigma * np.exp(-0.5 * z * z)).sum(-1) / (n * sigma).sum()
    energy = (n * sigma**2 * (share_count + 2 * z * phi)).sum(-1) / (n * sigma**2).sum()
    # q = 0 and q = 1 are exact ends of the curve whatever the bisection returned
    l1 = np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, l1))
    energy = np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, energy))
    return {"l1": l1.tolist(), "energy": energy.tolist()}


def _mixture_threshold(n: np.ndarray, sigma: np.ndarray, q: np.ndarray, n_all: float) -> np.ndarray:
    """Threshold t per fraction with sum_t n_t erfc(t / (s_t sqrt 2)) = q * n_all, by bisection on
    log t (the count above t falls monotonically in t). Zero-delta tensors are in n_all only."""
    target = q * n_all  # (G,)
    lo = np.full_like(q, math.log(float(sigma.min()) * 1e-12))
    hi = np.full_like(q, math.log(float(sigma.max()) * 64.0))
    for _ in range(64):  # halves a bracket < 64 nats wide down to ~1e-17 nats
        mid = 0.5 * (lo + hi)
        above = (n * _erfc_np(np.exp(mid)[:, None] / (sigma * SQRT2))).sum(-1)  # (G,)
        too_low = above > target  # threshold too low: too many entries above it
        lo = np.where(too_low, mid, lo)
        hi = np.where(too_low, hi, mid)
    return np.exp(0.5 * (lo + hi))


def gaussian_null_gini(sizes: Sequence[int], mean_squares: Sequence[float]) -> float:
    """Gini of |null delta|, exactly: Gini = E| |X| - |Y| | / (2 E|X|) for X, Y drawn independently
    from the mixture, and for half-normals of scales a, b: E| |X| - |Y| | = sqrt(2/pi)(2 sqrt(a^2 + b^2) - a - b)
    (from E min = sqrt(2/pi)(a + b - sqrt(a^2 + b^2))). One scale gives sqrt 2 - 1."""
    n, sigma = _scales(sizes, mean_squares)
    w = n / n.sum()  # (T,) mixture weights
    mean_abs = float((w * sigma).sum())
    if mean_abs <= 0:
        return 0.0
    pair = 2 * np.sqrt(sigma[:, None] ** 2 + sigma[None, :] ** 2) - sigma[:, None] - sigma[None, :]  # (T, T)
    return float((w[:, None] * w[None, :] * pair).sum() / (2 * mean_abs))


def gaussian_null_hoyer(sizes: Sequence[int], mean_squares: Sequence[float]) -> float:
    """Hoyer of the null from its expected norms: L1 = sum n_t s_t sqrt(2/pi), L2 = sqrt(sum n_t s_t^2)."""
    l1 = sum(n * math.sqrt(max(m, 0.0)) for n, m in zip(sizes, mean_squares)) * math.sqrt(2 / math.pi)
    l2 = math.sqrt(sum(n * max(m, 0.0) for n, m in zip(sizes, mean_squares)))
    return float(hoyer_from_norms(l1, l2, int(sum(sizes))))
