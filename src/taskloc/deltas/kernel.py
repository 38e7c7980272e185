"""The CPU sweep's inner loop as one compiled pass (numba), when numba is installed.

Per block of float32 delta bit patterns it does what sweep.py's numpy path does in eight array
operations -- bucket of |d|, low 15 bits, the two integer scatter-adds of the moments, the lookup
of flagged buckets and the gathering of their entries -- in a single loop, so every entry is
touched once while it is in a register. Results are identical integers, so exactness does not
depend on which path ran (tests compare them). ``nogil``: two tensors sweep in parallel threads.
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


def _sweep_block(raw, packed, squares, count_one, lut, use_lut, offset, hit_idx, hit_bits):  # pragma: no cover - compiled
    """raw: (m,) int32 bit patterns of a block's delta; packed/squares: (N_BUCKETS,) int64 moment
    accumulators, or empty to skip the moments; lut: (N_BUCKETS,) bool flagged buckets. Writes
    the flat index (offset + position) and |d| bit pattern of each flagged entry into
    hit_idx/hit_bits and returns how many there are."""
    h = 0
    moments = packed.shape[0] > 0
    for i in range(raw.shape[0]):
        b = raw[i]
        key = (b >> BUCKET_SHIFT) & (N_BUCKETS - 1)
        if moments:
            low = np.int64(b & LOW_MASK)
            packed[key] += low + count_one
            squares[key] += low * low
        if use_lut and lut[key]:
            hit_idx[h] = offset + i
            hit_bits[h] = b & ABS_MASK
            h += 1
    return h


sweep_block = numba.njit(nogil=True, cache=True)(_sweep_block) if AVAILABLE else None
NO_MOMENTS = np.zeros(0, np.int64)
NO_LUT = np.zeros(N_BUCKETS, np.bool_)
