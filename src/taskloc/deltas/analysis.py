"""Streaming delta analysis: one tensor pair in memory at a time, exact global figures.

Pass 1 streams every tensor: its delta's level-1 radix histogram (radix.py), its own exact
concentration curve (level 2 gathered while the tensor is in memory), Gini, Hoyer, relative norm
and effective rank; the histograms add up to the global one. Pass 2 streams again, visiting only
tensors with entries in the global curve's boundary buckets or at/above the top-k threshold's
bucket: it counts those buckets' entries by their low bits (global level 2, which makes the global
curve and threshold exact) and hands the top-k entries to a sink. When the threshold's bucket is
too big to hold its candidates in memory (massive ties, e.g. many exact zeros), a third pass
selects with the exact threshold instead. Memory stays O(largest tensor).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..device import pick_device
from ..metrics import effective_rank, hoyer_from_norms
from ..progress import progress_bar
from .names import KINDS, kind_of, layer_of
from .null import GINI_HALF_NORMAL, gaussian_null_curve, gaussian_null_gini, gaussian_null_hoyer
from .radix import (LOW_MASK, Histogram, Level2Counts, RankIndex, abs_bits, bits_to_values, boundary_buckets,
                    bucket_ids, gini_from_histogram, ranks_for, within_from_tensor)
from .scratch import Scratch
from .selection import SelectionSink, TopK
from .sources import DeltaSource, Loaded

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
    layer: Optional[int]
    kind: str
    n: int
    n_changed: int
    l1: float  # sum |delta|
    energy: float  # sum delta^2
    base_energy: Optional[float]  # sum base^2
    max_abs: float
    rel_norm: Optional[float]  # ||delta|| / ||base||
    gini: float
    hoyer: float
    effective_rank: Optional[float]  # 2-D tensors under the size limit
    lora_rank: Optional[int]
    curve_l1: list[float]
    curve_energy: list[float]
    selected: Optional[int] = None  # entries in the global top-k


@dataclass
class GlobalStats:
    n: int
    n_changed: int
    l1: float
    energy: float
    base_energy: Optional[float]
    rel_norm: Optional[float]
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
    threshold: Optional[float]  # |delta| of the k-th largest entry
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
    selection: Optional[Selection]
    profile: dict[str, list[dict]]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["format"] = "taskloc-delta-report/1"
        out["grid_percent"] = [100 * g for g in self.grid]
        return out


class _Stream:
    """State of one analysis across its passes."""

    def __init__(self, source: DeltaSource, grid: Sequence[float], device: torch.device, rank_max_dim: int) -> None:
        self.source, self.grid, self.device, self.rank_max_dim = source, list(grid), device, rank_max_dim
        self.hist = Histogram()
        self.stats: list[TensorStats] = []
        self.buckets: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> compressed level-1 counts
        self.rank_skipped = 0
        self.largest = max((source.numel(n) for n in source.names), default=0)
        self.scratch = Scratch(device)  # temporaries of the per-tensor computation
        self.load_scratch = (Scratch(device), Scratch(device))  # alternating input buffers (see stream)

    # --- pass 1 ----------------------------------------------------------------------------------
    def stream(self, names: list[str]) -> Iterator[tuple[str, Loaded]]:
        """(name, loaded) in order; the next tensor pair is read in a background thread while the
        caller works on this one (file reads and numpy release the GIL). Two sets of load buffers
        alternate, so an item stays valid until the caller asks for the one after next."""
        if not names:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.source.load, names[0], self.load_scratch[0])
            for i, name in enumerate(names):
                item = pending.result()
                if i + 1 < len(names):
                    pending = pool.submit(self.source.load, names[i + 1], self.load_scratch[(i + 1) % 2])
                yield name, item

    def pass1(self) -> None:
        with progress_bar("delta pass 1", total=len(self.source.names)) as advance:
            for name, item in self.stream(self.source.names):
                self.stats.append(self._tensor_stats(name, item))
                advance()

    def _tensor_stats(self, name: str, item: Loaded) -> TensorStats:
        shape, n = self.source.shapes[name], self.source.numel(name)
        if item.delta is None:
            hist, curve, n_changed, max_abs, erank = Histogram.of_zeros(n), (list(self.grid), list(self.grid)), 0, 0.0, None
        else:
            bits = abs_bits(item.delta, self.scratch)  # (n,) int32 patterns of |delta|
            hist, hi = Histogram.of_bits(bits, self.scratch)
            if hist.has_nonfinite():
                self.source.raise_nonfinite(name, item)
            top = hist.top_bucket()  # its level 2 gives the exact max |delta|
            within = within_from_tensor(bits, hi, sorted(set(boundary_buckets(hist, ranks_for(n, self.grid))) | {top}))
            curve = RankIndex(hist, within).shares(self.grid)
            n_changed = int(np.count_nonzero(bits.cpu().numpy())) if hist.counts[0] else n
            max_abs = float(within[top].values[0]) if n else 0.0
            erank = self._effective_rank(item.delta, shape)
        base_energy = None
        if item.base is not None:
            base_energy = float(torch.linalg.vector_norm(item.base, dtype=torch.float32)) ** 2
        self.hist.add(hist)
        self.buckets[name] = hist.compressed()
        l1, energy = hist.total1, hist.total2
        return TensorStats(
            name=name, shape=tuple(shape), dtype=str(self.source.dtypes[name]).replace("torch.", ""),
            layer=layer_of(name), kind=kind_of(name), n=n, n_changed=n_changed, l1=l1, energy=energy,
            base_energy=base_energy, max_abs=max_abs, rel_norm=_rel_norm(energy, base_energy),
            gini=gini_from_histogram(hist), hoyer=float(hoyer_from_norms(torch.tensor(l1), torch.tensor(math.sqrt(energy)), n)),
            effective_rank=erank, lora_rank=self.source.lora_rank(name), curve_l1=curve[0], curve_energy=curve[1],
        )

    def _effective_rank(self, delta: torch.Tensor, shape: tuple[int, ...]) -> Optional[float]:
        if len(shape) != 2:
            return None
        if min(shape) > self.rank_max_dim:
            self.rank_skipped += 1
            return None
        return effective_rank(delta.view(shape))

    # --- pass 2 (and 3) ----------------------------------------------------------------------------
    def visit(self, name: str, buckets: set[int], above: Optional[int]) -> bool:
        """Does tensor ``name`` have entries in ``buckets`` or in buckets above ``above``?"""
        present, _ = self.buckets[name]
        if above is not None and len(present) and int(present[-1]) > above:
            return True
        return bool(np.isin(present, list(buckets)).any())

    def count_above(self, name: str, bucket: int) -> int:
        present, counts = self.buckets[name]
        return int(counts[present > bucket].sum())


def analyse(
    source: DeltaSource,
    *,
    top: Optional[TopK] = None,
    sink: Optional[SelectionSink] = None,
    grid: Sequence[float] = GRID,
    device: Union[str, torch.device] = "cpu",
    rank_max_dim: Optional[int] = None,
    candidate_cap: Optional[int] = None,
) -> DeltaReport:
    """Analyse every floating-point tensor of ``source``; select the global ``top`` entries and
    hand them to ``sink`` (a patch writer or a mask builder) when given.

    rank_max_dim:  effective rank is computed for 2-D deltas up to this size on their short side
                   (default 1024 on CPU, 8192 on CUDA), skipped with a note above it.
    candidate_cap: most threshold-bucket candidates held in memory before falling back to a third
                   pass (default: the largest tensor's entry count, keeping memory O(largest tensor)).
    """
    dev = pick_device(device) if isinstance(device, str) else device
    if rank_max_dim is None:
        rank_max_dim = 8192 if dev.type == "cuda" else 1024
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    st = _Stream(source, grid, dev, rank_max_dim)
    st.pass1()
    timings["pass1_s"] = time.perf_counter() - t0

    hist, n_total = st.hist, st.hist.n
    k = top.entries(n_total) if top is not None else None
    select_all = k is not None and k == n_total and k > 0
    partial = k is not None and 0 < k < n_total
    b_star, _ = hist.locate(k) if partial else (None, 0)
    curve_buckets = boundary_buckets(hist, ranks_for(n_total, grid)) if n_total else []
    level2 = Level2Counts(sorted(set(curve_buckets) | ({b_star} if b_star is not None else set())))
    cap = candidate_cap if candidate_cap is not None else max(st.largest, 1 << 20)
    two_pass = sink is not None and partial and int(hist.counts[b_star]) <= cap
    # name -> (distinct low bits, counts) of its entries in the threshold's bucket: enough to place
    # the threshold and split its ties, and bounded by 2^15 pairs per tensor however many there are
    lows_at_bstar: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    t1 = time.perf_counter()
    want = set(level2.buckets)
    todo = [n for n in source.names if st.visit(n, want, b_star if sink is not None and partial else None)
            or (sink is not None and select_all)]
    with progress_bar("delta pass 2", total=len(todo)) as advance:
        for name, item in st.stream(todo):
            if item.delta is None:  # an untouched tensor: all its entries are exact zeros
                item = Loaded(st.scratch.get("delta", source.numel(name), torch.float32).zero_(), item.base, item.tuned)
            bits = abs_bits(item.delta, st.scratch)  # (n,) int32
            hi = bucket_ids(bits, st.scratch)  # (n,) int64
            bits_np, hi_np = bits.cpu().numpy(), hi.cpu().numpy()
            level2.add(bits_np, hi_np)
            if select_all:
                sink.definite(name, torch.arange(bits.numel()), item)  # type: ignore[union-attr]
            elif b_star is not None:
                at_or_above = np.flatnonzero(hi_np >= b_star)  # (m,) ascending, m ~ k entries
                in_bucket = hi_np[at_or_above] == b_star
                cand_idx = at_or_above[in_bucket]
                lows = bits_np[cand_idx] & LOW_MASK
                per_low = np.bincount(lows, minlength=LOW_MASK + 1)
                present = np.flatnonzero(per_low)
                lows_at_bstar[name] = (present, per_low[present])
                if two_pass:
                    sink.definite(name, torch.from_numpy(at_or_above[~in_bucket]), item)  # type: ignore[union-attr]
                    sink.candidates(name, torch.from_numpy(cand_idx), lows, item)  # type: ignore[union-attr]
            advance()
    timings["pass2_s"] = time.perf_counter() - t1

    index = RankIndex(hist, level2.within())
    selection = None
    if top is not None and k is not None:
        selection, selected, quotas, t_bits = _select(st, index, top, k, b_star, lows_at_bstar)
        for s in st.stats:
            s.selected = selected.get(s.name, 0)
        if sink is not None and partial:
            if two_pass:
                sink.resolve(t_bits & LOW_MASK, quotas)
            else:
                t2 = time.perf_counter()
                _pass3(st, sink, t_bits, quotas, selected)
                timings["pass3_s"] = time.perf_counter() - t2

    total = _global_stats(st, index)
    timings["total_s"] = time.perf_counter() - t0
    return DeltaReport(
        base={"path": source.base_label}, tuned={"path": source.tuned_label}, grid=list(grid), tensors=st.stats,
        total=total, null_tensor=_tensor_null(grid), selection=selection, profile=_profiles(st.stats, k),
        notes=_notes(st, two_pass, sink is not None and partial), timings=timings,
    )


def _select(st: _Stream, index: RankIndex, top: TopK, k: int, b_star: Optional[int],
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
    with progress_bar("delta pass 3", total=len(todo)) as advance:
        for name, item in st.stream(todo):
            n = st.source.numel(name)
            bits = abs_bits(item.delta, st.scratch) if item.delta is not None else torch.zeros(n, dtype=torch.int32, device=st.device)
            above = bits > t_bits
            ties = torch.nonzero(bits == t_bits).view(-1)[: quotas.get(name, 0)]
            above[ties] = True
            sink.definite(name, torch.nonzero(above).view(-1).cpu(), item)
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
        base_energy=base_energy, rel_norm=_rel_norm(hist.total2, base_energy), gini=gini_from_histogram(hist),
        hoyer=float(hoyer_from_norms(torch.tensor(hist.total1), torch.tensor(math.sqrt(hist.total2)), index.n)),
        curve_l1=curve_l1, curve_energy=curve_energy, null_l1=null["l1"], null_energy=null["energy"],
        null_gini=gaussian_null_gini(sizes, mean_squares) if index.n else 0.0,
        null_hoyer=gaussian_null_hoyer(sizes, mean_squares) if index.n else 0.0,
    )


def _tensor_null(grid: Sequence[float]) -> dict:
    curve = gaussian_null_curve([1_000_000], [1.0], grid)
    return {"l1": curve["l1"], "energy": curve["energy"], "gini": GINI_HALF_NORMAL, "hoyer": 1 - math.sqrt(2 / math.pi)}


def _rel_norm(energy: float, base_energy: Optional[float]) -> Optional[float]:
    if base_energy is None:
        return None
    if base_energy <= 0:
        return 0.0 if energy == 0 else math.inf
    return math.sqrt(energy / base_energy)


def _profiles(stats: list[TensorStats], k: Optional[int]) -> dict[str, list[dict]]:
    """Delta energy, relative norm and share of the top-k entries, grouped by layer and by kind."""
    n_all = sum(s.n for s in stats) or 1
    e_all = sum(s.energy for s in stats)

    def group(key: str) -> list[dict]:
        rows: dict[object, dict] = {}
        for s in stats:
            g = getattr(s, key)
            row = rows.setdefault(g, {key: g, "tensors": 0, "n": 0, "energy": 0.0, "base_energy": 0.0, "selected": 0, "has_base": True})
            row["tensors"] += 1
            row["n"] += s.n
            row["energy"] += s.energy
            row["selected"] += s.selected or 0
            if s.base_energy is None:
                row["has_base"] = False
            else:
                row["base_energy"] += s.base_energy
        out = [{
            key: row[key], "tensors": row["tensors"], "n": row["n"], "param_share": row["n"] / n_all,
            "energy_share": row["energy"] / e_all if e_all > 0 else 0.0,
            "rel_norm": _rel_norm(row["energy"], row["base_energy"] if row["has_base"] else None),
            "topk_share": (row["selected"] / k) if k else None,
        } for row in rows.values()]
        if key == "layer":  # blocks in order, then tensors outside any block
            return sorted(out, key=lambda r: (r["layer"] is None, r["layer"] or 0))
        return sorted(out, key=lambda r: KINDS.index(r["kind"]))

    return {"layer": group("layer"), "kind": group("kind")}


def _notes(st: _Stream, two_pass: bool, selecting: bool) -> list[str]:
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
    if selecting and not two_pass:
        notes.append("the top-k threshold fell in a bucket with too many equal-magnitude entries to hold; a third pass "
                     "selected them.")
    return notes
