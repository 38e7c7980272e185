"""Which buckets will need level 2, predicted from a sample before the full pass.

The curves and the top-k threshold need the exact values (level 2) of the buckets their ranks
fall in, and the selection needs every entry at or above the threshold's bucket -- but which
buckets those are is known only once every entry has been counted. Counting first and fetching
level 2 in a second full pass costs a second look at every entry; instead a cheap pre-pass reads
every s-th entry of each tensor (s prime, so that no row or column period aliases with it) and
estimates for every bucket b how many entries lie in buckets >= b, with a binomial error bar. The
full pass then flags a window of buckets around each queried rank, wide enough (Z standard errors
plus one sample's weight) that the true bucket is inside it except on very unusual data. When it
is not, a later pass fetches what is missing, so the prediction changes only the speed, never the
result. (A tensor's own curve needs no prediction: its histogram is complete before its second
sweep.)
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .radix import ABS_MASK, BUCKET_SHIFT, N_BUCKETS
from .sources import Loaded

SAMPLE_ENTRIES = 1 << 16  # sampled entries per tensor (the whole tensor below this)
Z = 5.0  # standard errors of margin on each side of a predicted bucket: a miss costs another pass
# A tensor's own curve and maximum: predicted from its own sample for tensors of at least
# OWN_ENTRIES entries (a smaller one is swept again at little cost), with a narrower margin -- a
# miss costs one more sweep of that tensor only, while every flagged entry costs a little in each
Z_OWN = 3.0
OWN_ENTRIES = 1 << 20


def sample_stride(n: int, entries: int) -> int:
    """1 for tensors of at most ``entries`` entries, else the first prime >= n / entries."""
    if n <= entries:
        return 1
    s = max(2, n // entries)
    while any(s % p == 0 for p in range(2, math.isqrt(s) + 1)):
        s += 1
    return s


@dataclass
class Estimate:
    """Estimated count of entries in buckets >= b for b = 0..N_BUCKETS (the last is 0), with its
    variance and the weight of one sampled entry (the resolution of the estimate)."""

    ge: np.ndarray  # (N_BUCKETS + 1,) float64
    var: np.ndarray  # (N_BUCKETS + 1,) float64
    weight: float

    @classmethod
    def empty(cls) -> Estimate:
        return cls(np.zeros(N_BUCKETS + 1), np.zeros(N_BUCKETS + 1), 0.0)

    @classmethod
    def of_counts(cls, per_bucket: np.ndarray, m: int, weight: float) -> Estimate:
        """From the bucket counts of m sampled entries, each standing for ``weight`` entries
        (exact, with zero variance, when the weight is 1)."""
        seen_ge = np.concatenate([np.cumsum(per_bucket[::-1])[::-1], [0]]).astype(np.float64)
        if weight == 1:
            return cls(seen_ge, np.zeros(N_BUCKETS + 1), 0.0)
        # binomial variance of weight * (hits among m); one hit added so that an empty tail is not certain
        var = weight * weight * (seen_ge + 1) * np.clip(1 - seen_ge / m, 0.0, 1.0)
        return cls(weight * seen_ge, var, weight)

    def add(self, other: Estimate) -> None:
        self.ge += other.ge
        self.var += other.var
        self.weight = max(self.weight, other.weight)

    def windows(self, ranks: Iterable[int], z: float | None = None) -> list[tuple[int, int]]:
        """For each rank r >= 1, the buckets [lo, hi] that may hold the r-th largest entry.

        The r-th largest lies in the bucket B with C(>= B) >= r > C(>= B+1), C the true counts. The
        bounds U >= C >= L are made monotone (C is non-increasing in b, so C(>= b) <= U(b') for any
        b' <= b and C(>= b) >= L(b') for any b' >= b), then B <= hi, the last b with U(b) >= r,
        and B >= lo, the first b with L(b+1) < r."""
        margin = (Z if z is None else z) * np.sqrt(self.var) + self.weight
        upper = np.minimum.accumulate(self.ge + margin)  # (N_BUCKETS + 1,) non-increasing
        lower = np.maximum.accumulate((self.ge - margin)[::-1])[::-1]
        r = -np.asarray(list(ranks), dtype=np.float64)
        # searchsorted wants ascending arrays: negate the non-increasing bounds
        his = np.searchsorted(-upper[:N_BUCKETS], r, side="right") - 1
        los = np.searchsorted(-lower[1:], r, side="right")
        return [(int(min(lo, hi)), int(max(lo, hi, 0))) for lo, hi in zip(los, his)]

    def at_or_above(self, bucket: int) -> float:
        """An upper estimate of the entries in buckets >= ``bucket``."""
        return float(self.ge[bucket] + Z * math.sqrt(self.var[bucket]) + self.weight)


class Sampler:
    """Samples tensor after tensor, pooling those sampled with the same stride from tensors of
    the same size (their entries stand for the same number of entries), so that the estimate
    costs one pass over the buckets per pool rather than per tensor."""

    def __init__(self, entries: int = SAMPLE_ENTRIES) -> None:
        self.entries = entries
        self.pools: dict[tuple[int, int], list] = {}  # (n, stride) -> [bucket counts, sampled entries]

    def sample(self, item: Loaded, n: int) -> np.ndarray:
        """int32 |d| bit patterns of every s-th entry of one tensor pair (thread-safe)."""
        if n == 0:
            return np.zeros(0, np.int32)
        return item.sample(sample_stride(n, self.entries)).view(np.int32) & ABS_MASK

    def add(self, n: int, bits: np.ndarray) -> None:
        """Pool one tensor's sample (``sample``'s result for a tensor of n entries)."""
        if n == 0:
            return
        pool = self.pools.setdefault((n, sample_stride(n, self.entries)), [np.zeros(N_BUCKETS, np.int64), 0])
        pool[0] += np.bincount(bits >> BUCKET_SHIFT, minlength=N_BUCKETS)[:N_BUCKETS]
        pool[1] += len(bits)

    def own_windows(self, n: int, bits: np.ndarray, ranks: list[int]) -> list[tuple[int, int]]:
        """Buckets that may hold each of ``ranks`` of one tensor of n entries, from its own sample
        (``sample``'s result); none for tensors under OWN_ENTRIES."""
        if n < OWN_ENTRIES or not len(bits) or not ranks:
            return []
        stride = sample_stride(n, self.entries)
        per_bucket = np.bincount(bits >> BUCKET_SHIFT, minlength=N_BUCKETS)[:N_BUCKETS]
        return Estimate.of_counts(per_bucket, len(bits), 1.0 if stride == 1 else n / len(bits)).windows(ranks, Z_OWN)

    def estimate(self) -> Estimate:
        total = Estimate.empty()
        for (n, stride), (per_bucket, m) in self.pools.items():
            total.add(Estimate.of_counts(per_bucket, m, 1.0 if stride == 1 else n / -(-n // stride)))
        return total
