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
  is left out (-inf), so no pair counts twice;
* one softmax over both (max subtracted, the input's precision, float32 at least), then
  out = P_c @ V_c + sum_d P_d v_{p-d}.

Queries go in chunks so the score buffers stay near cache size. On CPU with numba (float32 or
float64, no gradient) the diagonal loops and the softmax are compiled (numba); elsewhere (CUDA,
half precision, autograd, numba missing) the same arithmetic runs as gathers and einsums, exact
but slower on CPU. Measured numbers: benchmarks/sparse_attention.py and sparse.py's docstring.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from .flops import FlopLedger
from .kernels import kv_groups
from .patterns import Selection

try:  # optional: the torch path is the reference and the fallback
    if os.environ.get("TASKLOC_NO_NUMBA"):
        raise ImportError("disabled by TASKLOC_NO_NUMBA")
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

COMPILED = numba is not None  # tests switch it off to compare the two paths
# Query-heads per chunk on the compiled path: (B * H * chunk) rows of scores, ~(Nc + Nd) floats each,
# stay within a few MB (measured: 256 queries x 8 heads was fastest of 64..1024 at T = 8192).
CHUNK_ROWS = 2048
# Gathered floats per chunk on the torch path (B x H x chunk x Nd x D), as sparse.CHUNK_FLOATS.
CHUNK_FLOATS = 1 << 22


def _sorted_indices(chosen: torch.Tensor, sentinel: int) -> torch.Tensor:
    """chosen (B, H, N) bool -> the chosen indices ascending (B, H, L), padded with ``sentinel``
    (L = the largest count over heads)."""
    n = chosen.shape[-1]
    width = max(1, int(chosen.sum(-1).max()))
    idx = torch.where(chosen, torch.arange(n, device=chosen.device), sentinel)
    return idx.sort(-1).values[..., :width]


def _span(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """How many query positions in [first, last] are >= x (elementwise, int64)."""
    return (last - x.clamp(min=first) + 1).clamp(min=0)


def pair_counts(cols: torch.Tensor, offsets: torch.Tensor, first: int, last: int) -> tuple[int, int]:
    """Exact (attended pairs, diagonal pairs computed) for queries at positions first..last.
    cols (B, H, Nc) and offsets (B, H, Nd), padded with a sentinel beyond ``last``. A diagonal pair
    is computed when its key is >= 0 and not a column; a column c and an offset d coincide at the
    query c + d."""
    vertical = int(_span(cols, first, last).sum())
    diagonal = int(_span(offsets, first, last).sum())
    meet = cols[..., :, None] + offsets[..., None, :]  # (B, H, Nc, Nd): the query where they coincide
    twice = int(((meet >= first) & (meet <= last)).sum())
    return vertical + diagonal - twice, diagonal - twice


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
        out, computed = _compiled(q, k, v, k_c, v_c, cols, offsets, sel.vert, scale, first)
    else:
        out, computed = _torch(q, k, v, k_c, v_c, cols, offsets, sel.vert, scale, first)
    if ledger is not None:
        attended, diagonal = pair_counts(cols, offsets, first, last)
        ledger.add(q.shape, t_k, dv, attended=attended, computed=computed + (diagonal if compiled else 0),
                   select_flops=sel.select_flops)
    return out


def _column_widths(cols: torch.Tensor, ends: torch.Tensor) -> list[int]:
    """For chunks ending at positions ``ends`` (N,), the columns any head needs: max count <= end."""
    flat = cols.flatten(0, 1).contiguous()  # (B*H, Nc) ascending
    need = torch.searchsorted(flat, ends.expand(flat.shape[0], -1).contiguous(), right=True)  # (B*H, N)
    return need.amax(0).clamp(min=1).tolist()


def _torch(q, k, v, k_c, v_c, cols, offsets, vert, scale, first):
    """The reference arithmetic with torch ops (any device, dtype, autograd). Returns (out, computed)."""
    b, h, t_q, d = q.shape
    n_d = offsets.shape[-1]
    step = max(1, CHUNK_FLOATS // (b * h * n_d * max(d, v.shape[-1])))
    starts = list(range(0, t_q, step))
    ends = torch.tensor([first + min(t_q, s + step) - 1 for s in starts], device=q.device)
    widths = _column_widths(cols, ends)
    heads = torch.arange(h, device=q.device)[None, :, None, None]
    batch = torch.arange(b, device=q.device)[:, None, None, None]
    acc = torch.promote_types(q.dtype, torch.float32)
    outs, computed = [], 0
    for s, width in zip(starts, widths):
        pos = torch.arange(first + s, first + min(t_q, s + step), device=q.device)  # (C,)
        qc = q[:, :, s : s + len(pos)]  # (B, H, C, D)
        c_score = (qc @ k_c[:, :, :width].transpose(-1, -2)).masked_fill(cols[:, :, None, :width] > pos[:, None], -math.inf)
        keys = pos[:, None] - offsets[:, :, None, :]  # (B, H, C, Nd)
        safe = keys.clamp(min=0)
        skip = (keys < 0) | vert[batch, heads, safe]
        k_d, v_d = _gather_heads(k, safe, h), _gather_heads(v, safe, h)  # (B, H, C, Nd, D)
        d_score = torch.einsum("bhcd,bhcnd->bhcn", qc, k_d).masked_fill(skip, -math.inf)
        probs = torch.softmax(torch.cat([c_score, d_score], -1) * scale, -1, dtype=acc)
        probs = probs.nan_to_num(0.0).to(v.dtype)  # a query with nothing allowed: zeros, as compiled
        outs.append(probs[..., :width] @ v_c[:, :, :width] + torch.einsum("bhcn,bhcnd->bhcd", probs[..., width:], v_d))
        computed += b * h * len(pos) * (width + n_d)
    return torch.cat(outs, dim=2), computed


def _compiled(q, k, v, k_c, v_c, cols, offsets, vert, scale, first):
    """The compiled path: column matmuls by torch, diagonals and softmax by numba kernels, in place.
    Returns (out, computed column pairs); the diagonal pairs computed are counted by the caller."""
    b, h, t_q, _d = q.shape
    step = max(1, CHUNK_ROWS // (b * h))
    starts = list(range(0, t_q, step))
    ends = torch.tensor([first + min(t_q, s + step) - 1 for s in starts])
    widths = _column_widths(cols, ends)
    k_n, v_n = k.contiguous().numpy(), v.contiguous().numpy()  # (B, Hkv, Tk, D): rows read in place
    offsets_n, cols_n = offsets.numpy(), cols.numpy()
    vert_n = vert.contiguous().numpy()
    consts = _constants(scale, k_n.dtype)
    out = torch.empty(b, h, t_q, v.shape[-1], dtype=q.dtype)
    computed = 0
    for s, width in zip(starts, widths):
        c = min(step, t_q - s)
        qc = q[:, :, s : s + c].contiguous()  # (B, H, C, D)
        c_score = qc @ k_c[:, :, :width].transpose(-1, -2)  # (B, H, C, Nc'): unscaled
        d_score = np.empty((b, h, c, offsets.shape[-1]), dtype=qc.numpy().dtype)
        _diagonal_scores(qc.numpy(), k_n, offsets_n, vert_n, first + s, consts, d_score)
        _joint_softmax(c_score.numpy(), cols_n, d_score, first + s, consts)  # both become probabilities, in place
        chunk = c_score @ v_c[:, :, :width]  # (B, H, C, Dv)
        _diagonal_values(d_score, v_n, offsets_n, first + s, chunk.numpy())
        out[:, :, s : s + c] = chunk
        computed += b * h * c * width
    return out, computed


# The compiled loops take their float constants from ``consts`` = [scale, -inf, 0, 1] in the
# inputs' dtype: a Python float literal would promote float32 arithmetic (and exp) to float64.
def _constants(scale: float, dtype: np.dtype) -> np.ndarray:
    return np.array([scale, -np.inf, 0, 1], dtype=dtype)


def _diagonal_scores_py(q, k, offsets, vert, pos0, consts, out):
    """out[b, h, c, j] = q[b, h, c] . k[b, h // G, pos0 + c - offsets[b, h, j]], -inf where that key
    is before 0 or is a column (vert). Diagonal-major: each diagonal's keys are read in order."""
    n_b, n_h, n_c, n_e = q.shape
    group = n_h // k.shape[1]
    for b in range(n_b):
        for h in range(n_h):
            kh, vh, qh = k[b, h // group], vert[b, h], q[b, h]
            for j in range(offsets.shape[2]):
                dist = offsets[b, h, j]
                for c in range(n_c):
                    key = pos0 + c - dist
                    if key < 0 or vh[key]:
                        out[b, h, c, j] = consts[1]
                    else:
                        acc = consts[2]
                        for e in range(n_e):
                            acc += qh[c, e] * kh[key, e]
                        out[b, h, c, j] = acc


def _joint_softmax_py(col, cols, diag, pos0, consts):
    """In place: each query's column scores col[b, h, c] (-> -inf past the query) and diagonal
    scores diag[b, h, c], times scale, softmaxed together (max subtracted); a query with nothing
    allowed gets zeros."""
    n_b, n_h, n_c, n_col = col.shape
    scale, lowest = consts[0], consts[1]
    for b in range(n_b):
        for h in range(n_h):
            for c in range(n_c):
                pos = pos0 + c
                top = lowest
                for j in range(n_col):
                    if cols[b, h, j] > pos:
                        col[b, h, c, j] = lowest
                    else:
                        top = max(top, col[b, h, c, j] * scale)
                for j in range(diag.shape[3]):
                    top = max(top, diag[b, h, c, j] * scale)
                if top == lowest:
                    col[b, h, c, :] = 0
                    diag[b, h, c, :] = 0
                    continue
                total = consts[2]
                for j in range(n_col):
                    w = np.exp(col[b, h, c, j] * scale - top)
                    col[b, h, c, j] = w
                    total += w
                for j in range(diag.shape[3]):
                    w = np.exp(diag[b, h, c, j] * scale - top)
                    diag[b, h, c, j] = w
                    total += w
                inv = consts[3] / total
                for j in range(n_col):
                    col[b, h, c, j] *= inv
                for j in range(diag.shape[3]):
                    diag[b, h, c, j] *= inv


def _diagonal_values_py(p, v, offsets, pos0, out):
    """out[b, h, c] += sum_j p[b, h, c, j] v[b, h // G, pos0 + c - offsets[b, h, j]] (keys >= 0)."""
    n_b, n_h, n_c, n_j = p.shape
    group = n_h // v.shape[1]
    for b in range(n_b):
        for h in range(n_h):
            vh, ph, oh = v[b, h // group], p[b, h], out[b, h]
            for j in range(n_j):
                dist = offsets[b, h, j]
                for c in range(max(0, dist - pos0), n_c):
                    w = ph[c, j]
                    if w != 0:
                        key = pos0 + c - dist
                        for e in range(vh.shape[1]):
                            oh[c, e] += w * vh[key, e]


if COMPILED:
    # fastmath: the 64-term dot products may be split across vector lanes (reassociation); no NaN
    # or inf flags, since -inf marks skipped pairs.
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
    _diagonal_scores = _jit(_diagonal_scores_py)
    _joint_softmax = _jit(_joint_softmax_py)
    _diagonal_values = _jit(_diagonal_values_py)
else:  # pragma: no cover
    _diagonal_scores = _joint_softmax = _diagonal_values = None
