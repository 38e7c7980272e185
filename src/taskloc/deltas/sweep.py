"""One pass over a tensor pair: exact level-1 moments of |delta|, and the entries of flagged buckets.

Per bucket (radix.py) the pass sums, as exact integers, the entry count, the low 15 bits L and
L^2 -- everything ``Histogram.from_moments`` needs for exact sums of |d| and d^2 -- with two
integer scatter-adds per entry: the count rides in the high bits of the L sum (``COUNT_ONE``),
so no third scatter is needed. It also returns the entries of flagged buckets: for the ``lut``
buckets (those whose global level 2 is wanted, and those a top-k selection may take entries
from) their flat index and bit pattern; for the ``own`` buckets (those a tensor's own curve is
predicted to need) only their bit patterns, which is all level 2 needs.

Three implementations, the same integers (tests compare them):
- compiled (kernel.py, when numba is installed): a float32 pair is swept straight from its mapped
  arrays in one call per range of entries; other pairs are widened block by block first;
- numpy steps over blocks of ``BLOCK`` entries, so that the delta and its temporaries stay in
  cache between the elementwise steps, with the scatter-adds in torch (no threads are started:
  on a busy machine each hand-off costs milliseconds);
- torch ops over blocks of ``FLUSH`` entries on an accelerator.
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
COUNT_SHIFT = kernel.COUNT_SHIFT
COUNT_ONE = kernel.COUNT_ONE
# Entries summed into the packed (count << 38) + sum L accumulator before it is unpacked: with at
# most 2^23 entries per bucket, sum L < 2^23 * 2^15 = 2^38 stays below the count field, the
# count field stays below 2^63, and sum L^2 < 2^53
FLUSH = 1 << 23
ROOM = 1 << 20  # flagged entries the compiled sweep buffers before Python copies them out (12 MB)


@dataclass
class SweepResult:
    counts: np.ndarray | None = None  # (N_BUCKETS,) int64 entries per bucket, from moment sweeps
    low_sum: np.ndarray | None = None  # (N_BUCKETS,) int64 sum of L per bucket
    low_sq: np.ndarray | None = None  # (N_BUCKETS,) int64 sum of L^2 per bucket
    base_sq: float | None = None  # sum base^2, when asked for
    idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (h,) entries of lut buckets, ascending
    bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (h,) their |d| bit patterns
    own_bits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (o,) |d| of entries in own but not lut buckets
    # counts, low_sum, low_sq and own_bits of a compiled sweep may be views of the scratch
    # buffers: they hold until the next sweep with the same scratch (the caller's thread)


def sweep(item: Loaded, n: int, lut: np.ndarray | None, moments: bool, scratch: Scratch,
          base_squares: bool = False, own: np.ndarray | None = None) -> SweepResult:
    """Moments (when ``moments``), the entries of buckets flagged in ``lut`` and the bit patterns
    of those flagged in ``own`` only ((N_BUCKETS,) bool each, or None for none) of one tensor
    pair's delta, computed on ``scratch.device``. With ``base_squares``, sum base^2 is taken
    while each block is in cache (float64 total), when the pair allows it (``SweepResult.base_sq``)."""
    out = SweepResult()
    lut = lut if lut is not None and lut.any() else None
    own = own if own is not None and own.any() else None
    if not moments and lut is None and own is None:
        return out
    cpu = scratch.device.type == "cpu" and NUMPY_ON_CPU
    if cpu and COMPILED_ON_CPU and kernel.AVAILABLE:
        return _Compiled(scratch, moments, lut, own).run(item, n, base_squares, out)
    blocks = _Blocks(scratch, n, moments, lut, own)
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


def _codes(lut: np.ndarray | None, own: np.ndarray | None) -> np.ndarray:
    """(N_BUCKETS,) uint8 kernel codes: PLAN for lut buckets, OWN for own buckets."""
    codes = np.zeros(N_BUCKETS, np.uint8)
    if own is not None:
        codes[own] = kernel.OWN
    if lut is not None:
        codes[lut] |= kernel.PLAN
    return codes


class _Compiled:
    """One sweep through kernel.py: a float32 pair in one call per ROOM flagged entries, anything
    else block by block after widening."""

    def __init__(self, scratch: Scratch, moments: bool, lut: np.ndarray | None, own: np.ndarray | None) -> None:
        self.moments = moments
        self.use_lut = lut is not None or own is not None
        self.codes = _codes(lut, own) if self.use_lut else kernel.NO_LUT
        if moments:  # acc: (2 * N_BUCKETS,) packed and squares side by side, one cache line per bucket
            self.acc = scratch.get("acc", 2 * N_BUCKETS, torch.int64).numpy()
            self.acc.fill(0)
            self.totals = scratch.get("totals", 3 * N_BUCKETS, torch.int64).numpy().reshape(3, N_BUCKETS)  # count, sum L, sum L^2
            self.totals.fill(0)  # reused: a fresh 1.5 MB would cost more in page faults than the fill
        else:
            self.acc, self.totals = kernel.NO_ENTRIES, np.zeros((3, 1), np.int64)
        if self.use_lut:
            self.hit_idx = scratch.get("hit_idx", ROOM, torch.int64).numpy()
            self.hit_bits = scratch.get("hit_bits", ROOM, torch.int32).numpy()
            self.own_bits = scratch.get("own_bits", ROOM, torch.int32).numpy()
        else:
            self.hit_idx, self.hit_bits, self.own_bits = kernel.NO_ENTRIES, kernel.NO_BITS, kernel.NO_BITS
        self.scratch = scratch
        self.state = kernel.new_state()
        self.found: list[tuple[np.ndarray, np.ndarray]] = []
        self.owned: list[np.ndarray] = []

    def run(self, item: Loaded, n: int, base_squares: bool, out: SweepResult) -> SweepResult:
        pair = item.float32_pair()
        if pair is not None:
            tuned, base = pair
            chunk = self.scratch.get("chunk", kernel.CHUNK, torch.float32).numpy()
            squares, pos = 0.0, 0
            if self.use_lut and min(len(self.hit_idx), len(self.own_bits)) < kernel.CHUNK:
                raise ValueError(f"sweep.ROOM must hold at least one chunk ({kernel.CHUNK} entries)")
            while pos < n:
                pos, part = kernel.sweep_pair(tuned, base, pos, n, self.moments, FLUSH, base_squares, self.acc, self.totals,
                                              self.state, self.codes, self.use_lut, self.hit_idx, self.hit_bits,
                                              self.own_bits, chunk)
                squares += part
                self._drain(last=pos >= n)
            out.base_sq = squares if base_squares else None
        else:
            out.base_sq = self._blocks(item, n, base_squares)
        if self.moments:
            kernel.finish(self.acc, self.totals, self.state)
            out.counts, out.low_sum, out.low_sq = self.totals
        if self.found:
            out.idx = np.concatenate([f[0] for f in self.found])
            out.bits = np.concatenate([f[1] for f in self.found])
        if self.owned:
            out.own_bits = self.owned[0] if len(self.owned) == 1 else np.concatenate(self.owned)
        return out

    def _blocks(self, item: Loaded, n: int, base_squares: bool) -> float | None:
        size = max(1, min(n, BLOCK, len(self.hit_idx) if self.use_lut else BLOCK))  # a block's flagged entries fit the buffers
        delta = self.scratch.get("block_delta", size, torch.float32)
        squares: float | None = 0.0 if base_squares else None
        for start in range(0, n, size):
            stop = min(n, start + size)
            if self.use_lut and int(self.state[kernel.HITS:].max()) + (stop - start) > ROOM:
                self._drain()
            block = item.delta_into(start, stop, delta[:stop - start])
            kernel.sweep_bits(block.numpy().view(np.int32), start, self.moments, FLUSH, self.acc, self.totals, self.state,
                              self.codes, self.use_lut, self.hit_idx, self.hit_bits, self.own_bits)
            if squares is not None:
                block_sq = item.base_squares(start, stop)
                squares = None if block_sq is None else squares + block_sq
        self._drain(last=True)
        return squares

    def _drain(self, last: bool = False) -> None:
        """Copy the flagged entries out of the reused buffers (the hits go to the main thread;
        the own-stream entries of the last call are used in this thread before the next sweep,
        so they stay where they are)."""
        h, o = int(self.state[kernel.HITS]), int(self.state[kernel.OWNS])
        if h:
            self.found.append((self.hit_idx[:h].copy(), self.hit_bits[:h].copy()))
        if o:
            self.owned.append(self.own_bits[:o] if last else self.own_bits[:o].copy())
        self.state[kernel.HITS] = self.state[kernel.OWNS] = 0


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


class _Blocks:
    """The per-block steps of the numpy and torch sweeps, with their buffers fetched once (a block
    costs ~0.2 ms of numpy work, so per-block Python overhead is worth keeping to a few calls)."""

    def __init__(self, scratch: Scratch, n: int, moments: bool, lut: np.ndarray | None, own: np.ndarray | None) -> None:
        self.cpu = scratch.device.type == "cpu" and NUMPY_ON_CPU
        self.size = BLOCK if self.cpu else FLUSH
        m = self.size = max(1, min(n, self.size))
        self.out = SweepResult()
        self.acc = _Moments(self.out, scratch.device) if moments else None
        own_only = own & ~lut if own is not None and lut is not None else own  # entries of both go to the hits
        self.luts = [x if self.cpu or x is None else torch.from_numpy(x).to(scratch.device) for x in (lut, own_only)]
        self.hits: list[tuple[np.ndarray, np.ndarray]] = []
        self.owned: list[np.ndarray] = []
        self.delta = scratch.get("block_delta", m, torch.float32)
        if self.cpu:  # (m,) buffers: numpy views for the bit operations, torch views for scatter_add_
            self.key32 = scratch.get("block_key32", m, torch.int32).numpy()
            self.key_t = scratch.get("block_key", m, torch.int64)  # int64: scatter_add_ and np.take index with it as is
            self.low = scratch.get("block_low", m, torch.int32).numpy()
            self.packed_t = scratch.get("block_packed", m, torch.int64)
            self.squares_t = scratch.get("block_squares", m, torch.int64)
            self.flag = scratch.get("block_flag", m, torch.bool).numpy()
            self.key, self.packed, self.squares = self.key_t.numpy(), self.packed_t.numpy(), self.squares_t.numpy()

    def step(self, delta: torch.Tensor, start: int) -> None:
        """delta: (m,) float32, entries start..start+m of the tensor."""
        found, owned = self._cpu(delta.numpy()) if self.cpu else self._device(delta)
        if found is not None and len(found[0]):
            self.hits.append((found[0] + start, found[1]))
        if owned is not None and len(owned):
            self.owned.append(owned)

    def finish(self, out: SweepResult) -> SweepResult:
        if self.acc is not None:
            self.acc.flush()
            out.counts, out.low_sum, out.low_sq = self.out.counts, self.out.low_sum, self.out.low_sq
        if self.hits:
            out.idx = np.concatenate([h[0] for h in self.hits])
            out.bits = np.concatenate([h[1] for h in self.hits])
        if self.owned:
            out.own_bits = np.concatenate(self.owned)
        return out

    def _cpu(self, delta: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
        """Returns (positions within the block, bit patterns) of lut entries and the bit patterns
        of own-only entries."""
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
        flag = self.flag if full else self.flag[:m]
        picked = []
        for lut in self.luts:
            if lut is None:
                picked.append(None)
                continue
            np.take(lut, key, out=flag, mode="clip")
            at = np.flatnonzero(flag)
            picked.append((at, raw[at] & ABS_MASK))
        found, owned = picked
        return found, (owned[1] if owned is not None else None)

    def _device(self, delta: torch.Tensor) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
        """The same steps as torch ops (CUDA)."""
        raw = delta.view(torch.int32)
        key = torch.bitwise_right_shift(raw, BUCKET_SHIFT).bitwise_and_(N_BUCKETS - 1).long()
        if self.acc is not None:
            low = torch.bitwise_and(raw, LOW_MASK).long()
            self.acc.add(key, low + COUNT_ONE, low * low)
        picked = []
        for lut in self.luts:
            if lut is None:
                picked.append(None)
                continue
            at = torch.nonzero(lut[key]).view(-1)
            picked.append((at.cpu().numpy(), torch.bitwise_and(raw[at], ABS_MASK).cpu().numpy()))
        found, owned = picked
        return found, (owned[1] if owned is not None else None)
