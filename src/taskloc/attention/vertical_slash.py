"""Vertical-slash prefill computed in its own structure: columns as one narrow matmul, diagonals
pair by pair, one joint softmax; work = the attended pairs, not the keys a block of queries reaches.

A vertical-slash Selection (patterns.py) lets query i at absolute position p attend key j when
j <= p and (j is a chosen column or p - j is a chosen diagonal offset). Per head:

* columns: the chosen keys, gathered once, K_c, V_c (Nc, D); scores q @ K_c^T of width Nc (a
  dense matmul over columns only; per chunk of queries only the columns up to the chunk's last
  position, the columns being ascending);
* diagonals: the key of query p on offset d is p - d; its score is one dot product q_p . k_{p-d}
  (no key is shared by two queries of one diagonal, so there is no matmul to form; compiled loops
  walk each diagonal's keys in order). A key that is also a column, or lies before position 0,
  is left out (the lowest finite score, so exp gives exactly 0), so no pair counts twice;
* one softmax over both (torch's, max subtracted, float32 at least), then
  out = P_c @ V_c + sum_d P_d v_{p-d}.

Queries go head by head in chunks of CHUNK_QUERIES so the score buffers stay near cache size. On
CPU with numba (float32 or float64, no gradient) the diagonal loops are compiled (numba);
elsewhere (CUDA, half precision, autograd, numba missing) the same arithmetic runs as gathers and
einsums, exact but slow on CPU (rows gathered one by one: 2.4 s at T = 8192, slower than dense
SDPA). The diagonal loops are bound by reading key and value rows (a diagonal pair needs a q.k
dot product and a p.v update, a 256-byte row each, with no reuse a matmul could exploit), so they
run head by head with four diagonals sharing each query row.

Measured at T = 8192, 8 heads x 64, density 1/16 (attending 0.0626), one thread, cpu clock, on a
shared 2-core machine whose timings wander by a third from run to run:
benchmarks/sparse_attention.py (selection included, fastest of 7, 2026-12-01 14:20): 274 ms
against SDPA's 1268 (4.6x) on Gaussian inputs, 219 against 1133 (5.2x) with a positional code.
The kernel call alone (fastest of 8): 177 ms Gaussian, 182 positional; the selection ~30 ms. Its
parts (chunks of 1024, fastest of 4): diagonal scores 54-59 ms, diagonal values 63-69, the two
column matmuls 57-72 together, softmax 26-30. At T = 2048 the ratio is 2.7-3.0x (the selection
and per-chunk calls weigh more).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .flops import FlopLedger
from .kernels import kv_groups
from .patterns import Selection, span

try:  # optional: the torch path is the reference and the fallback
    if os.environ.get("TASKLOC_NO_NUMBA"):
        raise ImportError("disabled by TASKLOC_NO_NUMBA")
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

COMPILED = numba is not None  # tests switch it off to compare the two paths
# Queries of one head per chunk on the compiled path, each with (Nc' + Nd') scores. A chunk computes
# every column and diagonal its last query reaches, so longer chunks compute more blocked pairs
# (columns late in the sequence, as real and positional inputs choose, reach few of its queries).
# Fastest of 8 at T = 8192, 8 heads, density 1/16 (Gaussian / positional inputs, ms): 64: 240 / 235,
# 128: 213 / 201, 256: 177 / 182, 512: 175 / 179, 1024: 203 / 192, 2048: 218 / 252; 256 and 512
# are within the machine's noise (an earlier round: 256: 181 / 177, 512: 195 / 197).
CHUNK_QUERIES = 256
# Gathered floats per chunk on the torch path (B x H x chunk x Nd x D), as sparse.CHUNK_FLOATS.
CHUNK_FLOATS = 1 << 22


def _sorted_indices(chosen: torch.Tensor, sentinel: int) -> torch.Tensor:
    """chosen (B, H, N) bool -> the chosen indices ascending (B, H, L), padded with ``sentinel``
    (L = the largest count over heads). Each chosen index goes to its rank among the chosen (a
    running count, no sort); the others all land on one spare slot, dropped."""
    n = chosen.shape[-1]
    width = max(1, int(chosen.sum(-1).max()))
    slot = torch.where(chosen, chosen.cumsum(-1) - 1, width)  # (B, H, N)
    out = torch.full((*chosen.shape[:-1], width + 1), sentinel, dtype=torch.int64, device=chosen.device)
    out.scatter_(-1, slot, torch.arange(n, device=chosen.device).expand_as(slot))
    return out[..., :width]


def pair_counts(cols: torch.Tensor, offsets: torch.Tensor, first: int, last: int) -> tuple[int, int]:
    """Exact (attended pairs, diagonal pairs with a key >= 0) for queries at positions
    first..last. cols (B, H, Nc) and offsets (B, H, Nd) ascending, padded with a sentinel beyond
    ``last``. A column c and an offset d meet at the query c + d: that pair is attended once, as a
    column's. Crossings are counted per column by two binary searches over the offsets (not as a
    (B, H, Nc, Nd) table, which long sequences at high density would make gigabytes)."""
    vertical = int(span(cols, first, last).sum())
    diagonal = int(span(offsets, first, last).sum())
    # per column c: the offsets d with first <= c + d <= last
    hi = torch.searchsorted(offsets.contiguous(), (last - cols).contiguous(), right=True)
    lo = torch.searchsorted(offsets.contiguous(), (first - cols).contiguous())
    twice = int((hi - lo).clamp(min=0).sum())
    return vertical + diagonal - twice, diagonal


def _gather_heads(x: torch.Tensor, idx: torch.Tensor, heads: int) -> torch.Tensor:
    """x (B, Hkv, T, D) at positions idx (B, H, ...) of each query head's key head -> (B, H, ..., D)."""
    b, h_kv, t, d = x.shape
    group = heads // h_kv
    head = torch.arange(heads, device=x.device) // group  # query head -> its key/value head
    rows = (torch.arange(b, device=x.device)[:, None] * h_kv + head[None, :]) * t  # (B, H)
    flat = (idx + rows.view(b, heads, *([1] * (idx.dim() - 2)))).reshape(-1)
    return x.reshape(b * h_kv * t, d).index_select(0, flat).view(*idx.shape, d)


def vertical_slash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, scale: float,
                             ledger: FlopLedger | None = None) -> torch.Tensor:
    """q (B, H, Tq, D); k, v (B, Hkv, Tk, D) -> (B, H, Tq, Dv): softmax attention over exactly
    ``sel``'s vertical-slash set (the element rule; ``sel.member`` is never built)."""
    h, t_q = q.shape[1], q.shape[2]
    t_k, dv = k.shape[2], v.shape[-1]
    kv_groups(q, k)
    k, v = k.contiguous(), v.contiguous()  # models pass strided views; rows are gathered from these
    first, last = t_k - t_q, t_k - 1  # absolute positions of the queries
    cols = _sorted_indices(sel.vert, t_k)  # (B, H, Nc); padding t_k lies after every query
    offsets = _sorted_indices(sel.slash, t_k)  # (B, H, Nd); padding t_k reaches before key 0
    safe = cols.clamp(max=t_k - 1)
    k_c, v_c = _gather_heads(k, safe, h), _gather_heads(v, safe, h)  # (B, H, Nc, D)
    compiled = (COMPILED and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
                and k.dtype == q.dtype and v.dtype == q.dtype
                and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))
    if compiled:
        out, computed = _compiled(q, k, v, k_c, v_c, cols, offsets, scale, first)
    else:
        out, computed = _torch(q, k, v, k_c, v_c, cols, offsets, sel.vert, scale, first)
    if ledger is not None:
        # the compiled path computes every diagonal pair with a key >= 0 (a crossing too, then blocked)
        attended, diagonal = pair_counts(cols, offsets, first, last)
        ledger.add(q.shape, t_k, dv, attended=attended, computed=computed + (diagonal if compiled else 0),
                   select_flops=sel.select_flops)
    return out


def _torch(q, k, v, k_c, v_c, cols, offsets, vert, scale, first):
    """The reference arithmetic with torch ops (any device, dtype, autograd). Returns (out, computed)."""
    b, h, t_q, d = q.shape
    n_d = offsets.shape[-1]
    step = max(1, CHUNK_FLOATS // (b * h * n_d * max(d, v.shape[-1])))
    starts = list(range(0, t_q, step))
    ends = torch.tensor([first + min(t_q, s + step) - 1 for s in starts], device=q.device)
    widths = _reached(cols, ends).amax((0, 1)).clamp(min=1).tolist()  # the columns any head needs per chunk
    heads = torch.arange(h, device=q.device)[None, :, None, None]
    batch = torch.arange(b, device=q.device)[:, None, None, None]
    acc = torch.promote_types(q.dtype, torch.float32)
    lowest = torch.finfo(q.dtype).min  # blocked pairs, as in the compiled path
    outs, computed = [], 0
    for s, width in zip(starts, widths):
        pos = torch.arange(first + s, first + min(t_q, s + step), device=q.device)  # (C,)
        qc = q[:, :, s : s + len(pos)] * scale  # (B, H, C, D): scores come out scaled, blocked ones stay finite
        c_score = (qc @ k_c[:, :, :width].transpose(-1, -2)).masked_fill(cols[:, :, None, :width] > pos[:, None], lowest)
        keys = pos[:, None] - offsets[:, :, None, :]  # (B, H, C, Nd)
        safe = keys.clamp(min=0)
        skip = (keys < 0) | vert[batch, heads, safe]
        k_d, v_d = _gather_heads(k, safe, h), _gather_heads(v, safe, h)  # (B, H, C, Nd, D)
        d_score = torch.einsum("bhcd,bhcnd->bhcn", qc, k_d).masked_fill(skip, lowest)
        probs = torch.softmax(torch.cat([c_score, d_score], -1), -1, dtype=acc).to(v.dtype)
        outs.append(probs[..., :width] @ v_c[:, :, :width] + torch.einsum("bhcn,bhcnd->bhcd", probs[..., width:], v_d))
        computed += b * h * len(pos) * (width + n_d)
    return torch.cat(outs, dim=2), computed


def _compiled(q, k, v, k_c, v_c, cols, offsets, scale, first):
    """The compiled path, one (batch, head) and a chunk of its queries at a time. A chunk's scores
    are one (C, Nc' + Nd') buffer, Nc' and Nd' the head's columns and diagonals that the chunk's
    last query reaches (both ascending, so prefixes; the rest would be blocked pairs): the columns'
    scores by a torch matmul, the diagonals' by a numba loop (which also blocks the columns past
    each query); then torch's softmax, a matmul for the columns' values and a numba loop adding the
    diagonals' values in place. Head by head (all chunks of one head, then the next), because the
    diagonal loops are bound by reading key and value rows: a head's rows stay in cache from one
    chunk to the next (at T = 8192, 5.3 ns a diagonal pair against 8.2 when each chunk took its
    queries from every head in turn). Returns (out, computed column pairs); the diagonal pairs
    computed are counted by the caller."""
    b, h, t_q, _d = q.shape
    group = h // k.shape[1]
    q = q.contiguous()
    k_c = k_c * scale  # the columns' scores come out scaled; the numba loop scales its own
    starts = list(range(0, t_q, CHUNK_QUERIES))
    ends = torch.tensor([first + min(t_q, s + CHUNK_QUERIES) - 1 for s in starts])
    widths = _reached(cols, ends).tolist()  # [B][H][chunks]: columns at or before each chunk's last query
    reach = _reached(offsets, ends).tolist()  # [B][H][chunks]: diagonals that reach it
    q_n, k_n, v_n = q.numpy(), k.numpy(), v.numpy()
    cols_n, offsets_n = cols.numpy(), offsets.numpy()
    # [score of a blocked pair (finite: exp gives exactly 0 and no NaN), 0, scale] in the inputs'
    # dtype: a Python float would make numba accumulate float32 dot products in float64 (1.5x slower)
    consts = np.array([torch.finfo(q.dtype).min, 0, scale], dtype=k_n.dtype)
    out = torch.empty(b, h, t_q, v.shape[-1], dtype=q.dtype)
    out_n = out.numpy()
    computed = 0
    for bi in range(b):
        for hi in range(h):
            q_h, k_h, v_h = q_n[bi, hi], k_n[bi, hi // group], v_n[bi, hi // group]  # (T, D) each
            for s, width, n_d in zip(starts, widths[bi][hi], reach[bi][hi]):
                c = min(CHUNK_QUERIES, t_q - s)
                scores = torch.empty(c, width + n_d, dtype=q.dtype)  # (C, Nc' + Nd')
                torch.matmul(q[bi, hi, s : s + c], k_c[bi, hi, :width].T, out=scores[:, :width])
                _diagonal_scores(q_h, k_h, offsets_n[bi, hi, :n_d], cols_n[bi, hi, :width], s, first, consts, scores.numpy())
                probs = torch.softmax(scores, -1)
                torch.matmul(probs[:, :width], v_c[bi, hi, :width], out=out[bi, hi, s : s + c])  # (C, Dv)
                _diagonal_values(probs.numpy(), v_h, offsets_n[bi, hi, :n_d], s, first, out_n[bi, hi])
                computed += c * width
    return out, computed


def _reached(sorted_idx: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """sorted_idx (B, H, N) ascending, ends (chunks,) -> (B, H, chunks): per head how many are <= each end."""
    flat = sorted_idx.flatten(0, 1).contiguous()  # (B*H, N)
    need = torch.searchsorted(flat, ends.expand(flat.shape[0], -1).contiguous(), right=True)  # (B*H, chunks)
    return need.view(*sorted_idx.shape[:2], -1)


# Queries per sub-block inside a chunk of the numba loops: a sub-block's q rows (64 x 256 B) and
# the key rows four neighbouring diagonals read stay in L1 (at T = 8192, 64 took the diagonal
# scores from 14 to 7.6 ns a pair with four diagonals per q row; 32 and 128 were slower).
SUB = 64


def _four_from(offsets, j, c0, c1, pos0):
    """In the sub-block of chunk queries [c0, c1) (positions pos0 + c), the first query from which
    diagonals j .. j + 3 all reach a key >= 0 (offsets ascending: the fourth is the farthest);
    c1, so none, when fewer than four diagonals are left. Queries before it go one diagonal at a time."""
    if j + 4 > offsets.shape[0]:
        return c1
    return min(c1, max(c0, offsets[j + 3] - pos0))


def _diagonal_scores_py(q, k, offsets, cols, s, first, consts, out):
    """One head, the chunk of queries s .. s + C (positions first + s + c): q (Tq, D), k (Tk, D),
    offsets (Nd',) and cols (Nc',) ascending. ``out`` (C, Nc' + Nd') holds the column scores in its
    first Nc' entries. Sets a column's score to ``lowest`` = consts[0] past the query, and
    out[c, Nc' + j] = scale x q[s + c] . k[first + s + c - offsets[j]], or ``lowest`` where that
    key is before 0 or is a column (found from the crossings of each column with the diagonals,
    after the dot products: a branch per pair would cost more than the few pairs it saves).
    Sub-blocks of SUB queries; within one, four diagonals at a time share each q row (loaded once
    for four dot products)."""
    n_c, n_w = out.shape
    n_j = offsets.shape[0]
    n_col = n_w - n_j
    lowest, zero, scale = consts[0], consts[1], consts[2]
    pos0 = first + s
    for c in range(n_c):
        for j in range(n_col - 1, -1, -1):  # ascending columns: those past the query are a suffix
            if cols[j] <= pos0 + c:
                break
            out[c, j] = lowest
    for j in range(n_j):  # keys before position 0
        for c in range(min(n_c, max(0, offsets[j] - pos0))):
            out[c, n_col + j] = lowest
    for c0 in range(0, n_c, SUB):
        c1 = min(n_c, c0 + SUB)
        for j in range(0, n_j, 4):
            start = _four_from(offsets, j, c0, c1, pos0)
            for c in range(start, c1):  # four dot products, each q element loaded once
                p = pos0 + c
                k0, k1, k2, k3 = p - offsets[j], p - offsets[j + 1], p - offsets[j + 2], p - offsets[j + 3]
                a0 = a1 = a2 = a3 = zero
                for e in range(q.shape[1]):
                    x = q[s + c, e]
                    a0 += x * k[k0, e]
                    a1 += x * k[k1, e]
                    a2 += x * k[k2, e]
                    a3 += x * k[k3, e]
                out[c, n_col + j] = a0 * scale
                out[c, n_col + j + 1] = a1 * scale
                out[c, n_col + j + 2] = a2 * scale
                out[c, n_col + j + 3] = a3 * scale
            for jj in range(j, min(j + 4, n_j)):  # the rest, one diagonal at a time
                for c in range(max(c0, offsets[jj] - pos0), start):
                    key = pos0 + c - offsets[jj]
                    acc = zero
                    for e in range(q.shape[1]):
                        acc += q[s + c, e] * k[key, e]
                    out[c, n_col + jj] = acc * scale
    for i in range(n_col):  # keys that are columns: counted there, so blocked here
        col = cols[i]  # it meets diagonal d at the query col + d, if that is in the chunk
        lo = np.searchsorted(offsets, pos0 - col)
        hi = np.searchsorted(offsets, pos0 + n_c - 1 - col, side="right")
        for j in range(lo, hi):
            out[col + offsets[j] - pos0, n_col + j] = lowest


def _diagonal_values_py(p, v, offsets, s, first, out):
    """One head: out[s + c] += sum_j p[c, Nc' + j] v[first + s + c - offsets[j]] over keys >= 0;
    p (C, Nc' + Nd') probabilities (0 where blocked), v (Tk, Dv), offsets (Nd',) ascending, out
    (Tq, Dv). Sub-blocks of SUB queries, four diagonals at a time: each out row is loaded and
    stored once per four value rows (half the time of one at a time, measured)."""
    n_c, n_w = p.shape
    n_j = offsets.shape[0]
    n_col = n_w - n_j
    n_e = v.shape[1]
    pos0 = first + s
    for c0 in range(0, n_c, SUB):
        c1 = min(n_c, c0 + SUB)
        for j in range(0, n_j, 4):
            start = _four_from(offsets, j, c0, c1, pos0)
            for c in range(start, c1):
                q_pos = pos0 + c
                k0, k1, k2, k3 = q_pos - offsets[j], q_pos - offsets[j + 1], q_pos - offsets[j + 2], q_pos - offsets[j + 3]
                w0, w1, w2, w3 = p[c, n_col + j], p[c, n_col + j + 1], p[c, n_col + j + 2], p[c, n_col + j + 3]
                for e in range(n_e):
                    out[s + c, e] += w0 * v[k0, e] + w1 * v[k1, e] + w2 * v[k2, e] + w3 * v[k3, e]
            for jj in range(j, min(j + 4, n_j)):  # the rest, one diagonal at a time
                dist = offsets[jj]
                for c in range(max(c0, dist - pos0), start):
                    w = p[c, n_col + jj]
                    key = pos0 + c - dist
                    for e in range(n_e):
                        out[s + c, e] += w * v[key, e]


if COMPILED:
    # fastmath: the dot products may be split across vector lanes (reassociation); no NaN or inf
    # assumptions (finite ``lowest`` marks blocked pairs, but inputs may hold anything).
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
    _four_from = _jit(_four_from)
    _diagonal_scores = _jit(_diagonal_scores_py)
    _diagonal_values = _jit(_diagonal_values_py)
else:  # pragma: no cover
    _diagonal_scores = _diagonal_values = None
