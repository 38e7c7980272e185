"""Exact rank queries over |delta| without sorting, by radix histograms of float32 bit patterns.

For x >= 0 the int32 bit pattern of a float32 is monotone in x, so ranking |delta| is ranking 31-bit
integers. Level 1 buckets them by the top 16 bits (8 exponent + 8 mantissa bits: each bucket spans
a factor of at most 1 + 2^-8) and keeps per bucket the count, sum |d| and sum d^2 in float64. The
sums come from exact integer moments (``Histogram.from_moments``): inside bucket b every value is
v_b + u_b * L, with v_b the bucket's smallest value, u_b its step and L the low 15 bits, so the
count, sum L and sum L^2 (integers, summed exactly) give sum |d| and sum d^2 with one or two
float64 roundings per bucket. A rank query -- "sum of the r largest entries", "the r-th largest
value" -- then needs only the entries of the one bucket the rank falls in: level 2, their
remaining 15 bits, i.e. their exact values, kept as counts per low-bit value.

Float32 bit patterns with exponent 255 (NaN/Inf) land in buckets >= NONFINITE_BUCKET, so the
level-1 histogram doubles as a free NaN/Inf check.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

BUCKET_SHIFT = 15
N_BUCKETS = 1 << 16
LOW_MASK = (1 << BUCKET_SHIFT) - 1
ABS_MASK = 0x7FFFFFFF  # clears the sign bit
COMPILED_COUNTS = True  # False keeps level-2 counting in numpy where numba is installed (tests compare)
NONFINITE_BUCKET = 0x7F800000 >> BUCKET_SHIFT


def bits_to_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of non-negative float32 bit patterns."""
    return np.asarray(bits, dtype=np.int64).astype(np.int32).view(np.float32).astype(np.float64)


# v_b and u_b of every finite bucket: |d| = v_b + u_b * L inside bucket b (exact in float64; the
# step is one unit in the last place of the bucket's exponent, 2^-149 for denormals)
_FINITE = np.arange(NONFINITE_BUCKET, dtype=np.int64) << BUCKET_SHIFT
BUCKET_FLOOR = bits_to_values(_FINITE)
BUCKET_STEP = bits_to_values(_FINITE | 1) - BUCKET_FLOOR


@dataclass
class Histogram:
    """Level 1: per bucket count, sum |d|, sum d^2 (buckets ascending in |d|)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.int64))
    sum1: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.float64))
    sum2: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, np.float64))

    @classmethod
    def from_moments(cls, counts: np.ndarray, low_sum: np.ndarray, low_sq: np.ndarray) -> Histogram:
        """Level 1 from per-bucket integer moments (N_BUCKETS each, int64): entry count, sum of L and
        sum of L^2, L the low 15 bits. Products of the small integers with v_b and u_b are exact in
        float64 (v_b has 9 significant bits, u_b is a power of two), so sum |d| is rounded once per
        bucket and sum d^2 twice. Non-finite buckets keep their counts and zero sums."""
        h = cls(counts=counts.astype(np.int64))
        at = h.occupied()
        at = slice(at.start, min(at.stop, NONFINITE_BUCKET))
        c, s1, s2 = counts[at].astype(np.float64), low_sum[at].astype(np.float64), low_sq[at].astype(np.float64)
        v, u = BUCKET_FLOOR[at], BUCKET_STEP[at]
        h.sum1[at] = c * v + u * s1
        h.sum2[at] = c * v * v + 2 * v * u * s1 + u * u * s2  # (v + uL)^2 summed
        return h

    @classmethod
    def of_zeros(cls, n: int) -> Histogram:
        h = cls()
        h.counts[0] = n
        return h

    def add(self, other: Histogram) -> None:
        self.__dict__.pop("_ge", None)  # invalidate the cumulative counts
        self.__dict__.pop("_occupied", None)
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
        return max(self.occupied().stop - 1, 0)

    def _at_or_above(self) -> np.ndarray:
        """(N_BUCKETS + 1,): minus the entries in buckets >= b, with a trailing 0 for b = N_BUCKETS
        (negated: ascending, as searchsorted wants)."""
        cached = getattr(self, "_ge", None)
        if cached is None:
            cached = -np.concatenate([np.cumsum(self.counts[::-1])[::-1], [0]])
            self._ge = cached
        return cached

    def locate(self, rank: int) -> tuple[int, int]:
        """Bucket b holding the rank-th largest entry (1 <= rank <= n) and how many of b's entries
        the top ``rank`` take (1..counts[b])."""
        neg_ge = self._at_or_above()
        # ge is non-increasing; b is the largest bucket with ge[b] >= rank
        b = int(np.searchsorted(neg_ge[:N_BUCKETS], -rank, side="right")) - 1
        return b, rank + int(neg_ge[b + 1])

    def occupied(self) -> slice:
        """The buckets from the first to the last non-empty one (sums outside are zero)."""
        cached = getattr(self, "_occupied", None)
        if cached is None:
            nz = np.flatnonzero(self.counts)
            cached = self._occupied = slice(int(nz[0]), int(nz[-1]) + 1) if len(nz) else slice(0, 0)
        return cached

    def sums_above(self, bucket: int) -> tuple[float, float]:
        stop = self.occupied().stop
        return float(self.sum1[bucket + 1:stop].sum()), float(self.sum2[bucket + 1:stop].sum())

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

    def _split(self, need: int) -> tuple[int, int]:
        """Index j of the value holding the need-th largest entry, and how many are taken before j."""
        j = int(np.searchsorted(self.cum, need, side="left"))
        return j, (int(self.cum[j - 1]) if j else 0)

    def top(self, need: int) -> tuple[float, float]:
        """Sums of |d| and d^2 over the ``need`` largest entries of the bucket."""
        j, before = self._split(need)
        weighted = self.values[:j] * self.counts[:j]  # sums of the values above j, taken on demand (a few per bucket)
        s1 = weighted.sum() + (need - before) * self.values[j]
        s2 = np.dot(weighted, self.values[:j]) + (need - before) * self.values[j] ** 2
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


def within_of(bits: np.ndarray, buckets: Sequence[int]) -> dict[int, Within]:
    """Level 2 of ``buckets`` from bit patterns that include every entry of those buckets (other
    entries are ignored): by counting per low-bit value, or by sorting when the entries are far
    fewer than the 2^15 counters per bucket."""
    if not buckets:
        return {}
    if len(bits) * 32 >= len(buckets) << BUCKET_SHIFT:
        level2 = Level2Counts(buckets)
        level2.add(bits)
        return level2.within()
    ours = bits[np.isin(bits >> BUCKET_SHIFT, buckets)]
    uniq, counts = np.unique(ours.astype(np.int64), return_counts=True)  # ascending
    owner = uniq >> BUCKET_SHIFT
    out = {}
    for b in buckets:
        at = np.flatnonzero(owner == b)[::-1]  # descending values
        out[b] = Within(bits_to_values(uniq[at]), counts[at], uniq[at])
    return out


class Level2Counts:
    """Level 2 of a few buckets over a stream: counts per (bucket, low 15 bits), fed with the bit
    patterns of any set of entries that includes all of those buckets' entries."""

    def __init__(self, buckets: Sequence[int], most: int | None = None, buffer: np.ndarray | None = None) -> None:
        """``most``: an upper bound on the entries that will be counted, when known; below 2^31
        the counters are int32, half the cache footprint for the random increments. ``buffer``:
        a reused 1-D int32 array for those counters, when large enough (fresh megabytes per
        tensor would cost more in page faults than zeroing)."""
        self.buckets = list(buckets)
        self.slot = np.full(N_BUCKETS, -1, dtype=np.int64)
        self.slot[self.buckets] = np.arange(len(self.buckets))
        self.wanted = self.slot >= 0
        size = len(self.buckets) << BUCKET_SHIFT
        if most is not None and most < 2**31 and buffer is not None and buffer.dtype == np.int32 and len(buffer) >= size:
            self.counts = buffer[:size]
            self.counts.fill(0)
        else:
            self.counts = np.zeros(size, dtype=np.int32 if most is not None and most < 2**31 else np.int64)

    def add(self, bits: np.ndarray, hi: np.ndarray | None = None) -> None:
        """Count the entries of wanted buckets among ``bits`` (int32 patterns of |d|; ``hi`` their
        buckets, when already known)."""
        if not self.buckets or not len(bits):
            return
        from . import kernel  # imported here: kernel.py takes its constants from this module

        if kernel.AVAILABLE and COMPILED_COUNTS and bits.dtype == np.int32:
            kernel.count_low_bits(bits, self.slot, self.counts)  # one pass, no temporaries
            return
        hi = bits >> BUCKET_SHIFT if hi is None else hi
        keep = np.flatnonzero(self.wanted[hi])  # entries in a wanted bucket
        if len(keep):
            keys = (self.slot[hi[keep]] << BUCKET_SHIFT) | (bits[keep] & LOW_MASK)
            np.add.at(self.counts, keys, 1)  # touches only the counters hit (a bincount would sweep them all)

    def within(self) -> dict[int, Within]:
        flat = np.flatnonzero(self.counts != 0)  # by slot, then ascending low bits (a bool scan is the fast one)
        rows = flat >> BUCKET_SHIFT
        bits = (np.asarray(self.buckets, dtype=np.int64)[rows] << BUCKET_SHIFT) | (flat & LOW_MASK)
        values, counts = bits_to_values(bits), self.counts[flat]
        edges = np.searchsorted(rows, np.arange(len(self.buckets) + 1))
        out = {}
        for i, b in enumerate(self.buckets):
            at = slice(edges[i + 1] - 1, edges[i] - 1 if edges[i] else None, -1)  # descending values
            out[b] = Within(values[at], counts[at], bits[at])
        return out


class Level2Store:
    """Level 2 of chosen buckets over a stream, each kept in the smaller form: a dense bucket as
    counts per low-bit value (Level2Counts, 256 KB), a sparse one as its entries' bit patterns
    (4 bytes each)."""

    def __init__(self, dense: Sequence[int], sparse: Sequence[int]) -> None:
        self.table = Level2Counts(dense)
        self.sparse = np.zeros(N_BUCKETS, dtype=bool)
        self.sparse[list(sparse)] = True
        self.kept: list[np.ndarray] = []
        self.buckets = sorted(set(dense) | set(sparse))

    def add(self, bits: np.ndarray, hi: np.ndarray) -> None:
        """bits: (h,) int32 patterns of any entries that include all of the chosen buckets'; hi: their buckets."""
        self.table.add(bits, hi)
        if len(bits) and self.sparse.any():
            self.kept.append(bits[self.sparse[hi]])

    def within(self, buckets: Iterable[int]) -> dict[int, Within]:
        """Level 2 of those of ``buckets`` that are kept here."""
        wanted = [b for b in buckets if b in set(self.buckets)]
        out = {b: w for b, w in self.table.within().items() if b in wanted}
        sparse = [b for b in wanted if self.sparse[b]]
        if sparse:
            kept = np.concatenate(self.kept or [np.zeros(0, np.int32)])
            out.update(within_of(kept[np.isin(kept >> BUCKET_SHIFT, sparse)], sparse))
        return out


def gini_from_histogram(hist: Histogram) -> float:
    """Gini of |d| from level 1, each bucket's entries replaced by their mean. Within a bucket the
    values differ by a factor of at most 1 + 2^-8, which bounds the error by 2^-9 (about 0.002,
    always an underestimate): sum_b D_b / (n S) with D_b <= c_b^2 w_b / 2 <= c_b S_b 2^-9."""
    n, total = hist.n, hist.total1
    if n <= 1 or total <= 0:
        return 0.0
    at = hist.occupied()
    counts, sums = hist.counts[at].astype(np.float64), hist.sum1[at]
    start = np.cumsum(counts) - counts  # entries in lower buckets (ascending ranks before this bucket)
    # sum over the bucket of (2i - n - 1) * mean, ranks i = start+1 .. start+c  ->  S_b (2 start - n + c)
    return float(np.sum(sums * (2 * start - n + counts)) / (n * total))
