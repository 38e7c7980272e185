"""The dense kernel against a naive per-row reference: grouped-query heads, boolean and additive
masks, cached keys (Tq < Tk), both the fused path and the explicit pattern path."""
import math

import pytest
import torch

from taskloc.attention import ATTENTION, dense_attention, kv_groups
from taskloc.hooks import HookPoint


class Recorder:
    """An active pattern site: keeps what it saw and returns ``replace(pattern)`` (or the pattern)."""

    active = True

    def __init__(self, replace=None):
        self.seen, self.replace = None, replace

    def __call__(self, pattern):
        self.seen = pattern
        return pattern if self.replace is None else self.replace(pattern)


def naive(q, k, v, mask, causal, scale):
    """One query row at a time in Python floats. Returns the output and which rows may attend
    anything (the others are left at zero: what a kernel returns there is not specified)."""
    b_, h_, t_q, d = q.shape
    t_k, group = k.shape[2], h_ // k.shape[1]
    scale = d**-0.5 if scale is None else scale
    m = None if mask is None else mask.expand(b_, h_, t_q, t_k)
    out = torch.zeros(b_, h_, t_q, v.shape[-1], dtype=q.dtype)
    valid = torch.zeros(b_, h_, t_q, dtype=torch.bool)
    for b in range(b_):
        for h in range(h_):
            kv = h // group  # consecutive query heads share a key/value head
            for i in range(t_q):
                scores, keep = [], []
                for j in range(t_k):
                    s = float(q[b, h, i] @ k[b, kv, j]) * scale
                    ok = not causal or j <= t_k - t_q + i
                    if m is not None and m.dtype == torch.bool:
                        ok = ok and bool(m[b, h, i, j])
                    elif m is not None:  # additive; the dtype's lowest value means "blocked"
                        s += float(m[b, h, i, j])
                        ok = ok and float(m[b, h, i, j]) > torch.finfo(m.dtype).min
                    scores.append(s)
                    if ok:
                        keep.append(j)
                if not keep:
                    continue
                valid[b, h, i] = True
                top = max(scores[j] for j in keep)
                w = {j: math.exp(scores[j] - top) for j in keep}
                z = sum(w.values())
                out[b, h, i] = sum((w[j] / z) * v[b, kv, j] for j in keep)
    return out, valid


def _qkv(h_kv, t_q, t_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, t_q, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, h_kv, t_k, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, h_kv, t_k, 6, generator=g, dtype=torch.float64)  # Dv != Dh on purpose
    return q, k, v


def _padding(t_q, t_k, kind):
    """Row 1 has two padded keys at the front; ``kind`` picks the encoding."""
    if kind is None:
        return None
    keep = torch.ones(2, 1, 1, t_k, dtype=torch.bool)
    keep[1, ..., :2] = False
    if kind == "bool":
        return keep
    if kind == "additive":
        return torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min)
    scattered = torch.rand(2, 1, t_q, t_k, generator=torch.Generator().manual_seed(5)) > 0.3  # per query
    return scattered


@pytest.mark.parametrize("h_kv", [4, 2, 1])
@pytest.mark.parametrize("t_q, t_k", [(5, 5), (2, 5), (1, 5)])
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive", "scattered"])
@pytest.mark.parametrize("explicit", [False, True])
def test_dense_matches_naive(h_kv, t_q, t_k, mask_kind, explicit):
    q, k, v = _qkv(h_kv, t_q, t_k)
    mask = _padding(t_q, t_k, mask_kind)
    site = Recorder() if explicit else HookPoint()
    for causal, scale in ((True, None), (False, 0.3)):
        out = dense_attention(q, k, v, site, mask, causal=causal, scale=scale)
        expected, valid = naive(q, k, v, mask, causal, scale)
        assert out.shape == (2, 4, t_q, 6) and out.isfinite().all()
        torch.testing.assert_close(out[valid], expected[valid], rtol=0, atol=1e-10)
        if causal and mask_kind in ("bool", "additive") and t_q == t_k:
            assert not valid.all()  # a row that may attend nothing is really exercised
    if explicit:
        assert site.seen.shape == (2, 4, t_q, t_k)
        torch.testing.assert_close(site.seen.sum(-1), torch.ones(2, 4, t_q, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_with_nothing_allowed_stays_finite(dtype):
    # Padding queries attend nothing; a NaN there would reach real tokens through 0 * NaN in the
    # next layer's pattern @ v. The explicit pattern is uniform there, as in HF's eager path.
    q, k, v = (x.to(dtype) for x in _qkv(2, 3, 3))
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1] = False  # query 1 of batch 0 may attend nothing
    for site in (HookPoint(), Recorder()):
        assert dense_attention(q, k, v, site, mask).isfinite().all()
    torch.testing.assert_close(site.seen[0, :, 1], torch.full((4, 3), 1 / 3, dtype=dtype))


def test_explicit_path_attends_with_the_pattern_the_site_returns():
    q, k, v = _qkv(2, 4, 4)
    uniform = Recorder(replace=lambda p: torch.full_like(p, 1 / p.shape[-1]))
    out = dense_attention(q, k, v, uniform)
    expected = v.repeat_interleave(2, dim=1).mean(-2, keepdim=True).expand(2, 4, 4, 6)  # (B, H, Tq, Dv)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.triu(uniform.seen[0, 0], diagonal=1).abs().max() == 0  # the site saw the causal pattern


def test_fused_path_never_calls_an_inactive_site():
    class Refuses(HookPoint):
        def forward(self, x):
            raise AssertionError("an inactive site must not be called")

    q, k, v = _qkv(4, 3, 3)
    dense_attention(q, k, v, Refuses(), _padding(3, 3, "bool"))


def test_heads_that_do_not_group_are_refused():
    q, k = torch.zeros(1, 3, 2, 4), torch.zeros(1, 2, 2, 4)
    with pytest.raises(ValueError, match="3 query heads cannot share 2 key/value heads"):
        kv_groups(q, k)
    assert ATTENTION.get("dense") is dense_attention
