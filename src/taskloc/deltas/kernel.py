"""The CPU sweep's inner loop, compiled (numba), when numba is installed.

One call sweeps a whole range of a float32 tensor pair straight from its (mapped) arrays: chunk by
chunk it subtracts base from tuned into an L1-sized buffer, sums base^2 (float64), and for every
entry takes the bucket of |d| and its low 15 bits, adds them to the exact moments (two integer
scatter-adds into one cache line) and routes the entries of flagged buckets -- to the hits (flat
index and bit pattern: the plan's buckets) or to the own stream (bit pattern only: the buckets a
tensor's own curve is predicted to need). Every entry is read from memory once and touched once
while it is in a register; Python runs once per range, not once per block, so threads sweeping
two tensors do not queue for the GIL. Results are the same integers as sweep.py's numpy steps
(tests compare them). Exact zeros (untouched entries) are counted in a register: they all fall in
bucket 0 and would otherwise chain every scatter-add through the same counter.
"""
from __future__ import annotations

import os

import numpy as np

from .radix import ABS_MASK, BUCKET_SHIFT, LOW_MASK, N_BUCKETS

try:  # optional: the numpy path is the reference and the fallback
    if os.environ.get("TASKLOC_NO_NUMBA"):
        raise ImportError("disabled by TASKLOC_NO_NUMBA")
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

AVAILABLE = numba is not None

CHUNK = 2048  # entries per inner step: the delta chunk (8 KB) stays in L1 between the two loops
PLAN = 1  # lut code: the entry goes to the hits (index and bits)
OWN = 2  # lut code: the entry goes to the own stream (bits), unless PLAN also holds
COUNT_SHIFT = 38
COUNT_ONE = 1 << COUNT_SHIFT
# state slots shared between calls on one sweep: entries since the last flush, exact zeros not yet
# flushed, hits written, own-stream entries written
PENDING, ZEROS, HITS, OWNS = range(4)


def new_state() -> np.ndarray:
    return np.zeros(4, np.int64)


def _flush(acc, totals, state):  # pragma: no cover - compiled
    """Unpack acc ((2 * N_BUCKETS,) int64: packed, squares per bucket) into totals ((3, N_BUCKETS)
    int64: count, sum L, sum L^2) and zero it."""
    for key in range(N_BUCKETS):
        packed = acc[2 * key]
        if packed:
            totals[0, key] += packed >> COUNT_SHIFT
            totals[1, key] += packed & (COUNT_ONE - 1)
            totals[2, key] += acc[2 * key + 1]
            acc[2 * key] = 0
            acc[2 * key + 1] = 0
    totals[0, 0] += state[ZEROS]
    state[ZEROS] = 0
    state[PENDING] = 0


def _entries(raw, offset, moments, flush_every, acc, totals, state, lut, use_lut, hit_idx, hit_bits, own_bits):  # pragma: no cover
    """raw: (m,) int32 bit patterns of delta entries offset..offset+m (m <= CHUNK); the buffers
    have room for m more entries (the callers check). The packed accumulators are unpacked
    before they hold more than flush_every entries (sweep.FLUSH)."""
    m = raw.shape[0]
    if moments and state[PENDING] + m > flush_every:
        _flush(acc, totals, state)
    zeros = 0
    h = state[HITS]
    o = state[OWNS]
    for i in range(m):
        a = raw[i] & ABS_MASK
        key = a >> BUCKET_SHIFT
        if moments:
            if a == 0:
                zeros += 1
            else:
                low = np.int64(a & LOW_MASK)
                acc[2 * key] += low + COUNT_ONE
                acc[2 * key + 1] += low * low
        if use_lut:
            code = lut[key]
            if code & PLAN:
                hit_idx[h] = offset + i
                hit_bits[h] = a
                h += 1
            elif code & OWN:
                own_bits[o] = a
                o += 1
    state[HITS] = h
    state[OWNS] = o
    state[ZEROS] += zeros
    state[PENDING] += m


def _sweep_pair(tuned, base, start, stop, moments, flush_every, want_squares, acc, totals, state, lut, use_lut, hit_idx, hit_bits,
                own_bits, chunk):  # pragma: no cover - compiled
    """Sweep entries start..stop of the float32 pair (tuned, base: (n,) float32) until done or the
    hit/own buffers could overflow in the next chunk. chunk: (CHUNK,) float32 scratch. Returns
    (where it stopped, sum of base^2 over the entries swept)."""
    squares = 0.0
    room = min(hit_idx.shape[0], own_bits.shape[0])  # both ROOM (>= CHUNK) when use_lut
    pos = start
    while pos < stop:
        m = min(CHUNK, stop - pos)
        if use_lut and max(state[HITS], state[OWNS]) + m > room:
            break
        t, b = tuned[pos:pos + m], base[pos:pos + m]  # slices: indices from 0 up, so the loops vectorize
        if want_squares:
            for j in range(m):
                chunk[j] = t[j] - b[j]
                x = np.float64(b[j])
                squares += x * x
        else:
            for j in range(m):
                chunk[j] = t[j] - b[j]
        _entries(chunk[:m].view(np.int32), pos, moments, flush_every, acc, totals, state, lut, use_lut, hit_idx, hit_bits, own_bits)
        pos += m
    return pos, squares


def _sweep_bits(raw, offset, moments, flush_every, acc, totals, state, lut, use_lut, hit_idx, hit_bits, own_bits):  # pragma: no cover
    """Sweep a block of delta bit patterns (raw: (m,) int32, entries offset..offset+m) computed
    elsewhere (bf16/fp16 pairs, deltas given in memory); the buffers must have room for m more."""
    for pos in range(0, raw.shape[0], CHUNK):
        stop = min(raw.shape[0], pos + CHUNK)
        _entries(raw[pos:stop], offset + pos, moments, flush_every, acc, totals, state, lut, use_lut, hit_idx, hit_bits, own_bits)


def _finish(acc, totals, state):  # pragma: no cover - compiled
    _flush(acc, totals, state)


def _count_low_bits(bits, slot, counts):  # pragma: no cover - compiled
    """Level-2 counting (radix.Level2Counts.add): counts[slot[b] << 15 | low] += 1 for each bit
    pattern whose bucket has a slot (slot: (N_BUCKETS,) int64, -1 for none)."""
    for i in range(bits.shape[0]):
        b = bits[i]
        s = slot[b >> BUCKET_SHIFT]
        if s >= 0:
            counts[(s << BUCKET_SHIFT) | (b & LOW_MASK)] += 1


if AVAILABLE:
    _jit = numba.njit(nogil=True, cache=True)
    _flush = _jit(_flush)
    _entries = _jit(_entries)
    # reassoc: the float64 sum of base^2 may be split across vector lanes (the only float reduction)
    sweep_pair = numba.njit(nogil=True, cache=True, fastmath={"reassoc"})(_sweep_pair)
    sweep_bits = _jit(_sweep_bits)
    finish = _jit(_finish)
    count_low_bits = _jit(_count_low_bits)
else:  # pragma: no cover
    sweep_pair = sweep_bits = finish = count_low_bits = None
NO_ENTRIES = np.zeros(0, np.int64)
NO_BITS = np.zeros(0, np.int32)
NO_LUT = np.zeros(N_BUCKETS, np.uint8)
