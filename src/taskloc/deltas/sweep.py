"""One pass over a tensor pair: exact level-1 moments of |delta|, and the entries of flagged buckets.

Per bucket (radix.py) the pass sums, as exact integers, the entry count, the low 15 bits L and
L^2 -- everything ``Histogram.from_moments`` needs for exact sums of |d| and d^2 -- with two
integer scatter-adds per entry: the count rides in the high bits of the L sum (``COUNT_ONE``),
so no third scatter is needed. It also returns the flat index and bit pattern of every entry
whose bucket is flagged in a lookup table: the buckets whose exact values (level 2) are wanted,
and the buckets a top-k selection may take entries from.

On CPU the pass runs over blocks of ``BLOCK`` entries, so that the delta and its temporaries stay
in cache between the elementwise steps; the bit operations run in numpy and the scatter-adds in
torch (both release the GIL; neither starts threads, which only cost hand-offs on a busy
machine). On an accelerator the same steps run as torch ops over blocks of ``FLUSH`` entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import kernel
from .radix import ABS_MASK, BUCKET_SHIFT, LOW_MASK, N_BUCKETS
from .scratch import Scratch
from .sources import Loaded

BLOCK = 1 << 17  # CPU block: ~3 MB of temporaries per block, within L2 + a slice of L3
NUMPY_ON_CPU = True  # False runs the torch (accelerator) kernel on CPU too: tests compare the two
COMPILED_ON_CPU = True  # False keeps the numpy steps even where the compiled loop (kernel.py) is available
COUNT_SHIFT = 38
COUNT_ONE = 1 << COUNT_SHIFT
# Entries summed into the packed (count << 38) + sum L accumulator before it is unpacked: with at
# most 2^23 entries per bucket, sum L < 2^23 * 2^15 = 2^38 stays below the count field, the
# count field stays below 2^63, and sum L^2 < 2^53
FLUSH = 1 << 23


@dataclass
class SweepResult:
    counts: np.ndarray | None = None  # (N_BUCKETS,) int64 entries per bucket, from moment sweeps
    low_sum: np.ndarray | None = None  # (N_BUCKETS,) int64 sum of L per bucket
    low_sq: np.ndarray | None = None  # (N_BUCKETS,) int64 sum of L^2 per bucket
    base_sq: float | None = None  # sum base^2, when asked for
    idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (h,) flagged entries, ascending
    bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (h,) their |d| bit patterns


class _Moments:
    """Scatter-add accumulators on ``device``, unpacked into a SweepResult every FLUSH entries.
    On CPU they are numpy arrays seen by torch: torch's own fills split across threads, and on a
    busy machine each hand-off can cost milliseconds."""

    def __init__(self, out: SweepResult, device: torch.device) -> None:
        self.out = out
        out.counts, out.low_sum, out.low_sq = (np.zeros(N_BUCKETS, np.int64) for _ in range(3))
        if device.type == "cpu":
            self.packed = torch.from_numpy(np.zeros(N_BUCKETS, dtype=np.int64))  # (count << 38) + sum L
            self.squares = torch.from_numpy(np.zeros(N_BUCKETS, dtype=np.int64))  # sum L^2
        else:
            self.packed = torch.zeros(N_BUCKETS, dtype=torch.int64, device=device)
            self.squares = torch.zeros(N_BUCKETS, dtype=torch.int64, device=device)
        self.pending = 0

    def add(self, key: torch.Tensor, packed: torch.Tensor, squares: torch.Tensor) -> None:
        """key: (m,) int64 buckets; packed: (m,) L + COUNT_ONE; squares: (m,) L^2."""
        if self.pending + key.numel() > FLUSH:
            self.flush()
        self.packed.scatter_add_(0, key, packed)
        self.squares.scatter_add_(0, key, squares)
        self.pending += key.numel()

    def reserve(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Room for m more entries (flushing first if needed): the CPU accumulators as numpy arrays."""
        if self.pending + m > FLUSH:
            self.flush()
        self.pending += m
        return self.packed.numpy(), self.squares.numpy()

    def flush(self) -> None:
        if not self.pending:
            return
        packed, squares = self.packed.cpu().numpy(), self.squares.cpu().numpy()
        self.out.counts += packed >> COUNT_SHIFT
        self.out.low_sum += packed & (COUNT_ONE - 1)
        self.out.low_sq += squares
        if self.packed.device.type == "cpu":
            packed.fill(0)
            squares.fill(0)
        else:
            self.packed.zero_()
            self.squares.zero_()
        self.pending = 0


def sweep(item: Loaded, n: int, lut: np.ndarray | None, moments: bool, scratch: Scratch,
          base_squares: bool = False) -> SweepResult:
    """Moments (when ``moments``) and the entries of buckets flagged in ``lut`` ((N_BUCKETS,)
    bool, or None for none) of one tensor pair's delta, computed on ``scratch.device``. With
    ``base_squares``, sum base^2 is taken block by block while each block is in cache (float32
    products, float64 total), when the pair allows it (``SweepResult.base_sq``)."""
    out = SweepResult()
    if lut is not None and not lut.any():
        lut = None
    if not moments and lut is None:
        return out
    blocks = _Blocks(scratch, n, moments, lut)
    squares: float | None = 0.0 if base_squares else None
    for start in range(0, n, blocks.size):
        stop = min(n, start + blocks.size)
        buf = blocks.delta if stop - start == blocks.size else blocks.delta[:stop - start]
        blocks.step(item.delta_into(start, stop, buf), start)
        if squares is not None:
            block_sq = item.base_squares(start, stop)
            squares = None if block_sq is None else squares + block_sq
    out.base_sq = squares
    return blocks.finish(out)


class _Blocks:
    """The per-block steps of one sweep, with their buffers fetched once (a block costs ~0.2 ms
    of numpy work, so per-block Python overhead is worth keeping to a few calls)."""

    def __init__(self, scratch: Scratch, n: int, moments: bool, lut: np.ndarray | None) -> None:
        self.cpu = scratch.device.type == "cpu" and NUMPY_ON_CPU
        self.size = BLOCK if self.cpu else FLUSH
        m = self.size = max(1, min(n, self.size))
        self.out = SweepResult()
        self.acc = _Moments(self.out, scratch.device) if moments else None
        self.lut = lut if self.cpu or lut is None else torch.from_numpy(lut).to(scratch.device)
        self.hits: list[tuple[np.ndarray, np.ndarray]] = []
        self.delta = scratch.get("block_delta", m, torch.float32)
        self.compiled = self.cpu and COMPILED_ON_CPU and kernel.AVAILABLE
        if self.compiled:  # (m,) where the compiled loop writes the flagged entries
            self.hit_idx = scratch.get("block_hit_idx", m, torch.int64).numpy()
            self.hit_bits = scratch.get("block_hit_bits", m, torch.int32).numpy()
        elif self.cpu:  # (m,) buffers: numpy views for the bit operations, torch views for scatter_add_
            self.key32 = scratch.get("block_key32", m, torch.int32).numpy()
            self.key_t = scratch.get("block_key", m, torch.int64)  # int64: scatter_add_ and np.take index with it as is
            self.low = scratch.get("block_low", m, torch.int32).numpy()
            self.packed_t = scratch.get("block_packed", m, torch.int64)
            self.squares_t = scratch.get("block_squares", m, torch.int64)
            self.flag = scratch.get("block_flag", m, torch.bool).numpy()
            self.key, self.packed, self.squares = self.key_t.numpy(), self.packed_t.numpy(), self.squares_t.numpy()

    def step(self, delta: torch.Tensor, start: int) -> None:
        """delta: (m,) float32, entries start..start+m of the tensor."""
        found = self._cpu(delta.numpy()) if self.cpu else self._device(delta)
        if found is not None and len(found[0]):
            self.hits.append((found[0] + start, found[1]))

    def finish(self, out: SweepResult) -> SweepResult:
        if self.acc is not None:
            self.acc.flush()
            out.counts, out.low_sum, out.low_sq = self.out.counts, self.out.low_sum, self.out.low_sq
        if self.hits:
            out.idx = np.concatenate([h[0] for h in self.hits])
            out.bits = np.concatenate([h[1] for h in self.hits])
        return out

    def _compiled(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The same as ``_cpu`` in one compiled loop (kernel.py)."""
        m = len(delta)
        packed, squares = self.acc.reserve(m) if self.acc is not None else (kernel.NO_MOMENTS, kernel.NO_MOMENTS)
        use_lut = self.lut is not None
        h = kernel.sweep_block(delta.view(np.int32), packed, squares, COUNT_ONE, self.lut if use_lut else kernel.NO_LUT,
                               use_lut, 0, self.hit_idx, self.hit_bits)
        # positions are not copied: step() offsets them into a new array before the next block
        return (self.hit_idx[:h], self.hit_bits[:h].copy()) if use_lut else None

    def _cpu(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Returns (positions within the block, bit patterns) of flagged entries."""
        if self.compiled:
            return self._compiled(delta)
        m = len(delta)
        full = m == self.size
        raw = delta.view(np.int32)  # (m,) sign, exponent, mantissa
        key32, key = (self.key32, self.key) if full else (self.key32[:m], self.key[:m])
        np.right_shift(raw, BUCKET_SHIFT, out=key32)
        np.bitwise_and(key32, N_BUCKETS - 1, out=key32)  # drops the sign bit: the bucket of |d|
        np.copyto(key, key32)
        if self.acc is not None:
            low, packed, squares = (self.low, self.packed, self.squares) if full else (self.low[:m], self.packed[:m], self.squares[:m])
            np.bitwise_and(raw, LOW_MASK, out=low)
            np.copyto(packed, low)
            np.multiply(packed, packed, out=squares)
            np.bitwise_or(packed, COUNT_ONE, out=packed)
            if full:
                self.acc.add(self.key_t, self.packed_t, self.squares_t)
            else:
                self.acc.add(self.key_t[:m], self.packed_t[:m], self.squares_t[:m])
        if self.lut is None:
            return None
        flag = self.flag if full else self.flag[:m]
        np.take(self.lut, key, out=flag, mode="clip")
        at = np.flatnonzero(flag)
        return at, raw[at] & ABS_MASK

    def _device(self, delta: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """The same steps as torch ops (CUDA)."""
        raw = delta.view(torch.int32)
        key = torch.bitwise_right_shift(raw, BUCKET_SHIFT).bitwise_and_(N_BUCKETS - 1).long()
        if self.acc is not None:
            low = torch.bitwise_and(raw, LOW_MASK).long()
            self.acc.add(key, low + COUNT_ONE, low * low)
        if self.lut is None:
            return None
        at = torch.nonzero(self.lut[key]).view(-1)
        return at.cpu().numpy(), torch.bitwise_and(raw[at], ABS_MASK).cpu().numpy()
