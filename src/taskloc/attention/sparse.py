"""Sparse attention kernels: a pattern's Selection computed at a cost that shrinks with density.

Two backends compute the same attended set:

* ``gather``: each row of queries gathers its key list (B, H, R, L, D) and attends it with
  batched matmuls, so the work is R x rows x L x D with L = the longest key list: it scales with
  density for any key list (columns, diagonals, blocks, pages).
* ``flex``: PyTorch's ``flex_attention`` (compiled) with a BlockMask built from the key lists at
  block granularity; it skips whole key blocks, so it shrinks only when the kept keys are
  block-aligned (block-sparse), and the element rule is applied by a mask function.

``benchmarks/sparse_attention.py`` times both against SDPA; DEFAULT_BACKEND is the one that won
there (see its docstring for the numbers). At density 1 every kernel is the dense kernel itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .flops import FlopLedger
from .kernels import ATTENTION, PatternSite, dense_attention, grouped_values
from .patterns import PatternSpec, Selection, per_head, query_positions, select

# Measured on CPU, 1 thread, a heavily shared 2-core machine (benchmarks/sparse_attention.py, density
# 1/16, block 64, 8 heads x 64): block-sparse gather 2.4x / flex 2.0x over SDPA at 8192 and 5.9x..80x /
# 63x at 2048 (noisy); vertical-slash gather 4.7x / flex 6.9x at 2048, gather 0.32x at 8192. flex must
# compile per shape (15-900 s first call), so gather is the default; flex is opt-in (backend="flex").
DEFAULT_BACKEND = "gather"
BACKENDS = ("gather", "flex")


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


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, mask: torch.Tensor | None,
                       scale: float, pattern_site: PatternSite, ledger: FlopLedger | None = None) -> torch.Tensor:
    """Attend each row's gathered key list. q (B, H, Tq, D); k, v (B, Hkv, Tk, D) -> (B, H, Tq, Dv)."""
    b, h, t_q, _d = q.shape
    t_k = k.shape[2]
    n_rows, rows = sel.member.shape[2], sel.rows
    kh, vh = per_head(k, h), per_head(v, h)  # (B, H, Tk, D): views' copies only under GQA
    if sel.blocks is not None and t_k % sel.unit == 0:
        # Whole key blocks: gather blocks, not keys (L/unit contiguous copies per row).
        block_idx, block_valid = sel.blocks  # (B, H, R, K)
        kg, vg = gather_rows(kh, block_idx, sel.unit), gather_rows(vh, block_idx, sel.unit)  # (B, H, R, L, D)
        pos = block_idx[..., None] * sel.unit + torch.arange(sel.unit, device=q.device)
        idx = pos.flatten(-2)  # (B, H, R, L)
        valid = block_valid.repeat_interleave(sel.unit, dim=-1)
    else:
        idx, valid = key_lists(sel.member)
        kg, vg = gather_rows(kh, idx), gather_rows(vh, idx)
    width = idx.shape[-1]
    qr = _row_view(q * scale, rows, n_rows)  # (B, H, R, rows, D): scaled before, Tq x D not Tq x L
    scores = qr @ kg.transpose(-1, -2)  # (B, H, R, rows, L)
    qpos = _row_view(query_positions(t_q, t_k, q.device)[None, None], rows, n_rows)[0, 0]  # (R, rows)
    keys = idx[..., None, :]  # (B, H, R, 1, L)
    allowed = valid[..., None, :] & (keys <= qpos[..., None])
    if sel.vert is not None:
        bi = torch.arange(b, device=q.device)[:, None, None, None]
        hi = torch.arange(h, device=q.device)[None, :, None, None]
        offset = (qpos[..., None] - keys).clamp_(min=0)  # (B, H, R, rows, L)
        allowed &= sel.vert[bi, hi, idx][..., None, :] | torch.gather(
            sel.slash[:, :, None, None, :].expand(b, h, n_rows, rows, t_k), -1, offset)
    if mask is not None:
        full = _row_view(mask.expand(b, h, t_q, t_k), rows, n_rows)  # (B, H, R, rows, Tk)
        scores = _masked(scores, allowed, torch.gather(full, -1, keys.expand(b, h, n_rows, rows, width)))
    scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    if ledger is not None:
        ledger.add(q.shape, t_k, v.shape[-1], attended=int(allowed.flatten(2, 3)[:, :, :t_q].sum()),
                   computed=int(valid.sum()) * rows, select_flops=sel.select_flops)
    if pattern_site.active:  # hooks read and edit the dense pattern: scatter the rows back
        dense = torch.zeros(b, h, n_rows, rows, t_k, dtype=probs.dtype, device=q.device)
        # add, not assign: padding repeats a key, and its zero must not overwrite the real weight
        dense.scatter_add_(-1, keys.expand(b, h, n_rows, rows, width), probs.masked_fill(~allowed, 0))
        return grouped_values(pattern_site(dense.flatten(2, 3)[:, :, :t_q]), v)
    return (probs @ vg).flatten(2, 3)[:, :, :t_q]  # (B, H, Tq, Dv)



def _masked(scores: torch.Tensor, allowed: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """Apply the caller's mask at the gathered keys: a boolean mask narrows ``allowed`` (in
    place), an additive one is added to the scores."""
    if picked.dtype == torch.bool:
        allowed &= picked
        return scores
    return scores + picked.to(scores.dtype)

def line_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: Selection, mask: torch.Tensor | None,
                   scale: float, pattern_site: PatternSite, ledger: FlopLedger | None = None) -> torch.Tensor:
    """Vertical-slash exactly: every query attends the chosen columns (one matmul against the
    gathered columns) and its own key on each chosen diagonal (gathered per query), one softmax
    over both. Work: Tq x (Nv + Ns) x D, whatever the diagonals' spread."""
    b, h, t_q, _d = q.shape
    t_k = k.shape[2]
    cols, offs = sel.lines  # (B, H, Nv), (B, H, Ns)
    kh, vh = per_head(k, h), per_head(v, h)
    qpos = query_positions(t_q, t_k, q.device)  # (Tq,)
    vert_ok = sel.vert.gather(-1, cols)  # (B, H, Nv): False where topk padded with unchosen ids
    slash_ok = sel.slash.gather(-1, offs)
    kc, vc = gather_rows(kh, cols[:, :, None]), gather_rows(vh, cols[:, :, None])  # (B, H, 1, Nv, D)
    qs = q * scale
    s_col = qs @ kc[:, :, 0].transpose(-1, -2)  # (B, H, Tq, Nv)
    ok_col = vert_ok[:, :, None, :] & (cols[:, :, None, :] <= qpos[:, None])
    on_diag = qpos[:, None] - offs[:, :, None, :]  # (B, H, Tq, Ns): each query's key on each diagonal
    ok_diag = slash_ok[:, :, None, :] & (on_diag >= 0)
    on_diag = on_diag.clamp_(min=0)
    ok_diag &= ~sel.vert.gather(-1, on_diag.flatten(2)).view_as(on_diag)  # a column key counts once
    kd, vd = gather_rows(kh, on_diag), gather_rows(vh, on_diag)  # (B, H, Tq, Ns, D)
    s_diag = (qs[:, :, :, None, :] @ kd.transpose(-1, -2)).squeeze(-2)  # (B, H, Tq, Ns): batched, no product tensor
    scores = torch.cat([s_col, s_diag], dim=-1)
    keys = torch.cat([cols[:, :, None, :].expand_as(s_col), on_diag], dim=-1)  # (B, H, Tq, Nv + Ns)
    allowed = torch.cat([ok_col, ok_diag], dim=-1)
    if mask is not None:
        scores = _masked(scores, allowed, torch.gather(mask.expand(b, h, t_q, t_k), -1, keys))
    scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    if ledger is not None:
        pairs = int(allowed.sum())
        ledger.add(q.shape, t_k, v.shape[-1], attended=pairs, computed=b * h * t_q * keys.shape[-1],
                   select_flops=sel.select_flops)
    if pattern_site.active:
        dense = torch.zeros(b, h, t_q, t_k, dtype=probs.dtype, device=q.device)
        dense.scatter_add_(-1, keys, probs.masked_fill(~allowed, 0))
        return grouped_values(pattern_site(dense), v)
    n_col = cols.shape[-1]
    return probs[..., :n_col] @ vc[:, :, 0] + (probs[..., None, n_col:] @ vd).squeeze(-2)  # (B, H, Tq, Dv)


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
        if (self.backend == "flex" and t_q == t_k and t_k % sel.rows == 0 and mask is None
                and not pattern_site.active and self.ledger is None):
            return flex_attention_sparse(q, k, v, sel, scale)
        if sel.lines is not None:
            return line_attention(q, k, v, sel, mask, scale, pattern_site, self.ledger)
        return gathered_attention(q, k, v, sel, mask, scale, pattern_site, self.ledger)


def sparse_kernel(name: str, density: float = 1.0, backend: str = DEFAULT_BACKEND, **settings) -> SparseAttention:
    """The kernel for pattern ``name`` at ``density`` (other PatternSpec settings by keyword)."""
    return SparseAttention(PatternSpec(name, density, **settings), backend)


# Each pattern under a registry name at density 1/8, so a model config can name it
# (``model.attention = "sparse:quest"``); other densities come from sparse_kernel().
REGISTERED_DENSITY = 0.125
for _name in ("sliding-window", "block-sparse", "vertical-slash", "top-k", "quest"):
    ATTENTION.register(f"sparse:{_name}")(sparse_kernel(_name, REGISTERED_DENSITY))
