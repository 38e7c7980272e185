"""vertical_slash.py: the column + diagonal kernel equals a naive masked softmax over the same
columns and diagonals (built loop by loop), compiled and torch paths alike, across chunk
boundaries, grouped-query heads, decode steps, columns that are also diagonals and queries with
nothing to attend; its ledger counts the attended pairs exactly."""
import math

import pytest
import torch

import taskloc.attention.vertical_slash as vs
from taskloc.attention import FlopLedger, PatternSpec, Selection, SparseAttention, select
from taskloc.hooks import HookPoint

PATHS = [False, True] if vs.COMPILED else [False]


def naive_allowed(vert, slash, t_q):
    """(B, H, Tq, Tk): key j of query i (position p = Tk - Tq + i) iff j <= p and (j is a column or p - j a diagonal)."""
    b_, h_, t_k = vert.shape
    out = torch.zeros(b_, h_, t_q, t_k, dtype=torch.bool)
    for b in range(b_):
        for h in range(h_):
            for i in range(t_q):
                p = t_k - t_q + i
                for j in range(p + 1):
                    out[b, h, i, j] = bool(vert[b, h, j]) or bool(slash[b, h, p - j])
    return out


def reference(q, k, v, allowed, scale):
    """Masked softmax attention, heads repeated for GQA (rows with nothing allowed: 0)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, -1).nan_to_num() @ v


def random_lines(b, h, t_k, n_cols, n_diags, seed):
    """Random columns and diagonals per head, a different number per head, with some diagonal
    keys landing on columns (column 1 with offsets 1 and 2: queries 2 and 3 meet key 1 twice)."""
    g = torch.Generator().manual_seed(seed)
    vert = torch.zeros(b, h, t_k, dtype=torch.bool)
    slash = torch.zeros(b, h, t_k, dtype=torch.bool)
    for bb in range(b):
        for hh in range(h):
            vert[bb, hh, torch.randperm(t_k, generator=g)[: n_cols + hh % 2]] = True
            slash[bb, hh, torch.randperm(t_k, generator=g)[: n_diags + (hh + bb) % 3]] = True
    vert[:, :, 1] = True
    slash[:, :, 1:3] = True
    return vert, slash


def qkv(t_q, t_k, h_kv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, t_q, 8, generator=g, dtype=dtype)
    k = torch.randn(2, h_kv, t_k, 8, generator=g, dtype=dtype)
    v = torch.randn(2, h_kv, t_k, 6, generator=g, dtype=dtype)
    return q, k, v


def unused_member():
    raise AssertionError("the vertical-slash kernel must not build the key lists")


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("t_q, t_k, h_kv, chunk", [(37, 37, 2, 24), (37, 37, 4, 2048), (32, 32, 1, 8),
                                                  (5, 37, 2, 24), (1, 29, 2, 8)])
def test_kernel_equals_naive_masked_softmax(compiled, dtype, atol, t_q, t_k, h_kv, chunk, monkeypatch):
    # chunks of 24 and 8 queries (compiled) and ~20 and ~7 (torch): 37 is a multiple of none
    monkeypatch.setattr(vs, "COMPILED", compiled)
    monkeypatch.setattr(vs, "CHUNK_QUERIES", chunk)
    monkeypatch.setattr(vs, "CHUNK_FLOATS", chunk * 8 * 6 * 8)  # the torch path's chunks: chunk / 8 queries
    q, k, v = qkv(t_q, t_k, h_kv, dtype)
    vert, slash = random_lines(2, 4, t_k, 4, 5, seed=t_k + t_q)
    allowed = naive_allowed(vert, slash, t_q)
    sel = Selection(unused_member, 8, t_q, vert=vert, slash=slash)
    ledger = FlopLedger()
    out = vs.vertical_slash_attention(q, k, v, sel, 0.3, ledger)
    live = allowed.any(-1, keepdim=True)  # a query that reaches no key: finite, otherwise unspecified
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out * live, reference(q, k, v, allowed, 0.3) * live, rtol=0, atol=atol)
    assert ledger.attended == int(allowed.sum()) and ledger.computed >= ledger.attended


@pytest.mark.skipif(not vs.COMPILED, reason="numba not installed")
@pytest.mark.parametrize("t_q, t_k, chunk", [(300, 300, 256), (150, 333, 100), (257, 257, 256)])
def test_compiled_sub_blocks_and_exact_computed_count(t_q, t_k, chunk, monkeypatch):
    # Default-sized chunks (several 64-query sub-blocks, a ragged last one, a one-query last chunk,
    # a decode offset) against a masked softmax with the vertical-slash rule written as a formula;
    # many diagonals, so four-at-a-time groups start past a sub-block's first query. The ledger's
    # computed pairs are exactly the kernel's work: per head and chunk, queries x the columns up to
    # the chunk's last query, plus every diagonal pair whose key is >= 0 (crossings included).
    monkeypatch.setattr(vs, "CHUNK_QUERIES", chunk)
    q, k, v = qkv(t_q, t_k, 2, torch.float64, seed=t_q)
    vert, slash = random_lines(2, 4, t_k, 9, 23, seed=t_k)
    pos = torch.arange(t_k - t_q, t_k)  # (Tq,)
    keys = torch.arange(t_k)
    causal = keys[None, :] <= pos[:, None]  # (Tq, Tk)
    allowed = causal & (vert[:, :, None, :] | slash[:, :, (pos[:, None] - keys[None, :]).clamp(min=0)])
    ledger = FlopLedger()
    out = vs.vertical_slash_attention(q, k, v, Selection(unused_member, 8, t_q, vert=vert, slash=slash), 0.4, ledger)
    live = allowed.any(-1, keepdim=True)
    torch.testing.assert_close(out * live, reference(q, k, v, allowed, 0.4) * live, rtol=0, atol=1e-12)
    columns = sum(min(chunk, t_q - s) * int(vert[b, h, : t_k - t_q + min(t_q, s + chunk)].sum())
                  for b in range(2) for h in range(4) for s in range(0, t_q, chunk))
    diagonal = sum(int((pos >= d).sum()) for d in slash.nonzero()[:, 2].tolist())
    assert ledger.attended == int(allowed.sum())
    assert ledger.computed == columns + diagonal


@pytest.mark.parametrize("compiled", PATHS)
def test_query_with_nothing_to_attend_is_finite(compiled, monkeypatch):
    # no columns, only diagonal 5: queries before position 5 reach no key; their output is
    # unspecified but finite (kernels.py's contract), the others' exact
    monkeypatch.setattr(vs, "COMPILED", compiled)
    q, k, v = qkv(16, 16, 2, torch.float64)
    vert = torch.zeros(2, 4, 16, dtype=torch.bool)
    slash = torch.zeros(2, 4, 16, dtype=torch.bool)
    slash[..., 5] = True
    allowed = naive_allowed(vert, slash, 16)
    ledger = FlopLedger()
    out = vs.vertical_slash_attention(q, k, v, Selection(unused_member, 8, 16, vert=vert, slash=slash), 0.5, ledger)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 5:], reference(q, k, v, allowed, 0.5)[:, :, 5:], rtol=0, atol=1e-12)
    assert ledger.attended == int(allowed.sum()) == 2 * 4 * 11


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("t_q, t_k", [(64, 64), (3, 64), (1, 61)])
def test_pattern_kernel_matches_key_lists_backend(compiled, t_q, t_k, monkeypatch):
    # The default backend sends vertical-slash to its own kernel; the key-lists backend attends
    # the same set through gathered key lists: same output, same attended pairs.
    import taskloc.attention.sparse as sparse

    monkeypatch.setattr(vs, "COMPILED", compiled)
    calls = []
    monkeypatch.setattr(sparse, "vertical_slash_attention", lambda *a: calls.append(1) or vs.vertical_slash_attention(*a))
    q, k, v = qkv(t_q, t_k, 2, torch.float64, seed=4)
    spec = PatternSpec("vertical-slash", 0.2, block=8, sinks=2, last_q=4)
    own, lists = FlopLedger(), FlopLedger()
    out = SparseAttention(spec, "gather", own)(q, k, v, HookPoint())
    assert calls == [1]
    expected = SparseAttention(spec, "key-lists", lists)(q, k, v, HookPoint())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # a caller's mask or a hook (which must see the dense pattern) goes through key lists
    SparseAttention(spec, "gather")(q, k, v, HookPoint(), torch.ones(t_q, t_k, dtype=torch.bool))
    SparseAttention(spec, "gather")(q, k, v, type("On", (), {"active": True, "__call__": lambda self, p: p})())
    assert calls == [1]
    assert own.attended == lists.attended == int(select(spec, q, k).allowed().sum())
    assert own.computed >= own.attended


def test_gradient_takes_the_torch_path():
    # numba cannot carry autograd: inputs that need a gradient go through torch ops and get one
    q, k, v = (x.requires_grad_() for x in qkv(16, 16, 2, torch.float64))
    vert, slash = random_lines(2, 4, 16, 2, 3, seed=1)
    vert[..., 0] = True  # every query attends something: the reference's gradient stays finite
    sel = Selection(unused_member, 8, 16, vert=vert, slash=slash)
    out = vs.vertical_slash_attention(q, k, v, sel, 0.5)
    out.square().sum().backward()
    expected = reference(q, k, v, naive_allowed(vert, slash, 16), 0.5)
    grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for x, g in zip((q, k, v), grads):
        torch.testing.assert_close(x.grad, g, rtol=0, atol=1e-10)


def test_half_precision_takes_the_torch_path():
    # numba loops are compiled for float32/float64 only; bfloat16 runs through torch ops, softmax in float32
    q, k, v = qkv(16, 16, 2, torch.float32)
    vert, slash = random_lines(2, 4, 16, 2, 3, seed=2)
    vert[..., 0] = True
    sel = Selection(unused_member, 8, 16, vert=vert, slash=slash)
    out = vs.vertical_slash_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), sel, 0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(q, k, v, naive_allowed(vert, slash, 16), 0.5), rtol=0, atol=3e-2)
