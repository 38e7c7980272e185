"""Sparse attention kernels: a pattern's Selection computed at a cost that shrinks with density.

Three backends compute the same attended set:

* ``gather`` (default):
  - whole-block prefill (block-sparse): each row of queries gathers its key blocks with its
    diagonal block last, so the causal rule is one lower-right triangle, and all rows go through
    SDPA's fused kernel as one batch (``block_attention``);
  - vertical-slash (no caller mask, no hook): its own kernel (vertical_slash.py), the chosen
    columns as one narrow matmul and the chosen diagonals pair by pair, one joint softmax: work =
    the attended pairs (plus the columns past a chunk's first query and the diagonal pairs whose key
    is a column), however the diagonals scatter;
  - any other key list (sliding windows, top-k, Quest pages, decode steps of the other patterns,
    a caller's mask or a hook): rows are attended in chunks, each chunk gathering its rows' key lists padded to its own
    longest one, with the element rule and the caller's mask applied at the gathered keys. Work =
    rows x (chunk's longest list) x D, counted exactly in the ledger (``computed``): it shrinks with
    density only as far as the key lists do.
* ``key-lists``: as ``gather``, but vertical-slash also goes through key lists (its path before
  it had its own kernel, kept for comparison): it pays for every key a row's diagonals reach (a
  block of 64 queries on one diagonal reaches 64 keys for 64 attended pairs spread over 64
  queries), so scattered diagonals cost near-dense (computed/attended 23-26 on Gaussian inputs).
* ``flex``: PyTorch's ``flex_attention`` (compiled) with a BlockMask built from the key lists at
  block granularity; it skips whole key blocks, so it shrinks only when the kept keys are
  block-aligned (block-sparse), and the element rule is applied by a mask function.

``benchmarks/sparse_attention.py`` times them against SDPA; DEFAULT_BACKEND is the one that won
there (numbers below). At density 1 every kernel is the dense kernel itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .flops import FlopLedger
from .kernels import ATTENTION, PatternSite, dense_attention, grouped_values
from .patterns import PatternSpec, Selection, per_head, query_positions, select
from .vertical_slash import vertical_slash_attention

# Measured on CPU, 1 thread, a shared 2-core machine (benchmarks/sparse_attention.py, density 1/16,
# block 64, 8 heads x 64, fastest of 7, --clock cpu, 2026-12-01 14:20): at 8192, block-sparse gather
# 6.3x over SDPA on Gaussian inputs, 6.7x with a positional code (attending 0.069 of the causal
# pairs: the budget nearest 1/16 in whole blocks per row); vertical-slash (its own kernel),
# attending 0.0626, 4.6x / 5.2x; at 2048 block-sparse 3.4x / 4.4x (the forced first and diagonal
# blocks alone are 0.092 there) and vertical-slash 3.0x / 2.7x, where the fixed costs (selection,
# per-chunk calls) weigh more. flex (14:13 run): block-sparse 3.5x / 4.0x at 8192, vertical-slash
# 0.15x / 0.19x (its element rule is a mask function over whole blocks), and flex compiles per
# shape (seconds to minutes on the first call), so gather is the default; flex is opt-in. Through
# key lists (backend="key-lists") vertical-slash was 0.73x at 8192 (computed/attended 23-26).
DEFAULT_BACKEND = "gather"
BACKENDS = ("gather", "key-lists", "flex")


def _row_view(x: torch.Tensor, rows: int, n_rows: int) -> torch.Tensor:
    """(B, H, Tq, ...) -> (B, H, R, rows, ...), padding the last row with zeros."""
    pad = n_rows * rows - x.shape[2]
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
    return x.view(*x.shape[:2], n_rows, rows, *x.shape[3:])


def key_lists(member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's chosen keys in ascending order, padded: idx (B, H, R, L) and valid (B, H, R, L).
    A running count places each chosen key (one cumsum, no sort); padding points at key 0."""
    counts = member.sum(-1, keepdim=True)  # (B, H, R, 1)
    width = max(1, int(counts.max()))
    slot = (member.cumsum(-1) - 1).masked_fill_(~member, width)  # (B, H, R, Tk): place in the list
    keys = torch.arange(member.shape[-1], device=member.device).expand_as(slot)
    idx = torch.zeros(*member.shape[:3], width + 1, dtype=torch.long, device=member.device)
    idx.scatter_(-1, slot, keys)  # unchosen keys all land in the spare last slot
    idx = idx[..., :width]
    valid = torch.arange(width, device=member.device) < counts
    return idx.masked_fill_(~valid, 0), valid


def gather_rows(x: torch.Tensor, idx: torch.Tensor, unit: int = 1) -> torch.Tensor:
    """x (B, H, T, D) at indices idx (B, H, R, L) of units of ``unit`` positions -> (B, H, R, L*unit, D).
    One index_select over flattened (batch, head, unit) rows: contiguous copies, the fast path."""
    b, h, t, d = x.shape
    units = t // unit
    base = (torch.arange(b * h, device=x.device) * units).view(b, h, 1, 1)
    flat = x.reshape(b * h * units, unit * d).index_select(0, (idx + base).reshape(-1))
    return flat.view(b, h, idx.shape[2], idx.shape[3] * unit, d)


# Gathered keys per chunk of rows, in floats (B x H x rows-in-chunk x width x D): chunks keep the
# gathered copies near cache size and pad each chunk only to its own longest key list (under the
# causal rule key lists grow along the sequence, so one width for all rows would double the work).
CHUNK_FLOATS = 1 << 22


def _keys_of(sel: Selection, t_k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each row's keys as idx, valid (B, H, R, L) in units of ``unit`` positions, and the unit."""
    if sel.blocks is not None and t_k % sel.unit == 0:
        return (*sel.blocks, sel.unit)  # whole key blocks: gather blocks, not keys
    return (*key_lists(sel.member), 1)


# Gathered key floats per chunk of rows in block_attention (B x H x rows x blocks x unit x D). One
# gather of every row's blocks (84 MB each for K and V at T = 8192, density 1/16) cost as much as
# the attention, in fresh memory on every call; chunks stay in cache and their buffers are reused.
# Fastest of 6 there (ms): 2^18: 186, 2^19: 168, 2^20: 184, 2^21: 225, 2^22: 208, unchunked: 294.
BLOCK_CHUNK_FLOATS = 1 << 19


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, scale: float,
                    ledger: FlopLedger | None = None) -> torch.Tensor | None:
    """Prefill over whole blocks with the diagonal block in each list (block-sparse): each row's
    blocks are gathered with its diagonal block last, so the causal rule is the lower-right
    triangle of one (rows, L) mask and the rows go through SDPA's fused kernel as a batch
    (no (rows, L) score tensor, no full-size mask). None when the Selection is not of that form."""
    b, h, t_q, d = q.shape
    t_k = k.shape[2]
    if sel.blocks is None or sel.vert is not None or sel.unit != sel.rows or t_q != t_k or t_k % sel.unit:
        return None
    ids, valid = sel.blocks  # (B, H, R, K): ascending ids, then padding
    n_rows, width = ids.shape[2], ids.shape[3]
    count = valid.sum(-1, keepdim=True)  # (B, H, R, 1)
    slot = torch.arange(width, device=q.device)
    ids = ids.gather(-1, (slot + count) % width)  # right-aligned: padding first, the largest id last
    valid = slot >= width - count
    if not torch.equal(ids[..., -1], torch.arange(n_rows, device=q.device).expand(b, h, n_rows)):
        return None  # some row lacks its diagonal block: the triangle rule would not hold
    unit = sel.unit
    tri = torch.ones(unit, unit, dtype=torch.bool, device=q.device).tril()  # (rows, unit): key u <= query i
    per_row = bool((valid == valid[:1, :1]).all())  # padding depends on the row only (fixed budgets)
    vmask = valid[:1, :1] if per_row else valid  # (B' , H', R, K)
    allowed = vmask[..., None, :, None].expand(*vmask.shape[:3], unit, width, unit).clone()
    allowed[..., -1, :] &= tri  # (B', H', R, rows, K, unit): the diagonal block is causal
    allowed = allowed.flatten(-2)  # (B', H', R, rows, L)
    kh, vh = per_head(k, h), per_head(v, h)
    lw, dv = width * unit, v.shape[-1]
    mask = allowed.flatten(0, 1) if not per_row else allowed[0]  # (B*H or 1, R, rows, L)
    qr = q.reshape(b * h, n_rows, unit, d)
    out = q.new_empty(b * h, n_rows, unit, dv)
    step = max(1, BLOCK_CHUNK_FLOATS // (b * h * lw * d))  # rows per chunk
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        kg, vg = gather_rows(kh, ids[:, :, r0:r1], unit), gather_rows(vh, ids[:, :, r0:r1], unit)  # (B, H, r, L, D)
        out[:, r0:r1] = F.scaled_dot_product_attention(qr[:, r0:r1], kg.view(b * h, r1 - r0, lw, d),
                                                       vg.view(b * h, r1 - r0, lw, dv), attn_mask=mask[:, r0:r1],
                                                       scale=scale)
    if ledger is not None:
        attended = int(allowed.sum()) * (b * h if per_row else 1)
        ledger.add(q.shape, t_k, dv, attended=attended, computed=b * h * t_q * lw, select_flops=sel.select_flops)
    return out.view(b, h, t_q, dv)


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, mask: torch.Tensor | None,
                       scale: float, pattern_site: PatternSite, ledger: FlopLedger | None = None) -> torch.Tensor:
    """Attend each row's gathered key list, chunk by chunk of rows. q (B, H, Tq, D); k, v (B, Hkv,
    Tk, D) -> (B, H, Tq, Dv). The element rule (vertical-slash, sliding window) and the caller's
    mask are applied at the gathered keys; without a hook SDPA's fused kernel attends each chunk."""
    b, h, t_q, d = q.shape
    t_k, dv = k.shape[2], v.shape[-1]
    if mask is None and not pattern_site.active:
        out = block_attention(q, k, v, sel, scale, ledger)
        if out is not None:
            return out
    n_rows, rows = sel.member.shape[2], sel.rows
    kh, vh = per_head(k, h), per_head(v, h)  # (B, H, Tk, D): views' copies only under GQA
    ids, ids_valid, unit = _keys_of(sel, t_k)  # (B, H, R, K) units of ``unit`` keys
    counts = ids_valid.sum(-1)  # (B, H, R)
    qr = _row_view(q, rows, n_rows)  # (B, H, R, rows, D)
    qpos_all = _row_view(query_positions(t_q, t_k, q.device)[None, None], rows, n_rows)[0, 0]  # (R, rows)
    full = None if mask is None else _row_view(mask.expand(b, h, t_q, t_k), rows, n_rows)  # (B, H, R, rows, Tk)
    lowest_dtype = q.dtype  # SDPA takes a float mask in the queries' dtype
    lowest = torch.finfo(lowest_dtype).min
    step = max(1, CHUNK_FLOATS // (b * h * max(1, int(counts.max())) * unit * max(d, dv)))  # rows per chunk
    outs, patterns, attended, computed = [], [], 0, 0
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        width = max(1, int(counts[:, :, r0:r1].max()))
        idx_u = ids[:, :, r0:r1, :width]  # (B, H, Rc, Kc)
        kg, vg = gather_rows(kh, idx_u, unit), gather_rows(vh, idx_u, unit)  # (B, H, Rc, Lc, D)
        if unit > 1:
            idx = (idx_u[..., None] * unit + torch.arange(unit, device=q.device)).flatten(-2)
            valid = ids_valid[:, :, r0:r1, :width].repeat_interleave(unit, dim=-1)
        else:
            idx, valid = idx_u, ids_valid[:, :, r0:r1, :width]
        qpos = qpos_all[r0:r1]  # (Rc, rows)
        keys = idx[..., None, :]  # (B, H, Rc, 1, Lc)
        allowed = valid[..., None, :] & (keys <= qpos[..., None])  # (B, H, Rc, rows, Lc)
        if sel.vert is not None:
            offset = (qpos[..., None] - keys).clamp_(min=0)  # (B, H, Rc, rows, Lc)
            allowed &= torch.gather(sel.vert[:, :, None, :].expand(b, h, r1 - r0, t_k), -1, idx)[..., None, :] | (
                torch.gather(sel.slash[:, :, None, :].expand(b, h, r1 - r0, t_k), -1, offset.flatten(-2))
                .view_as(offset))
        bias = None
        if full is not None:
            picked = torch.gather(full[:, :, r0:r1], -1, keys.expand(b, h, r1 - r0, rows, idx.shape[-1]))
            if picked.dtype == torch.bool:
                allowed &= picked
            else:
                bias = picked.to(lowest_dtype)
        attended += int(allowed.flatten(2, 3)[:, :, : min(t_q, r1 * rows) - r0 * rows].sum())
        computed += b * h * (r1 - r0) * rows * idx.shape[-1]  # padding rows and slots are multiplied too
        if not pattern_site.active:
            # Blocked pairs hold the lowest finite number, not -inf: a row with nothing allowed
            # (a padding query) comes out uniform and finite, as in the dense kernel.
            add = (torch.zeros(allowed.shape, dtype=lowest_dtype, device=q.device) if bias is None else bias)
            add = add.masked_fill(~allowed, lowest)
            o = F.scaled_dot_product_attention(qr[:, :, r0:r1].flatten(0, 1), kg.flatten(0, 1), vg.flatten(0, 1),
                                               attn_mask=add.flatten(0, 1), scale=scale)
            outs.append(o.view(b, h, r1 - r0, rows, dv))
            continue
        scores = (qr[:, :, r0:r1] * scale) @ kg.transpose(-1, -2)  # (B, H, Rc, rows, Lc)
        if bias is not None:
            scores = scores + bias.to(scores.dtype)
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
        dense = torch.zeros(b, h, r1 - r0, rows, t_k, dtype=probs.dtype, device=q.device)
        # add, not assign: padding repeats a key, and its zero must not overwrite the real weight
        dense.scatter_add_(-1, keys.expand_as(probs), probs.masked_fill(~allowed, 0))
        patterns.append(dense)
    if ledger is not None:
        ledger.add(q.shape, t_k, dv, attended=attended, computed=computed, select_flops=sel.select_flops)
    if pattern_site.active:  # hooks read and edit the dense pattern
        return grouped_values(pattern_site(torch.cat(patterns, dim=2).flatten(2, 3)[:, :, :t_q]), v)
    return torch.cat(outs, dim=2).flatten(2, 3)[:, :, :t_q]  # (B, H, Tq, Dv)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def flex_block_mask(sel: Selection, t_k: int):
    """The Selection as flex_attention's BlockMask: key blocks of ``sel.rows`` positions; blocks
    wholly inside a key list and below the diagonal are 'full' (no mask function evaluated)."""
    from torch.nn.attention.flex_attention import BlockMask

    rows = sel.rows
    b, h, n_rows, _ = sel.member.shape
    blocks = sel.member.view(b, h, n_rows, t_k // rows, rows)
    any_key = blocks.any(-1)  # (B, H, R, N)
    below = torch.arange(t_k // rows, device=blocks.device)[None, :] < torch.arange(n_rows, device=blocks.device)[:, None]
    full = blocks.all(-1) & below if sel.vert is None else torch.zeros_like(any_key)
    partial = any_key & ~full
    member, vert, slash = sel.member, sel.vert, sel.slash

    def mask_mod(bb, hh, qi, ki):
        ok = member[bb, hh, qi // rows, ki] & (ki <= qi)
        if vert is not None:
            ok = ok & (vert[bb, hh, ki] | slash[bb, hh, (qi - ki).clamp(min=0)])
        return ok

    def lists(chosen):
        return chosen.sum(-1).to(torch.int32), torch.argsort(chosen.to(torch.uint8), dim=-1, descending=True,
                                                             stable=True).to(torch.int32)

    kv_num, kv_idx = lists(partial)
    full_num, full_idx = lists(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=rows, mask_mod=mask_mod)


def flex_attention_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, scale: float) -> torch.Tensor:
    """flex_attention over the Selection's blocks (prefill: Tq == Tk, whole blocks)."""
    gqa = q.shape[1] != k.shape[1]
    return _compiled_flex()(q, k, v, block_mask=flex_block_mask(sel, k.shape[2]), scale=scale, enable_gqa=gqa)


@dataclass
class SparseAttention:
    """An AttentionKernel (see kernels.py) that attends only what ``spec``'s pattern selects.

    ``ledger``, when set, accumulates the exact attended and computed pairs of every call.
    ``flex`` is used only where it applies (prefill, whole blocks, no extra mask, no hook)."""

    spec: PatternSpec
    backend: str = DEFAULT_BACKEND
    ledger: FlopLedger | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.spec.check()
        if self.backend not in BACKENDS:
            from ..errors import ConfigError

            raise ConfigError(f"attention backend={self.backend!r} is not one of {', '.join(BACKENDS)}.")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern_site: PatternSite,
                 mask: torch.Tensor | None = None, *, causal: bool = True, scale: float | None = None) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if self.spec.density >= 1:  # the dense fallback: exactly the dense kernel
            if self.ledger is not None:
                self.ledger.add_dense(q.shape, k.shape[2], v.shape[-1])
            return dense_attention(q, k, v, pattern_site, mask, causal=causal, scale=scale)
        sel = select(self.spec, q, k, scale)
        t_q, t_k = q.shape[2], k.shape[2]
        fused = mask is None and not pattern_site.active  # no caller mask to apply, no hook to show the pattern
        if self.backend == "flex" and t_q == t_k and t_k % sel.rows == 0 and fused and self.ledger is None:
            return flex_attention_sparse(q, k, v, sel, scale)
        if self.backend == "gather" and self.spec.name == "vertical-slash" and fused:
            return vertical_slash_attention(q, k, v, sel, scale, self.ledger)
        return gathered_attention(q, k, v, sel, mask, scale, pattern_site, self.ledger)


def sparse_kernel(name: str, density: float = 1.0, backend: str = DEFAULT_BACKEND, **settings) -> SparseAttention:
    """The kernel for pattern ``name`` at ``density`` (other PatternSpec settings by keyword)."""
    return SparseAttention(PatternSpec(name, density, **settings), backend)


# Each pattern under a registry name at density 1/8, so a model config can name it
# (``model.attention = "sparse:quest"``); other densities come from sparse_kernel().
REGISTERED_DENSITY = 0.125
for _name in ("sliding-window", "block-sparse", "vertical-slash", "top-k", "quest"):
    ATTENTION.register(f"sparse:{_name}")(sparse_kernel(_name, REGISTERED_DENSITY))
