"""Streaming delta analysis: one tensor pair in memory at a time, exact global figures.

A sampling pre-pass (predict.py) reads a small fraction of every tensor to guess where the global
ranks, and each large tensor's own ranks, will fall. Pass 1 then sweeps each tensor once while it
is mapped (sweep.py): its exact level-1 histogram (radix.py: counts and exact sums of |d| and d^2
per bucket; Gini, Hoyer and relative norm follow, effective rank comes from the delta of small
matrices) and, in the same sweep, the entries of a few flagged buckets -- those its own exact
curve and maximum are predicted to need, those the global curve and threshold are predicted to
need, and every entry that may be in the global top k, which goes to the selection sink as a
candidate. A tensor whose own buckets were not all predicted (small tensors are not) gets a
second, lookup-only sweep while still mapped. The per-tensor histograms add up to the global one, which places the global ranks
exactly; when the predictions held (the usual case) everything is known after pass 1. Otherwise
pass 2 streams again over the tensors with entries in the missing buckets (or selects, when the
candidates would not fit in memory), and when the threshold's bucket is too big to hold its
candidates (massive ties, e.g. many exact zeros) a third pass selects with the exact threshold.
Memory stays O(largest tensor + candidates).
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TypeVar, Union

import numpy as np
import torch

from ..device import pick_device
from ..metrics import effective_rank
from ..progress import progress_bar
from .names import kind_of, layer_of
from .null import GINI_HALF_NORMAL, gaussian_null_curve, gaussian_null_gini, gaussian_null_hoyer
from .predict import SAMPLE_ENTRIES, Estimate, Sampler
from .profile import profile_groups, rel_norm
from .radix import (
    BUCKET_SHIFT,
    LOW_MASK,
    N_BUCKETS,
    Histogram,
    Level2Counts,
    Level2Store,
    RankIndex,
    Within,
    bits_to_values,
    boundary_buckets,
    gini_from_histogram,
    ranks_for,
    within_of,
)
from .scratch import Scratch
from .selection import SelectionSink, TopK
from .sources import DeltaSource, Loaded
from .sweep import SweepResult, sweep

GRID_PERCENT = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
GRID = tuple(p / 100 for p in GRID_PERCENT)
SELECTION_RULE = (
    "exact global top-k of |tuned - base| over all floating-point tensors; entries above the "
    "threshold all taken, ties at the threshold taken in (tensor order, flat index) order"
)


@dataclass
class TensorStats:
    name: str
    shape: tuple[int, ...]
    dtype: str
    layer: int | None
    kind: str
    n: int
    n_changed: int
    l1: float  # sum |delta|
    energy: float  # sum delta^2
    base_energy: float | None  # sum base^2
    max_abs: float
    rel_norm: float | None  # ||delta|| / ||base||
    gini: float
    hoyer: float
    effective_rank: float | None  # 2-D tensors under the size limit
    lora_rank: int | None
    curve_l1: list[float]
    curve_energy: list[float]
    selected: int | None = None  # entries in the global top-k


@dataclass
class GlobalStats:
    n: int
    n_changed: int
    l1: float
    energy: float
    base_energy: float | None
    rel_norm: float | None
    gini: float
    hoyer: float
    curve_l1: list[float]
    curve_energy: list[float]
    null_l1: list[float]
    null_energy: list[float]
    null_gini: float
    null_hoyer: float


@dataclass
class Selection:
    request: str
    description: str
    k: int
    threshold: float | None  # |delta| of the k-th largest entry
    ties_at_threshold: int  # entries equal to the threshold
    ties_taken: int
    rule: str = SELECTION_RULE


@dataclass
class DeltaReport:
    base: dict
    tuned: dict
    grid: list[float]
    tensors: list[TensorStats]
    total: GlobalStats
    null_tensor: dict  # the per-tensor null curve (scale-free, so one for all tensors)
    selection: Selection | None
    profile: dict[str, list[dict]]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["format"] = "taskloc-delta-report/1"
        out["grid_percent"] = [100 * g for g in self.grid]
        return out


T = TypeVar("T")
WORKERS = 2  # tensors swept at once on CPU (more cores than this rarely help: the sweeps are memory-bound)
MAX_DENSE_BUCKETS = 256  # level-2 count tables collected in pass 1 (256 KB each)
TABLE_ENTRIES = (1 << BUCKET_SHIFT) * 8 // 4  # a bucket with more entries than this is kept as a table


class _Candidates:
    """Entries that may hold the k-th largest, gathered in pass 1: those in buckets [start, stop]
    (predicted around rank k), or when selecting every entry from ``start`` up, which also goes
    to the sink as a candidate. Their bit patterns are kept per tensor to split the ties at the
    threshold. All is dropped (and left to pass 2) if they outgrow ``cap`` entries."""

    def __init__(self, sink: SelectionSink | None, start: int, stop: int, cap: int) -> None:
        self.sink, self.start, self.stop, self.cap = sink, start, stop, cap
        self.bits: dict[str, np.ndarray] = {}  # name -> bit patterns of its candidates
        self.total = 0
        self.active = True

    def covers(self, bucket: int | None) -> bool:
        return self.active and bucket is not None and self.start <= bucket <= self.stop

    def offer(self, name: str, found: SweepResult, hi: np.ndarray, item: Loaded) -> None:
        """found: one tensor's flagged entries; hi: their buckets."""
        if not self.active:
            return
        keep = (hi >= self.start) & (hi <= self.stop)
        count = int(np.count_nonzero(keep))
        self.total += count
        if self.total > self.cap:
            self.abandon()
            return
        if count:
            # with a sink every flagged entry from the start bucket up is a candidate: often all of them
            idx, bits = (found.idx, found.bits) if count == len(hi) else (found.idx[keep], found.bits[keep])
            self.bits[name] = bits
            if self.sink is not None:
                self.sink.candidates(name, torch.from_numpy(idx), bits, item)

    def abandon(self) -> None:
        if self.active:
            if self.sink is not None:
                self.sink.discard()
            self.bits.clear()
            self.active = False

    def lows_in(self, bucket: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (distinct low bits, counts) of its candidates in ``bucket``."""
        return {name: _low_counts(bits[(bits >> BUCKET_SHIFT) == bucket]) for name, bits in self.bits.items()}

    def within(self, buckets: list[int]) -> dict[int, Within]:
        """Global level 2 of covered buckets."""
        if not buckets:
            return {}
        return within_of(np.concatenate(list(self.bits.values()) or [np.zeros(0, np.int32)]), buckets)


@dataclass
class _Swept:
    """One tensor's pass-1 results, before they are merged into the global state."""

    stats: TensorStats
    item: Loaded  # kept alive until merged: candidates take their tuned values from it
    hist: Histogram
    hits: SweepResult  # entries of the flagged buckets
    hi: np.ndarray  # (h,) their buckets
    rank_skipped: bool


@dataclass
class _Plan:
    """What pass 1 collects besides the histograms, from the sampled estimate."""

    level2: Level2Store  # global level 2 of the buckets predicted to hold the curve's ranks and k
    candidates: _Candidates | None  # None: the selection happens in pass 2
    flags: np.ndarray  # (N_BUCKETS,) bool: buckets whose entries every tensor's sweep returns


class _Stream:
    """State of one analysis across its passes."""

    def __init__(self, source: DeltaSource, grid: Sequence[float], device: torch.device, rank_max_dim: int,
                 sample_entries: int) -> None:
        self.source, self.grid, self.device, self.rank_max_dim = source, list(grid), device, rank_max_dim
        self.sample_entries = sample_entries
        self.hist = Histogram()
        self.stats: list[TensorStats] = []
        self.buckets: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> compressed level-1 counts
        self.rank_skipped = 0
        self.largest = max((source.numel(n) for n in source.names), default=0)
        self.own_windows: dict[str, list[tuple[int, int]]] = {}  # name -> buckets its own figures may need (predicted)
        self.scratch = Scratch(device)  # block buffers of the sweeps run on the main thread
        self._local = threading.local()  # ... and of those run in worker threads

    def items(self, names: list[str]) -> Iterator[tuple[str, Loaded]]:
        """(name, loaded) in order, hinting the next tensor's read ahead (a cold file is read by
        the system meanwhile; a warm one is mapped, not copied)."""
        for i, name in enumerate(names):
            if i + 1 < len(names):
                self.source.prefetch(names[i + 1])
            yield name, self.source.load(name)

    def in_order(self, fn: Callable[[str], T], names: list[str]) -> Iterator[T]:
        """fn(name) for each name, yielded in order; on CPU up to WORKERS run at once in threads
        (the sweeps spend their time in numpy/torch/BLAS calls that release the GIL). Callers
        merge the results into shared state themselves, in order, so the outcome does not
        depend on the timing."""
        workers = _sweep_threads(WORKERS) if self.device.type == "cpu" else 1
        if workers <= 1:
            for i, name in enumerate(names):
                if i + 1 < len(names):
                    self.source.prefetch(names[i + 1])
                yield fn(name)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            for i, name in enumerate(names):
                pending.append(pool.submit(fn, name))
                if i + 1 < len(names):
                    self.source.prefetch(names[i + 1])
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def thread_scratch(self) -> Scratch:
        """The calling thread's block buffers."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = Scratch(self.device)
        return scratch

    # --- pre-pass ---------------------------------------------------------------------------------
    def predict(self) -> Estimate | None:
        """Sample every tensor: the estimate of the global histogram (None when sampling is off)."""
        if self.sample_entries <= 0:
            return None
        sampler = Sampler(self.sample_entries)

        def sample(name: str) -> tuple[str, np.ndarray, list[tuple[int, int]]]:
            n = self.source.numel(name)
            bits = sampler.sample(self.source.load(name), n)
            return name, bits, sampler.own_windows(n, bits, ranks_for(n, self.grid) + [1])  # [1]: its maximum

        for name, bits, windows in self.in_order(sample, self.source.names):
            sampler.add(self.source.numel(name), bits)
            if windows:
                self.own_windows[name] = windows
        return sampler.estimate()

    # --- pass 1 ----------------------------------------------------------------------------------
    def pass1(self, plan: _Plan) -> None:
        with progress_bar("delta pass 1", total=len(self.source.names)) as advance:
            for swept in self.in_order(lambda name: self._sweep_tensor(name, plan), self.source.names):
                self._merge(swept, plan)
                del swept  # unmaps the tensor pair before the next one is swept
                advance()

    def _sweep_tensor(self, name: str, plan: _Plan) -> _Swept:
        """One tensor's figures (run in a worker thread; touches no shared state). One sweep takes
        the moments (exact histogram) and the entries of the buckets the plan collects for the
        global figures, plus the bit patterns of those its own curve and maximum are predicted to
        need (from its own sample, for large tensors). Which buckets those are is known exactly
        only after the sweep; when some were missed (a small tensor, or an unusual sample), a
        second, lookup-only sweep fetches them. (Recomputing the delta in cache for that sweep
        moves less memory than keeping it: the inputs are read again, but nothing tensor-sized
        is written.)"""
        item, scratch = self.source.load(name), self.thread_scratch()
        shape, n = self.source.shapes[name], self.source.numel(name)
        if item.zero:  # untouched: all entries are exact zeros
            moments, hist = SweepResult(), Histogram.of_zeros(n)
            hits = sweep(item, n, plan.flags, False, scratch) if plan.flags[0] else SweepResult()
        else:
            # the moments, the entries of the plan's buckets and of its own predicted ones in one sweep
            own_flags = _flags_of_windows(self.own_windows.get(name, []))
            moments = sweep(item, n, plan.flags, True, scratch, base_squares=item.base is not None, own=own_flags)
            hist = Histogram.from_moments(moments.counts, moments.low_sum, moments.low_sq)
            hits = moments
        if hist.has_nonfinite():
            self.source.raise_nonfinite(name, item)
        hi = hits.bits >> BUCKET_SHIFT  # (h,) buckets of the returned entries
        rank_skipped = False
        if item.zero:
            curve, n_changed, max_abs, erank = (list(self.grid), list(self.grid)), 0, 0.0, None
        else:
            needed = self._own_buckets(n, hist, moments)
            level2 = Level2Counts(needed, most=n, buffer=scratch.get("level2", len(needed) << BUCKET_SHIFT, torch.int32).numpy())
            level2.add(hits.bits, hi)
            level2.add(moments.own_bits)  # entries of own buckets outside the plan's
            extra = [b for b in needed if not plan.flags[b] and not own_flags[b]]
            if extra:  # its own curve needs buckets outside the plan's: a second, lookup-only sweep
                level2.add(sweep(item, n, _flags_of(extra), False, scratch).bits)
            within = level2.within()
            curve = RankIndex(hist, within).shares(self.grid)
            n_changed = n - _zeros(hist, moments, within)
            max_abs = float(within[hist.top_bucket()].values[0]) if n else 0.0
            erank, rank_skipped = self._effective_rank(item, shape)
        base_energy = moments.base_sq
        if base_energy is None and item.base is not None:
            base_energy = _squared_norm(item.base)
        l1, energy = hist.total1, hist.total2
        stats = TensorStats(
            name=name, shape=tuple(shape), dtype=str(self.source.dtypes[name]).replace("torch.", ""),
            layer=layer_of(name), kind=kind_of(name), n=n, n_changed=n_changed, l1=l1, energy=energy,
            base_energy=base_energy, max_abs=max_abs, rel_norm=rel_norm(energy, base_energy),
            gini=gini_from_histogram(hist), hoyer=_hoyer(l1, energy, n),
            effective_rank=erank, lora_rank=self.source.lora_rank(name), curve_l1=curve[0], curve_energy=curve[1],
        )
        return _Swept(stats, item, hist, hits, hi, rank_skipped)

    def _merge(self, swept: _Swept, plan: _Plan) -> None:
        """Fold one tensor into the shared state (main thread, tensor order)."""
        name = swept.stats.name
        plan.level2.add(swept.hits.bits, swept.hi)
        if plan.candidates is not None:
            plan.candidates.offer(name, swept.hits, swept.hi, swept.item)
        self.hist.add(swept.hist)
        self.buckets[name] = swept.hist.compressed()
        self.rank_skipped += swept.rank_skipped
        self.stats.append(swept.stats)

    def _own_buckets(self, n: int, hist: Histogram, moments: SweepResult) -> list[int]:
        """Buckets whose level 2 a tensor's own figures need: its curve's ranks, its maximum, and
        bucket 0 when that holds denormals besides zeros (to count the zeros)."""
        needed = set(boundary_buckets(hist, ranks_for(n, self.grid))) | {hist.top_bucket()}
        if hist.counts[0] and moments.low_sum[0]:
            needed.add(0)
        return sorted(needed)

    def _effective_rank(self, item: Loaded, shape: tuple[int, ...]) -> tuple[float | None, bool]:
        """(effective rank or None, whether it was skipped for size)."""
        if len(shape) != 2:
            return None, False
        if min(shape) > self.rank_max_dim:
            return None, True
        return effective_rank(item.delta.to(self.device).view(shape)), False  # type: ignore[union-attr]

    # --- pass 2 (and 3) ----------------------------------------------------------------------------
    def visit(self, name: str, buckets: set[int], above: int | None) -> bool:
        """Does tensor ``name`` have entries in ``buckets`` or in buckets at or above ``above``?"""
        present, _ = self.buckets[name]
        if above is not None and len(present) and int(present[-1]) >= above:
            return True
        return bool(np.isin(present, list(buckets)).any())

    def count_above(self, name: str, bucket: int) -> int:
        present, counts = self.buckets[name]
        return int(counts[present > bucket].sum())


def analyse(
    source: DeltaSource,
    *,
    top: TopK | None = None,
    sink: SelectionSink | None = None,
    grid: Sequence[float] = GRID,
    device: Union[str, torch.device] = "cpu",
    rank_max_dim: int | None = None,
    candidate_cap: int | None = None,
    sample_entries: int = SAMPLE_ENTRIES,
) -> DeltaReport:
    """Analyse every floating-point tensor of ``source``; select the global ``top`` entries and
    hand them to ``sink`` (a patch writer or a mask builder) when given.

    rank_max_dim:   effective rank is computed for 2-D deltas up to this size on their short side
                    (default 1024 on CPU, 8192 on CUDA), skipped with a note above it.
    candidate_cap:  most selection candidates held in memory (default: the largest tensor's entry
                    count, keeping memory O(largest tensor)); beyond it the selection takes a
                    second pass, or a third when the threshold's bucket alone exceeds it.
    sample_entries: entries sampled per tensor to predict which buckets the passes need; 0 turns
                    the prediction off (every global bucket is then fetched by pass 2). Results
                    never depend on it.
    """
    dev = pick_device(device) if isinstance(device, str) else device
    if rank_max_dim is None:
        rank_max_dim = 8192 if dev.type == "cuda" else 1024
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    st = _Stream(source, grid, dev, rank_max_dim, sample_entries)
    estimate = st.predict()
    n_total = sum(source.numel(n) for n in source.names)
    k = top.entries(n_total) if top is not None else None
    select_all = k is not None and k == n_total and k > 0
    partial = k is not None and 0 < k < n_total
    cap = candidate_cap if candidate_cap is not None else max(st.largest, 1 << 20)
    plan = _plan(estimate, n_total, st.grid, k if partial else None, sink, cap)
    timings["sample_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    st.pass1(plan)
    timings["pass1_s"] = time.perf_counter() - t1

    hist = st.hist
    b_star, _ = hist.locate(k) if partial else (None, 0)
    curve_buckets = boundary_buckets(hist, ranks_for(n_total, grid)) if n_total else []
    cands = plan.candidates
    early = cands is not None and cands.covers(b_star)  # pass 1 holds every entry the threshold needs
    if cands is not None and not early:
        cands.abandon()  # the threshold fell outside the predicted range
    needed = set(curve_buckets) | ({b_star} if b_star is not None else set())
    within = plan.level2.within(needed)
    if early:  # the candidates hold every entry of the buckets they cover
        within.update(cands.within([b for b in sorted(needed - set(within)) if cands.covers(b)]))  # type: ignore[union-attr]
    missing = sorted(needed - set(within))
    # name -> (distinct low bits, counts) of its entries in the threshold's bucket: enough to place
    # the threshold and split its ties, and bounded by 2^15 pairs per tensor however many there are
    lows_at_bstar = cands.lows_in(b_star) if early else {}  # type: ignore[union-attr,arg-type]
    late = partial and not early  # pass 2 streams the threshold's bucket (and selects, with a sink)
    two_pass = sink is not None and late and int(hist.counts[b_star]) <= cap
    if missing or late or (select_all and sink is not None):
        t2 = time.perf_counter()
        within.update(_pass2(st, sink, missing, b_star if late else None, select_all, two_pass, lows_at_bstar))
        timings["pass2_s"] = time.perf_counter() - t2

    index = RankIndex(hist, within)
    selection, pass3 = None, False
    if top is not None and k is not None:
        selection, selected, quotas, t_bits = _select(st, index, top, k, b_star, lows_at_bstar)
        for s in st.stats:
            s.selected = selected.get(s.name, 0)
        if sink is not None and partial:
            if not late or two_pass:
                sink.resolve(t_bits, quotas)
            else:
                t3 = time.perf_counter()
                _pass3(st, sink, t_bits, quotas, selected)
                timings["pass3_s"] = time.perf_counter() - t3
                pass3 = True

    total = _global_stats(st, index)
    timings["total_s"] = time.perf_counter() - t0
    return DeltaReport(
        base={"path": source.base_label}, tuned={"path": source.tuned_label}, grid=list(grid), tensors=st.stats,
        total=total, null_tensor=_tensor_null(grid), selection=selection, profile=profile_groups(st.stats, k),
        notes=_notes(st, pass3), timings=timings,
    )


def _plan(estimate: Estimate | None, n_total: int, grid: Sequence[float], k: int | None,
          sink: SelectionSink | None, cap: int) -> _Plan:
    """What pass 1 collects, from the sampled estimate: level 2 of windows around the curve's ranks
    and rank k, and the entries around rank k (from its window up when there is a sink, if their
    estimated number fits under ``cap``)."""
    if estimate is None or n_total == 0:
        return _Plan(Level2Store([], []), None, np.zeros(N_BUCKETS, dtype=bool))
    ranks = ranks_for(n_total, grid) + ([k] if k is not None else [])
    windows = estimate.windows(ranks)
    candidates = None
    if k is not None:
        start, stop = windows[-1]
        if sink is not None:
            stop = N_BUCKETS - 1
        if estimate.at_or_above(start) - estimate.ge[stop + 1] <= cap:  # estimated entries in [start, stop]
            candidates = _Candidates(sink, start, stop, cap)
    # buckets the candidates hold (with a sink: every one from k's window up) need no store of their own
    upto = candidates.start if candidates is not None and candidates.stop == N_BUCKETS - 1 else N_BUCKETS
    buckets = np.array(sorted({b for lo, hi in windows for b in range(lo, min(hi + 1, upto))}), dtype=np.int64)
    per_bucket = estimate.ge[buckets] - estimate.ge[buckets + 1]  # estimated entries in each
    dense = buckets[per_bucket > TABLE_ENTRIES].tolist()
    level2 = Level2Store(dense if len(dense) <= MAX_DENSE_BUCKETS else [], buckets[per_bucket <= TABLE_ENTRIES].tolist())
    flags = _flags_of(level2.buckets)
    if candidates is not None:
        flags[candidates.start:candidates.stop + 1] = True
    return _Plan(level2, candidates, flags)


def _pass2(st: _Stream, sink: SelectionSink | None, missing: list[int], b_star: int | None, select_all: bool,
           two_pass: bool, lows_at_bstar: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[int, Within]:
    """Stream the tensors with entries in ``missing`` buckets (their level 2 is returned) and, when
    ``b_star`` is given, those with entries at or above it: their low bits in b_star's bucket go
    into ``lows_at_bstar``, and with ``two_pass`` the entries above that bucket go to the sink as
    definite, its own entries as candidates. ``select_all`` hands every entry to the sink."""
    select_all = select_all and sink is not None
    level2 = Level2Counts(missing)
    flags = level2.wanted.copy()
    if b_star is not None:
        flags[b_star:] = True
    todo = [n for n in st.source.names if select_all or st.visit(n, set(missing), b_star)]
    with progress_bar("delta pass 2", total=len(todo)) as advance:
        for name, item in st.items(todo):
            n = st.source.numel(name)
            if select_all:
                sink.definite(name, torch.arange(n), item)  # type: ignore[union-attr]
            found = sweep(item, n, flags, False, st.scratch)
            hi = found.bits >> BUCKET_SHIFT
            level2.add(found.bits, hi)
            if b_star is not None:
                above, at = hi > b_star, hi == b_star
                lows_at_bstar[name] = _low_counts(found.bits[at])
                if two_pass:
                    sink.definite(name, torch.from_numpy(found.idx[above]), item)  # type: ignore[union-attr]
                    sink.candidates(name, torch.from_numpy(found.idx[at]), found.bits[at], item)  # type: ignore[union-attr]
            advance()
    return level2.within()


def _squared_norm(t: torch.Tensor) -> float:
    """sum t^2 (for bases the sweep could not square as it went)."""
    return float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2


def _sweep_threads(most: int) -> int:
    """How many sweep threads to run: the CPUs this process may use, at most ``most``;
    TASKLOC_THREADS overrides (e.g. 1 on a machine shared with a training job, where a second
    thread on a busy core gains nothing and costs ~5% in cache traffic)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = os.environ.get("TASKLOC_THREADS", "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    return max(1, min(most, cpus))


def _flags_of_windows(windows: list[tuple[int, int]]) -> np.ndarray:
    """(N_BUCKETS,) bool: the buckets of inclusive ranges [lo, hi]."""
    flags = np.zeros(N_BUCKETS, dtype=bool)
    for lo, hi in windows:
        flags[lo:hi + 1] = True
    return flags


def _flags_of(buckets: Sequence[int]) -> np.ndarray:
    flags = np.zeros(N_BUCKETS, dtype=bool)
    flags[list(buckets)] = True
    return flags


def _low_counts(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct low 15 bits, their counts) of ``bits``."""
    per_low = np.bincount(bits & LOW_MASK, minlength=LOW_MASK + 1)
    present = np.flatnonzero(per_low)
    return present, per_low[present]


def _zeros(hist: Histogram, found: SweepResult, within: dict[int, Within]) -> int:
    """Entries exactly zero: all of bucket 0 when its low bits sum to 0 (no denormals), else
    counted from its level 2."""
    if not hist.counts[0]:
        return 0
    if not found.low_sum[0]:
        return int(hist.counts[0])
    w = within[0]
    return int(w.counts[w.bits == 0].sum())


def _select(st: _Stream, index: RankIndex, top: TopK, k: int, b_star: int | None,
            lows_at_bstar: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Selection, dict[str, int], dict[str, int], int]:
    """The exact threshold (as a bit pattern), how many entries each tensor contributes, and how
    many of its entries equal to the threshold it contributes (its tie quota)."""
    n_total = index.n
    describe = top.describe(n_total)
    if k == 0:
        return Selection(top.text, describe, 0, None, 0, 0), {}, {}, 0
    if k == n_total or b_star is None:
        return Selection(top.text, describe, k, None, 0, 0), {s.name: s.n for s in st.stats}, {}, 0
    t_bits, ties_taken = index.kth(k)
    t_lo = t_bits & LOW_MASK
    ties = {name: int(counts[lows == t_lo].sum()) for name, (lows, counts) in lows_at_bstar.items()}
    quotas, left = {}, ties_taken  # ties go to the earliest tensors first (tensor order, then flat index)
    for name in st.source.names:
        take = min(left, ties.get(name, 0))
        if take:
            quotas[name] = take
            left -= take
    selected = {}
    for s in st.stats:
        lows, counts = lows_at_bstar.get(s.name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        above_in_bucket = int(counts[lows > t_lo].sum())
        selected[s.name] = st.count_above(s.name, b_star) + above_in_bucket + quotas.get(s.name, 0)
    threshold = float(bits_to_values(np.array([t_bits]))[0])
    return Selection(top.text, describe, k, threshold, sum(ties.values()), ties_taken), selected, quotas, t_bits


def _pass3(st: _Stream, sink: SelectionSink, t_bits: int, quotas: dict[str, int], selected: dict[str, int]) -> None:
    """Select with the exact threshold known (used when the threshold's bucket held too many
    candidates to keep in memory)."""
    todo = [n for n in st.source.names if selected.get(n, 0) > 0]
    flags = np.zeros(N_BUCKETS, dtype=bool)
    flags[t_bits >> BUCKET_SHIFT:] = True
    with progress_bar("delta pass 3", total=len(todo)) as advance:
        for name, item in st.items(todo):
            found = sweep(item, st.source.numel(name), flags, False, st.scratch)
            take = found.bits > t_bits
            take[np.flatnonzero(found.bits == t_bits)[: quotas.get(name, 0)]] = True  # ties in flat-index order
            sink.definite(name, torch.from_numpy(found.idx[take]), item)
            advance()


def _global_stats(st: _Stream, index: RankIndex) -> GlobalStats:
    hist = st.hist
    sizes = [s.n for s in st.stats]
    mean_squares = [s.energy / s.n if s.n else 0.0 for s in st.stats]
    curve_l1, curve_energy = index.shares(st.grid) if index.n else (list(st.grid), list(st.grid))
    null = gaussian_null_curve(sizes, mean_squares, st.grid) if index.n else {"l1": list(st.grid), "energy": list(st.grid)}
    base_energy = None if any(s.base_energy is None for s in st.stats) else sum(s.base_energy for s in st.stats)  # type: ignore[misc]
    return GlobalStats(
        n=index.n, n_changed=sum(s.n_changed for s in st.stats), l1=hist.total1, energy=hist.total2,
        base_energy=base_energy, rel_norm=rel_norm(hist.total2, base_energy), gini=gini_from_histogram(hist),
        hoyer=_hoyer(hist.total1, hist.total2, index.n),
        curve_l1=curve_l1, curve_energy=curve_energy, null_l1=null["l1"], null_energy=null["energy"],
        null_gini=gaussian_null_gini(sizes, mean_squares) if index.n else 0.0,
        null_hoyer=gaussian_null_hoyer(sizes, mean_squares) if index.n else 0.0,
    )


def _hoyer(l1: float, energy: float, n: int) -> float:
    """metrics.hoyer_from_norms on floats: (sqrt(n) - l1/l2) / (sqrt(n) - 1), 0 for n <= 1 or a
    zero delta (torch scalar ops, once per tensor, cost more than the figure on a busy machine)."""
    if n <= 1 or energy <= 0:
        return 0.0
    root = math.sqrt(n)
    return (root - l1 / math.sqrt(energy)) / (root - 1)


def _tensor_null(grid: Sequence[float]) -> dict:
    curve = gaussian_null_curve([1_000_000], [1.0], grid)
    return {"l1": curve["l1"], "energy": curve["energy"], "gini": GINI_HALF_NORMAL, "hoyer": 1 - math.sqrt(2 / math.pi)}


def _notes(st: _Stream, pass3: bool) -> list[str]:
    notes = [
        "null: a dense Gaussian delta with each tensor's own mean squared delta, curves computed analytically "
        "(large-n limit); 'concentrated' means above this curve.",
        "Gini comes from a 65536-bucket histogram of |delta| and may read low by at most 0.002; curves, "
        "threshold and norms are exact.",
    ]
    if st.source.skipped:
        differing = st.source.differing_skipped()
        notes.append(f"{len(st.source.skipped)} non-float tensors not analysed"
                     + (f"; {len(differing)} of them differ between the checkpoints and no patch carries them: {', '.join(differing[:5])}"
                        if differing else " (identical in both checkpoints)."))
    if st.rank_skipped:
        notes.append(f"effective rank skipped for {st.rank_skipped} matrices longer than {st.rank_max_dim} on their short "
                     "side (raise --rank-max-dim, or use a GPU).")
    if pass3:
        notes.append("the top-k threshold fell in a bucket with too many equal-magnitude entries to hold; a third pass "
                     "selected them.")
    return notes
