"""Exact rank queries over |delta| without sorting, by radix histograms of float32 bit patterns.

For x >= 0 the int32 bit pattern of a float32 is monotone in x, so ranking |delta| is ranking 31-bit
integers. Level 1 buckets them by the top 16 bits (8 exponent + 8 mantissa bits: each bucket spans
a factor of at most 1 + 2^-8) and keeps per bucket the count, sum |d| and sum d^2 in float64 (the
|d| of one bucket share an exponent, so their float64 sum is exact up to 2^28 entries; d^2 sums
carry float64 rounding, ~1e-16 per entry). A rank query -- "sum of
the r largest entries", "the r-th largest value" -- then needs only the entries of the one bucket
the rank falls in: level 2, their remaining 15 bits, i.e. their exact values. For one tensor in
memory level 2 is gathered directly; for all tensors it is a second streaming pass that counts
the entries of the few boundary buckets by their low bits.

Float32 bit patterns with exponent 255 (NaN/Inf) land in buckets >= NONFINITE_BUCKET, so the
level-1 histogram doubles as a free NaN/Inf check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .scratch import Scratch

BUCKET_SHIFT = 15
N_BUCKETS = 1 << 16
LOW_MASK = (1 << BUCKET_SHIFT) - 1
NONFINITE_BUCKET = 0x7F800000 >> BUCKET_SHIFT


def abs_bits(x: torch.Tensor, scratch: Optional[Scratch] = None) -> torch.Tensor:
    """int32 bit patterns of |x| for a flat float32 tensor (the sign bit cleared).

    On CPU the bit operations of the hot loop run in numpy, single-threaded: as fast as torch's
    kernels here, and free of the thread hand-off cost torch pays on a busy machine."""
    out = scratch.get("bits", x.numel(), torch.int32, x.device) if scratch is not None else torch.empty_like(x, dtype=torch.int32)
    if x.device.type == "cpu":
        np.bitwise_and(x.numpy().view(np.int32), 0x7FFFFFFF, out=out.numpy())
        return out
    return torch.bitwise_and(x.view(torch.int32), 0x7FFFFFFF, out=out)


def bucket_ids(bits: torch.Tensor, scratch: Optional[Scratch] = None) -> torch.Tensor:
    """int64 level-1 bucket of each bit pattern (int64 so numpy indexes with it without a copy)."""
    out = scratch.get("hi", bits.numel(), torch.int64, bits.device) if scratch is not None else torch.empty_like(bits, dtype=torch.int64)
    if bits.device.type == "cpu":
        np.right_shift(bits.numpy(), BUCKET_SHIFT, out=out.numpy())
        return out
    return torch.bitwise_right_shift(bits, BUCKET_SHIFT, out=out)


def bits_to_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of non-negative float32 bit patterns."""
    return np.asarray(bits, dtype=np.int64).astype(np.int32).view(np.float32).astype(np.float64)


@dataclass
class Histogram:
    """Level 1: per bucket count, sum |d|, sum d^2 (buckets ascending in |d|)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.int64))
    sum1: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.float64))
    sum2: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.float64))

    @classmethod
    def of_bits(cls, bits: torch.Tensor, scratch: Optional[Scratch] = None) -> tuple["Histogram", torch.Tensor]:
        """Histogram of one tensor's |d| bit patterns (flat int32); returns it with the bucket ids."""
        hi = bucket_ids(bits, scratch)  # (n,) int64
        n = bits.numel()
        weights = scratch.get("weights", n, torch.float64, bits.device) if scratch is not None else torch.empty(n, dtype=torch.float64, device=bits.device)
        if bits.device.type == "cpu":
            hi_np, w = hi.numpy(), weights.numpy()
            np.copyto(w, bits.numpy().view(np.float32))  # |d| exactly, in float64
            counts = np.bincount(hi_np, minlength=N_BUCKETS)
            sum1 = np.bincount(hi_np, weights=w, minlength=N_BUCKETS)
            np.multiply(w, w, out=w)  # d^2, exact in float64
            sum2 = np.bincount(hi_np, weights=w, minlength=N_BUCKETS)
        else:
            weights.copy_(bits.view(torch.float32))
            counts = torch.bincount(hi, minlength=N_BUCKETS).cpu().numpy()
            sum1 = torch.bincount(hi, weights=weights, minlength=N_BUCKETS).cpu().numpy()
            sum2 = torch.bincount(hi, weights=weights.mul_(weights), minlength=N_BUCKETS).cpu().numpy()
        return cls(counts.astype(np.int64), sum1, sum2), hi

    @classmethod
    def of_zeros(cls, n: int) -> "Histogram":
        h = cls()
        h.counts[0] = n
        return h

    def add(self, other: "Histogram") -> None:
        self.__dict__.pop("_ge", None)  # invalidate the cumulative counts
        self.counts += other.counts
        self.sum1 += other.sum1
        self.sum2 += other.sum2

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def total1(self) -> float:
        return float(self.sum1.sum())

    @property
    def total2(self) -> float:
        return float(self.sum2.sum())

    def has_nonfinite(self) -> bool:
        return bool(self.counts[NONFINITE_BUCKET:].any())

    def top_bucket(self) -> int:
        nz = np.flatnonzero(self.counts)
        return int(nz[-1]) if len(nz) else 0

    def _at_or_above(self) -> np.ndarray:
        """(N_BUCKETS + 1,): entries in buckets >= b, with a trailing 0 for b = N_BUCKETS."""
        cached = getattr(self, "_ge", None)
        if cached is None:
            cached = np.concatenate([np.cumsum(self.counts[::-1])[::-1], [0]])
            self._ge = cached
        return cached

    def locate(self, rank: int) -> tuple[int, int]:
        """Bucket b holding the rank-th largest entry (1 <= rank <= n) and how many of b's entries
        the top ``rank`` take (1..counts[b])."""
        ge = self._at_or_above()
        # ge is non-increasing; b is the largest bucket with ge[b] >= rank
        b = int(np.searchsorted(-ge[:N_BUCKETS], -rank, side="right")) - 1
        return b, rank - int(ge[b + 1])

    def sums_above(self, bucket: int) -> tuple[float, float]:
        return float(self.sum1[bucket + 1:].sum()), float(self.sum2[bucket + 1:].sum())

    def compressed(self) -> tuple[np.ndarray, np.ndarray]:
        """(buckets, counts) of the non-empty buckets: a small per-tensor summary."""
        nz = np.flatnonzero(self.counts)
        return nz.astype(np.int32), self.counts[nz]


class Within:
    """Level 2 of one bucket: its distinct exact values (descending) with their counts."""

    def __init__(self, values_desc: np.ndarray, counts: np.ndarray, bits_desc: np.ndarray) -> None:
        self.values = values_desc.astype(np.float64)
        self.bits = bits_desc.astype(np.int64)
        self.counts = counts.astype(np.int64)
        self.cum = np.cumsum(self.counts)
        self.cum1 = np.cumsum(self.values * self.counts)
        self.cum2 = np.cumsum(self.values * self.values * self.counts)

    @classmethod
    def of_bits(cls, bits: np.ndarray) -> "Within":
        uniq, counts = np.unique(np.asarray(bits, dtype=np.int64), return_counts=True)
        uniq, counts = uniq[::-1], counts[::-1]
        return cls(bits_to_values(uniq), counts, uniq)

    def _split(self, need: int) -> tuple[int, int]:
        """Index j of the value holding the need-th largest entry, and how many are taken before j."""
        j = int(np.searchsorted(self.cum, need, side="left"))
        return j, (int(self.cum[j - 1]) if j else 0)

    def top(self, need: int) -> tuple[float, float]:
        """Sums of |d| and d^2 over the ``need`` largest entries of the bucket."""
        j, before = self._split(need)
        s1 = (self.cum1[j - 1] if j else 0.0) + (need - before) * self.values[j]
        s2 = (self.cum2[j - 1] if j else 0.0) + (need - before) * self.values[j] ** 2
        return float(s1), float(s2)

    def kth(self, need: int) -> tuple[int, int]:
        """Bit pattern of the need-th largest entry and how many entries equal to it the top
        ``need`` include (the rest of the equal ones are left out)."""
        j, before = self._split(need)
        return int(self.bits[j]), need - before


class RankIndex:
    """Exact rank queries over a set of values, from its level-1 histogram plus level 2 of the
    buckets the queried ranks fall in."""

    def __init__(self, hist: Histogram, within: dict[int, Within]) -> None:
        self.hist = hist
        self.within = within
        self.n = hist.n

    def top_sums(self, rank: int) -> tuple[float, float]:
        """Sums of |d| and d^2 over the ``rank`` largest entries."""
        if rank <= 0:
            return 0.0, 0.0
        if rank >= self.n:
            return self.hist.total1, self.hist.total2
        b, need = self.hist.locate(rank)
        above1, above2 = self.hist.sums_above(b)
        in1, in2 = self.within[b].top(need)
        return above1 + in1, above2 + in2

    def shares(self, fractions: Sequence[float]) -> tuple[list[float], list[float]]:
        """Lorenz-interpolated shares of L1 mass and of energy held by the top ``fractions``; an
        all-zero set is perfectly dense (share = fraction)."""
        total1, total2 = self.hist.total1, self.hist.total2
        l1, l2 = [], []
        for f in fractions:
            whole = math.floor(f * self.n)
            part = f * self.n - whole
            lo1, lo2 = self.top_sums(whole)
            hi1, hi2 = self.top_sums(whole + 1) if part > 0 else (lo1, lo2)
            l1.append(_share(lo1 + part * (hi1 - lo1), total1, f))
            l2.append(_share(lo2 + part * (hi2 - lo2), total2, f))
        return l1, l2

    def kth(self, rank: int) -> tuple[int, int]:
        """(bit pattern of the rank-th largest value, how many entries equal to it are inside the
        top ``rank``), for 1 <= rank <= n."""
        b, need = self.hist.locate(rank)
        return self.within[b].kth(need)


def _share(part: float, total: float, fraction: float) -> float:
    if total <= 0:
        return float(fraction)
    return min(1.0, max(0.0, part / total))


def ranks_for(n: int, fractions: Iterable[float]) -> list[int]:
    """Every rank the Lorenz-interpolated curve at ``fractions`` queries (1..n-1; 0 and n need no
    level 2)."""
    ranks = set()
    for f in fractions:
        whole = math.floor(f * n)
        ranks.update(r for r in (whole, whole + 1) if 0 < r < n)
    return sorted(ranks)


def boundary_buckets(hist: Histogram, ranks: Iterable[int]) -> list[int]:
    return sorted({hist.locate(r)[0] for r in ranks})


def within_from_tensor(bits: torch.Tensor, hi: torch.Tensor, buckets: Sequence[int]) -> dict[int, Within]:
    """Level 2 of ``buckets`` for one tensor in memory: the exact values of their entries."""
    if not buckets:
        return {}
    lut = np.zeros(N_BUCKETS, dtype=bool)
    lut[list(buckets)] = True
    hi_np, bits_np = hi.cpu().numpy(), bits.cpu().numpy()
    picked = bits_np[lut[hi_np]]  # bits of the entries in boundary buckets (a small subset)
    groups = picked >> BUCKET_SHIFT
    return {b: Within.of_bits(picked[groups == b]) for b in buckets}


class Level2Counts:
    """Level 2 of a few buckets over a stream: counts per (bucket, low 15 bits)."""

    def __init__(self, buckets: Sequence[int]) -> None:
        self.buckets = list(buckets)
        self.slot = np.full(N_BUCKETS, -1, dtype=np.int64)
        self.slot[self.buckets] = np.arange(len(self.buckets))
        self.wanted = self.slot >= 0
        self.counts = np.zeros(len(self.buckets) << BUCKET_SHIFT, dtype=np.int64)

    def add(self, bits: np.ndarray, hi: np.ndarray) -> None:
        keep = np.flatnonzero(self.wanted[hi])  # entries in a wanted bucket: a small subset
        if len(keep):
            keys = (self.slot[hi[keep]] << BUCKET_SHIFT) | (bits[keep].astype(np.int64) & LOW_MASK)
            self.counts += np.bincount(keys, minlength=len(self.counts))

    def within(self) -> dict[int, Within]:
        out = {}
        per = self.counts.reshape(len(self.buckets), 1 << BUCKET_SHIFT)
        for i, b in enumerate(self.buckets):
            lows = np.flatnonzero(per[i])[::-1]
            bits = (np.int64(b) << BUCKET_SHIFT) | lows
            out[b] = Within(bits_to_values(bits), per[i][lows], bits)
        return out


def gini_from_histogram(hist: Histogram) -> float:
    """Gini of |d| from level 1, each bucket's entries replaced by their mean. Within a bucket the
    values differ by a factor of at most 1 + 2^-8, which bounds the error by 2^-9 (about 0.002,
    always an underestimate): sum_b D_b / (n S) with D_b <= c_b^2 w_b / 2 <= c_b S_b 2^-9."""
    n, total = hist.n, hist.total1
    if n <= 1 or total <= 0:
        return 0.0
    counts, sums = hist.counts.astype(np.float64), hist.sum1
    start = np.cumsum(counts) - counts  # entries in lower buckets (ascending ranks before this bucket)
    # sum over the bucket of (2i - n - 1) * mean, ranks i = start+1 .. start+c  ->  S_b (2 start - n + c)
    return float(np.sum(sums * (2 * start - n + counts)) / (n * total))
