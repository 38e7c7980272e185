"""Training-free sparse attention patterns, chosen by name, each with a target density.

A pattern looks at q and k and returns a ``Selection``: which keys each query may attend. The
attended set of query i (absolute position p_i = Tk - Tq + i) is

    member[row(i), j]  and  j <= p_i  and  (no rule, or vert[j] or slash[p_i - j])

where row(i) = i // rows groups queries that share one key list (a query block), ``member`` is
that list as a boolean over keys, and the optional element rule (vert: chosen columns, slash:
chosen diagonals by offset p - j) narrows it per query. The rule lets sliding windows and
vertical-slash be exact per query while the key lists, which the compute kernels gather, stay per
block. Patterns (Nawrot et al. 2025, "The Sparse Frontier", and the methods it compares):

* ``sliding-window``: the first ``sinks`` keys plus the last w keys up to the query.
* ``block-sparse``: mean-pooled query and key blocks score each key block per query block; the top
  blocks are kept (the diagonal and first block always).
* ``vertical-slash``: the last ``last_q`` queries' softmax pattern, summed per column and per
  diagonal, picks the top columns and diagonals (MInference); the first ``sinks`` columns and the
  main diagonal always. Best columns are taken until they cover half the target pairs, then best
  diagonals until both together cover all of it (a column j reaches only the queries at or after
  j, a diagonal at offset d only those at or after d: the counts are of pairs, not keys).
* ``top-k``: each query's top keys by q.k (an oracle: its selection costs dense q.k).
* ``quest``: pages of ``page`` keys scored by the upper bound sum_d max(q_d min_d, q_d max_d) of
  q.k over the page (Quest, Tang et al. 2024); the query's own page always. Built for decoding.

Density is the target fraction of the causal (query, key) pairs attended. Each pattern turns it
into one per-row budget (``fixed_budget``) so rows in a batch have equal work, except
vertical-slash, whose columns and diagonals are chosen per head by the causal pairs they cover
(within one column or diagonal above the target); the achieved fraction, which FLOP accounting
reports, is computed from the Selection, never assumed.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..registry import Registry
from .kernels import grouped_scores


@dataclass(frozen=True)
class PatternSpec:
    """A pattern and its settings. ``check()`` turns bad values into one ConfigError line."""

    name: str
    density: float = 1.0
    block: int = 64  # queries per row and keys per block (block-sparse, window, vertical-slash)
    sinks: int = 4  # always-kept first keys (sliding-window, vertical-slash)
    last_q: int = 64  # queries whose pattern picks vertical-slash's columns and diagonals
    page: int = 16  # keys per Quest page

    def check(self) -> PatternSpec:
        PATTERNS.get(self.name)  # unknown name -> UnknownNameError with did-you-mean
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)) or not (
            0 < self.density <= 1
        ):
            raise ConfigError(f"attention density={self.density!r} for {self.name!r} must lie in (0, 1]; "
                              "1 is dense attention, 1/16 keeps one pair in sixteen.")
        for field_name in ("block", "sinks", "last_q", "page"):
            value = getattr(self, field_name)
            low = 0 if field_name == "sinks" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"attention {field_name}={value!r} for {self.name!r} must be an integer >= {low}.")
        return self


@dataclass
class Selection:
    """Which keys each query attends (see the module docstring)."""

    # (B, H, R, Tk) bool: the key list of each row of ``rows`` queries, or a function building it on
    # first use (``member``): vertical-slash's lists cost more than its own kernel, which never reads them.
    member_: torch.Tensor | Callable[[], torch.Tensor]
    rows: int  # queries per row
    t_q: int
    vert: torch.Tensor | None = None  # (B, H, Tk) bool: columns the element rule lets through
    slash: torch.Tensor | None = None  # (B, H, Tk) bool: diagonals (by offset p - j) it lets through
    select_flops: int = 0  # multiply-adds x 2 spent choosing the keys
    # When every key list is whole blocks of ``unit`` keys: block ids (B, H, R, K) and validity,
    # so kernels gather blocks instead of keys.
    blocks: tuple[torch.Tensor, torch.Tensor] | None = None
    unit: int = 1

    @property
    def member(self) -> torch.Tensor:
        if callable(self.member_):
            self.member_ = self.member_()
        return self.member_

    def allowed(self) -> torch.Tensor:
        """The attended set as a dense (B, H, Tq, Tk) bool (tests and small inputs only)."""
        _b, _h, _r, t_k = self.member.shape
        qpos = query_positions(self.t_q, t_k, self.member.device)  # (Tq,)
        rows = self.member[:, :, torch.arange(self.t_q, device=qpos.device) // self.rows]  # (B, H, Tq, Tk)
        keys = torch.arange(t_k, device=qpos.device)
        out = rows & (keys[None, :] <= qpos[:, None])
        if self.vert is not None:
            offset = (qpos[:, None] - keys[None, :]).clamp(min=0)  # (Tq, Tk)
            out = out & (self.vert[:, :, None, :] | self.slash[:, :, offset])
        return out


def query_positions(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """(Tq,) absolute positions of the queries, the last Tq of Tk."""
    return torch.arange(t_k - t_q, t_k, device=device)


def fixed_budget(candidates: torch.Tensor, density: float, causal: torch.Tensor | None = None,
                 unit: torch.Tensor | int = 1) -> int:
    """One per-row count k for every row (equal work per row, so gathered rows need no padding)
    whose attended causal pairs are nearest ``density`` x the causal pairs. ``candidates`` (R,)
    int: what each row may choose from (keys, blocks or pages). A row keeping k of its c_r
    candidates attends causal_r - (c_r - min(c_r, k)) x unit_r pairs: ``causal`` (R,) the causal
    pairs the row sees (default: c_r, one pair per candidate) and ``unit`` (R,) or int the pairs a
    whole candidate holds (a block's queries x keys). The candidates left out count as whole, exact
    where only the row's own block or page, which every pattern keeps, is cut by the causal edge:
    prefill, Quest (one query per row) and decode rows within one key block. A decode row of
    block-sparse whose queries straddle a block boundary also sees the block before its own in
    part; leaving that one out removes fewer pairs than counted, so there the budget is near, not
    nearest (the attended pairs then depend on which blocks are picked; FLOP accounting counts
    them exactly). Counting the own block whole had block-sparse attend 0.054 at 1/16 (T = 8192,
    blocks of 64)."""
    causal = candidates if causal is None else causal
    total = float(causal.sum())

    def attended(k: int) -> float:
        return total - float(((candidates - candidates.clamp(max=k)) * unit).sum())

    target = density * total
    lo, hi = 1, max(1, int(candidates.max()))
    while lo < hi:  # attended(k) grows with k: bisect
        mid = (lo + hi) // 2
        if attended(mid) >= target - 1e-9:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and target - attended(lo - 1) < attended(lo) - target:  # the nearer of the two around it
        return lo - 1
    return lo


def per_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Hkv, ...) -> (B, H, ...): each key/value head repeated for its query heads (HF order)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over consecutive groups of ``size`` along dim 2 (a short last group is averaged over
    what it has): (B, H, T, D) -> (B, H, ceil(T / size), D)."""
    b, h, t, d = x.shape
    n = math.ceil(t / size)
    # pad copies even when it adds nothing (a sixth of block-sparse's prefill time at 8192): view instead
    padded = x if n * size == t else torch.nn.functional.pad(x, (0, 0, 0, n * size - t))
    counts = torch.full((n,), float(size), dtype=x.dtype, device=x.device)
    counts[-1] = t - (n - 1) * size
    return padded.reshape(b, h, n, size, d).sum(3) / counts[:, None]  # a view unless x is strided


def top_members(scores: torch.Tensor, candidate: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (..., N): the top ``k`` candidates of each row by score (fewer if a row has fewer)."""
    scores = scores.masked_fill(~candidate, -math.inf)
    picked = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    chosen = torch.zeros_like(candidate).scatter_(-1, picked, True)
    return chosen & candidate


def span(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """How many query positions in [first, last] are >= x (elementwise, int64): the queries a
    vertical-slash column at key x, or a diagonal at offset x, reaches."""
    return (last - x.clamp(min=first) + 1).clamp(min=0)


# Candidates cover_prefix ranks first (a top-k instead of a sort of all N); it widens x4 until the
# prefix provably ends inside them. At T = 8192 and density 1/16 a head needs about 260.
COVER_FIRST = 512


def descending(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` candidates of each row by descending score, ties by lower index (the order
    of a stable sort): (indices, scores), each (..., n)."""
    if n >= scores.shape[-1]:
        values, order = scores.sort(dim=-1, descending=True, stable=True)
        return order, values
    values, idx = scores.topk(n, dim=-1)  # (..., n), ties in no promised order
    idx, by_index = idx.sort(-1)
    values, by_score = values.gather(-1, by_index).sort(dim=-1, descending=True, stable=True)
    return idx.gather(-1, by_score), values


def cover_prefix(scores: torch.Tensor, gain: torch.Tensor, goal: torch.Tensor | float,
                 forced: torch.Tensor) -> torch.Tensor:
    """Boolean (B, H, N): the shortest prefix of the candidates by descending score (ties: lower
    index first) whose summed ``gain`` (N,) or (B, H, N) reaches ``goal`` (float or (B, H)), and the
    ``forced`` (N,) ones always. Per head: heads differ in how many they need."""
    n_all = scores.shape[-1]
    goal = torch.as_tensor(goal, dtype=torch.float64, device=scores.device).expand(scores.shape[:-1])
    n = min(n_all, COVER_FIRST)
    while True:
        order, values = descending(scores, n)  # (B, H, n)
        gained = gain.expand_as(scores).gather(-1, order).cumsum(-1)
        count = ((gained.double() < goal[..., None] - 1e-9).sum(-1, keepdim=True) + 1)  # the first that reaches it
        if n == n_all:
            break
        # The prefix of the top n is the whole order's when every head stops inside it at a score
        # strictly above the n-th: all candidates left out score lower, and no tie spans the cut.
        stop = values.gather(-1, (count - 1).clamp(max=n - 1))
        if bool(((count < n) & (stop > values[..., -1:])).all()):
            break
        n = min(n_all, 4 * n)
    keep = torch.arange(n, device=scores.device) < count  # (B, H, n)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, order, keep) | forced


def block_lists(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """chosen (B, H, R, N) bool -> each row's block ids, ascending and padded (B, H, R, K), and validity."""
    counts = chosen.sum(-1, keepdim=True)
    width = max(1, int(counts.max()))
    ids = torch.argsort(chosen.to(torch.uint8), dim=-1, descending=True, stable=True)[..., :width]
    valid = torch.arange(width, device=chosen.device) < counts
    return ids.masked_fill(~valid, 0), valid


Selector = Callable[[PatternSpec, torch.Tensor, torch.Tensor, float], Selection]
PATTERNS: Registry[Selector] = Registry("attention pattern")


def require_blocks(spec: PatternSpec, t_q: int, t_k: int) -> None:
    """Prefill reads the sequence in whole blocks: a ragged tail would pool a different number of
    positions, so a block size that does not divide the sequence is refused there."""
    if t_q == t_k and t_k % spec.block:
        raise ConfigError(f"attention block={spec.block} does not divide the sequence length {t_k} "
                          f"({spec.name!r} prefill); pick a block that divides it, e.g. "
                          f"{math.gcd(spec.block, t_k)}, or pad the prompt.")


@PATTERNS.register("sliding-window")
def sliding_window(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float) -> Selection:
    b, h, t_q, _d = q.shape
    t_k = k.shape[2]
    qpos = query_positions(t_q, t_k, q.device)
    causal = (qpos + 1).to(torch.int64)  # (Tq,) keys each query may see

    def attended(w: int) -> float:
        return float((causal.clamp(max=w) + (causal - w).clamp(min=0).clamp(max=spec.sinks)).sum())

    target, lo, hi = spec.density * float(causal.sum()), 1, t_k
    while lo < hi:  # the smallest window reaching the target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if attended(mid) >= target - 1e-9 else (mid + 1, hi)
    w = lo
    rows = min(spec.block, t_q)
    n_rows = math.ceil(t_q / rows)
    keys = torch.arange(t_k, device=q.device)
    first = qpos[torch.arange(n_rows, device=q.device) * rows]  # (R,) first query position per row
    last = qpos[(torch.arange(n_rows, device=q.device) * rows + rows - 1).clamp(max=t_q - 1)]
    member = (keys[None] < spec.sinks) | ((keys[None] > first[:, None] - w) & (keys[None] <= last[:, None]))
    return Selection(member.expand(b, h, n_rows, t_k), rows, t_q,
                     vert=(keys < spec.sinks).expand(b, h, t_k), slash=(keys < w).expand(b, h, t_k))


@PATTERNS.register("block-sparse")
def block_sparse(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float) -> Selection:
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    require_blocks(spec, t_q, t_k)
    rows = min(spec.block, t_q)
    pq = pool(q, rows)  # (B, H, R, D)
    pk = per_head(pool(k, spec.block), h)  # (B, H, N, D)
    scores = pq @ pk.transpose(-1, -2)  # (B, H, R, N)
    n_rows, n_blocks = pq.shape[2], pk.shape[2]
    qpos = query_positions(t_q, t_k, q.device)
    last = qpos[(torch.arange(n_rows, device=q.device) * rows + rows - 1).clamp(max=t_q - 1)]  # (R,)
    starts = torch.arange(n_blocks, device=q.device) * spec.block
    candidate = starts[None, :] <= last[:, None]  # (R, N) key blocks a row can see
    own = last // spec.block  # the diagonal block, and block 0, are always kept
    forced = (torch.arange(n_blocks, device=q.device)[None, :] == own[:, None]) | (starts[None, :] == 0)
    first = qpos[torch.arange(n_rows, device=q.device) * rows]  # (R,) first query position per row
    sizes = last - first + 1  # (R,) queries per row
    causal = ((first + last + 2) * sizes) // 2  # (R,) causal pairs: sum of (p + 1) over the row
    budget = max(2, fixed_budget(candidate.sum(-1), spec.density, causal, sizes * spec.block))  # >= the forced two
    chosen = top_members(scores.masked_fill(forced, math.inf), candidate.expand_as(scores), budget)
    member = chosen.repeat_interleave(spec.block, dim=-1)[..., :t_k]  # (B, H, R, Tk)
    return Selection(member, rows, t_q, select_flops=2 * b * h * n_rows * n_blocks * d,
                     blocks=block_lists(chosen), unit=spec.block)


@PATTERNS.register("vertical-slash")
def vertical_slash(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float) -> Selection:
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    require_blocks(spec, t_q, t_k)
    n_last = min(spec.last_q, t_q)
    qpos = query_positions(t_q, t_k, q.device)
    keys = torch.arange(t_k, device=q.device)
    last_pos = qpos[-n_last:]
    scores = grouped_scores(q[:, :, -n_last:], k, scale)  # (B, H, n_last, Tk), a fresh tensor
    tail = t_k - n_last  # keys before the first of the last queries are seen by all of them: mask the tail only
    scores[..., tail:].masked_fill_(keys[None, tail:] > last_pos[:, None], -math.inf)  # causal, (n_last, n_last)
    probs = torch.softmax(scores.float(), dim=-1)  # (B, H, n_last, Tk)
    vertical = probs.sum(2)  # (B, H, Tk) per column
    slash = torch.zeros(b, h, t_k, device=q.device)  # per diagonal: offset p - j of query p's key j
    for i, p in enumerate(last_pos.tolist()):  # row i's keys p, p - 1, ..., 0 lie on offsets 0, 1, ..., p
        slash[..., : p + 1] += probs[:, :, i, : p + 1].flip(-1)
    first, last = t_k - t_q, t_k - 1  # absolute positions of the queries
    goal = spec.density * float((qpos + 1).sum())  # causal pairs to attend
    reach = span(keys, first, last)  # (Tk,) queries a column j, or a diagonal at offset j, reaches
    # Columns, best first (the sinks always), until they cover half the goal: a column reaches only
    # the queries at or after it, so a count of keys per query would attend about half the density.
    vert = cover_prefix(vertical.masked_fill(keys < spec.sinks, math.inf), reach, goal / 2, keys < spec.sinks)
    # Then diagonals, best first (the main one always), until columns and diagonals cover the goal.
    # Diagonal d meets column j at the query j + d: that pair is already covered, so not counted again.
    below = torch.nn.functional.pad(vert.cumsum(-1), (1, 0))  # (B, H, Tk + 1): chosen columns before each key
    meets = below[..., (last - keys + 1).clamp(0, t_k)] - below[..., (first - keys).clamp(0, t_k)]  # (B, H, Tk)
    covered = (reach * vert).sum(-1)  # (B, H) pairs the columns cover
    diag = cover_prefix(slash.masked_fill(keys == 0, math.inf), reach - meets, goal - covered, keys == 0)
    rows = min(spec.block, t_q)
    n_rows = math.ceil(t_q / rows)

    def member() -> torch.Tensor:
        """A row's key list: its columns, and every key that one of its queries reaches on a diagonal."""
        first = qpos[torch.arange(n_rows, device=q.device) * rows]
        last = qpos[(torch.arange(n_rows, device=q.device) * rows + rows - 1).clamp(max=t_q - 1)]
        ahead = torch.nn.functional.pad(diag.cumsum(-1), (1, 0))  # (B, H, Tk + 1): diagonals below each offset
        hi = (last[:, None] - keys[None, :]).clamp(min=-1, max=t_k - 1) + 1  # offsets p - j over the row
        lo = (first[:, None] - keys[None, :]).clamp(min=0, max=t_k)
        reached = (ahead[:, :, hi] - ahead[:, :, lo.clamp(max=hi)]) > 0  # (B, H, R, Tk)
        return vert[:, :, None, :] | reached

    return Selection(member, rows, t_q, vert=vert, slash=diag, select_flops=2 * b * h * n_last * t_k * d)


@PATTERNS.register("top-k")
def top_k(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float) -> Selection:
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    qpos = query_positions(t_q, t_k, q.device)
    candidate = torch.arange(t_k, device=q.device)[None, :] <= qpos[:, None]  # (Tq, Tk)
    budget = fixed_budget(candidate.sum(-1), spec.density)
    chosen = top_members(grouped_scores(q, k, scale), candidate.expand(b, h, t_q, t_k), budget)
    return Selection(chosen, 1, t_q, select_flops=2 * b * h * t_q * t_k * d)


@PATTERNS.register("quest")
def quest(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float) -> Selection:
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    n_pages = math.ceil(t_k / spec.page)
    padded = torch.nn.functional.pad(k, (0, 0, 0, n_pages * spec.page - t_k))
    pages = padded.view(b, k.shape[1], n_pages, spec.page, d)
    valid = (torch.arange(n_pages * spec.page, device=q.device) < t_k).view(n_pages, spec.page, 1)
    k_min = per_head(pages.masked_fill(~valid, math.inf).amin(3), h)  # (B, H, P, D)
    k_max = per_head(pages.masked_fill(~valid, -math.inf).amax(3), h)
    bound = q.clamp(min=0) @ k_max.transpose(-1, -2) + q.clamp(max=0) @ k_min.transpose(-1, -2)  # (B, H, Tq, P)
    qpos = query_positions(t_q, t_k, q.device)
    starts = torch.arange(n_pages, device=q.device) * spec.page
    candidate = starts[None, :] <= qpos[:, None]  # (Tq, P)
    own = (qpos // spec.page)[:, None] == torch.arange(n_pages, device=q.device)[None, :]
    budget = fixed_budget(candidate.sum(-1), spec.density, qpos + 1, spec.page)  # one query per row
    chosen = top_members(bound.masked_fill(own, math.inf), candidate.expand_as(bound), budget)
    member = chosen.repeat_interleave(spec.page, dim=-1)[..., :t_k]  # (B, H, Tq, Tk)
    return Selection(member, 1, t_q, select_flops=2 * 2 * b * h * t_q * n_pages * d,
                     blocks=block_lists(chosen), unit=spec.page)


def select(spec: PatternSpec, q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> Selection:
    """The keys ``spec``'s pattern picks for queries q (B, H, Tq, Dh) over keys k (B, Hkv, Tk, Dh)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.no_grad():  # selection is a discrete choice: no gradient flows through it
        return PATTERNS.get(spec.name)(spec, q, k, scale)
