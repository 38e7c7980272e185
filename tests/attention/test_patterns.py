"""Sparse attention patterns: density 1 is dense attention (prefill, decode with and without a KV
cache); each pattern's attended set equals a mask rebuilt naively, loop by loop, from the
pattern's definition; the kernels attend exactly that set; bad settings are one-line errors."""
import itertools
import math

import pytest
import torch

import taskloc.attention.patterns as patterns
from taskloc.attention import ATTENTION, FlopLedger, PatternSpec, SparseAttention, dense_attention, select, sparse_kernel
from taskloc.errors import ConfigError, TasklocError, UnknownNameError
from taskloc.hooks import HookPoint
from taskloc.models import TinyLM
from taskloc.models.tinylm import ModelConfig

NAMES = ["sliding-window", "block-sparse", "vertical-slash", "top-k", "quest"]
SETTINGS = dict(block=8, sinks=2, last_q=4, page=4)


def qkv(t_q, t_k, h_kv=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, t_q, 8, generator=g, dtype=dtype)
    k = torch.randn(2, h_kv, t_k, 8, generator=g, dtype=dtype)
    v = torch.randn(2, h_kv, t_k, 6, generator=g, dtype=dtype)
    return q, k, v


def masked_reference(q, k, v, allowed):
    """Softmax attention restricted to ``allowed`` (B, H, Tq, Tk), heads repeated for GQA."""
    h = q.shape[1]
    k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // v.shape[1], 1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(~allowed, -math.inf), -1) @ v


def nearest_budget(attended, target):
    """Naive fixed_budget: of every k (attended: k -> the pairs its masks attend), the one whose
    pairs are nearest the target (a tie goes to the one at or above it)."""
    return min(attended, key=lambda kk: (abs(attended[kk] - target), -kk if attended[kk] >= target else kk))


def budget(cands, density):
    """Per-query budgets over keys: k keys attend min(c, k) pairs."""
    return nearest_budget({kk: sum(min(c, kk) for c in cands) for kk in range(1, max(cands) + 1)}, density * sum(cands))


def top(scores, cands, k_, forced=()):
    """The k_ best candidate indices by score, forced ones first."""
    ranked = sorted(cands, key=lambda j: (j not in forced, -scores[j]))
    return set(ranked[:k_])


def chosen_and_pairs(rows, pos, unit, budget):
    """rows: (queries, scores, candidates, forced) of each row of a block or page pattern. Each
    row's ``budget`` best units (forced first), and the causal pairs all rows then attend, counted
    key by key (``unit`` keys per block or page)."""
    chosen = [top(s, cands, budget, forced) for _queries, s, cands, forced in rows]
    pairs = sum(j // unit in ch for (queries, *_), ch in zip(rows, chosen) for i in queries for j in range(pos[i] + 1))
    return chosen, pairs


def covering(col, diag, pos, t_k, density, sinks):
    """Vertical-slash's rule, one candidate at a time: best columns (sinks first) while the causal
    pairs they cover are under half the target, then best diagonals (offset 0 first) while the
    pairs of both are under the target; a diagonal's pair whose key is a chosen column is not new."""
    goal = density * sum(p + 1 for p in pos)
    verts, covered = set(), 0
    for j in sorted(range(t_k), key=lambda j: (j >= sinks, -col[j])):
        if j < sinks or covered < goal / 2 - 1e-9:
            verts.add(j)
            covered += sum(1 for p in pos if p >= j)
    slashes = set()
    for off in sorted(range(t_k), key=lambda off: (off != 0, -diag[off])):
        if off == 0 or covered < goal - 1e-9:
            slashes.add(off)
            covered += sum(1 for p in pos if p >= off and p - off not in verts)
    return verts, slashes


def naive_mask(name, density, q, k):
    """The attended set (B, H, Tq, Tk) from each pattern's definition, one row at a time."""
    b_, h_, t_q, d = q.shape
    t_k = k.shape[2]
    kk = k.repeat_interleave(h_ // k.shape[1], 1)
    out = torch.zeros(b_, h_, t_q, t_k, dtype=torch.bool)
    pos = [t_k - t_q + i for i in range(t_q)]
    bs, sinks, page = SETTINGS["block"], SETTINGS["sinks"], SETTINGS["page"]
    for b in range(b_):
        for h in range(h_):
            if name == "sliding-window":
                cands = [p + 1 for p in pos]
                totals = {w: sum(min(c, w) + min(sinks, max(0, c - w)) for c in cands) for w in range(1, t_k + 1)}
                w = min(w for w in totals if totals[w] >= density * sum(cands))
                for i, p in enumerate(pos):
                    for j in range(p + 1):
                        out[b, h, i, j] = j < sinks or p - j < w
            elif name == "top-k":
                kq = budget([p + 1 for p in pos], density)
                for i, p in enumerate(pos):
                    s = {j: float(q[b, h, i] @ kk[b, h, j]) for j in range(p + 1)}
                    for j in top(s, list(s), kq):
                        out[b, h, i, j] = True
            elif name == "block-sparse":
                rows = min(bs, t_q)
                groups = [list(range(r, min(r + rows, t_q))) for r in range(0, t_q, rows)]
                n_blocks = math.ceil(t_k / bs)
                kmean = [kk[b, h, j * bs : (j + 1) * bs].mean(0) for j in range(n_blocks)]
                cands = [[j for j in range(n_blocks) if j * bs <= pos[g[-1]]] for g in groups]
                rows_ = [(g, {j: float(q[b, h, g].mean(0) @ kmean[j]) for j in cs}, cs, {0, pos[g[-1]] // bs})
                         for g, cs in zip(groups, cands)]
                attended = {kk: chosen_and_pairs(rows_, pos, bs, kk)[1] for kk in range(1, n_blocks + 1)}
                kb = nearest_budget(attended, density * sum(p + 1 for p in pos))
                for g, chosen in zip(groups, chosen_and_pairs(rows_, pos, bs, max(kb, 2))[0]):
                    for i in g:
                        for j in range(pos[i] + 1):
                            out[b, h, i, j] = j // bs in chosen
            elif name == "quest":
                n_pages = math.ceil(t_k / page)
                rows_ = []  # per query: its page bounds (page -> the Quest bound of q.k over it)
                for i, p in enumerate(pos):
                    s = {}
                    for pg in range(p // page + 1):
                        keys = kk[b, h, pg * page : (pg + 1) * page]
                        lo, hi = keys.min(0).values, keys.max(0).values
                        s[pg] = float(torch.maximum(q[b, h, i] * lo, q[b, h, i] * hi).sum())
                    rows_.append(([i], s, list(s), {p // page}))
                attended = {kq: chosen_and_pairs(rows_, pos, page, kq)[1] for kq in range(1, n_pages + 1)}
                kq = nearest_budget(attended, density * sum(p + 1 for p in pos))
                for i, (p, chosen) in enumerate(zip(pos, chosen_and_pairs(rows_, pos, page, kq)[0])):
                    for j in range(p + 1):
                        out[b, h, i, j] = j // page in chosen
            elif name == "vertical-slash":
                n_last = min(SETTINGS["last_q"], t_q)
                col, diag = [0.0] * t_k, [0.0] * t_k
                for i in range(t_q - n_last, t_q):
                    p = pos[i]
                    s = torch.tensor([float(q[b, h, i] @ kk[b, h, j]) * d**-0.5 for j in range(p + 1)])
                    w = torch.softmax(s, 0)
                    for j in range(p + 1):
                        col[j] += float(w[j])
                        diag[p - j] += float(w[j])
                verts, slashes = covering(col, diag, pos, t_k, density, sinks)
                for i, p in enumerate(pos):
                    for j in range(p + 1):
                        out[b, h, i, j] = j in verts or (p - j) in slashes
    return out


@pytest.mark.parametrize("name", NAMES)
# (64, 64, 0.45): block-sparse and quest budgets differ by one when their own, causally cut block or
# page counts whole (the budget must count pairs)
@pytest.mark.parametrize("t_q, t_k, density", [(32, 32, 0.5), (32, 32, 0.2), (32, 32, 0.05), (1, 29, 0.2),
                                               (1, 29, 0.05), (3, 32, 0.2), (64, 64, 0.45)])
def test_attended_set_matches_naive_mask_and_kernel_attends_it(name, t_q, t_k, density):
    q, k, v = qkv(t_q, t_k)
    spec = PatternSpec(name, density, **SETTINGS)
    expected = naive_mask(name, density, q, k)
    assert torch.equal(select(spec, q, k).allowed(), expected)
    reference = masked_reference(q, k, v, expected)
    ledger = FlopLedger()
    for backend_ledger in (None, ledger):
        out = SparseAttention(spec, "gather", backend_ledger)(q, k, v, HookPoint())
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-12)
    assert ledger.attended == int(expected.sum()) and ledger.computed >= ledger.attended
    assert ledger.dense == int(torch.ones(t_q, t_k).tril(t_k - t_q).sum()) * 8



@pytest.mark.parametrize("t_q, t_k", [(1024, 1024), (2048, 2048), (1, 3000), (64, 2048)])
@pytest.mark.parametrize("density", [1 / 20, 1 / 16, 1 / 4])
def test_vertical_slash_attends_the_density_asked(t_q, t_k, density):
    # A column or a diagonal reaches only the queries at or after it, so the selection counts causal
    # pairs, not keys: the attended fraction is at least the target and over it by at most one
    # column and one diagonal (2 x Tq pairs), on random inputs (default settings: 4 sinks, 64 last queries).
    g = torch.Generator().manual_seed(t_k)
    q, k = torch.randn(1, 4, t_q, 16, generator=g), torch.randn(1, 2, t_k, 16, generator=g)
    allowed = select(PatternSpec("vertical-slash", density, block=min(64, t_q)), q, k).allowed()  # (1, 4, Tq, Tk)
    causal = int(torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q).sum())
    realized = allowed.sum((0, 2, 3)).double() / causal  # per head
    assert torch.all(realized >= density - 1e-9), realized
    assert torch.all(realized <= density + 2 * t_q / causal), realized

def full_sort_prefix(scores, gain, goal, forced):
    """cover_prefix's rule written plainly: every row sorted (stable, descending), the shortest
    prefix whose gain reaches the goal, and the forced ones."""
    out = torch.zeros(scores.shape, dtype=torch.bool)
    gain = gain.expand_as(scores)
    for b, h in itertools.product(range(scores.shape[0]), range(scores.shape[1])):
        total = 0.0
        for j in scores[b, h].sort(descending=True, stable=True).indices.tolist():
            out[b, h, j] = True
            total += float(gain[b, h, j])
            if total >= float(goal[b, h]) - 1e-9:
                break
    return out | forced


@pytest.mark.parametrize("first", [1, 4, 512])
def test_cover_prefix_top_k_path_is_the_full_sort(first, monkeypatch):
    # The ranked candidates start at `first` (1 and 4 widen; 512 covers the small rows at once);
    # few score levels, so prefixes end inside groups of ties (torch's top-k returns ties in no
    # set order), +inf (forced) scores, and in every other draw a goal past the total gain (every
    # candidate; one such head sends the whole batch to the full sort).
    monkeypatch.setattr(patterns, "COVER_FIRST", first)
    g = torch.Generator().manual_seed(first)
    for draw, (n, levels) in enumerate([(37, 5), (300, 40), (2000, 1000)] * 10):
        scores = (torch.rand(2, 3, n, generator=g) * levels).floor()
        scores[..., :2] = math.inf
        gain = torch.randint(1, 9, (n,), generator=g).to(torch.int64)
        goal = torch.rand(2, 3, generator=g, dtype=torch.float64) * float(gain.sum()) * 0.1
        if draw % 2:
            goal[1, 2] = float(gain.sum()) + 5
        forced = torch.arange(n) < 2
        assert torch.equal(patterns.cover_prefix(scores, gain, goal, forced),
                           full_sort_prefix(scores, gain, goal, forced))


def test_cover_prefix_widens_when_a_tie_spans_the_cut(monkeypatch):
    # 16 keys tie at the top and the prefix needs 2 of them: the top 4 hold 4 arbitrary ones of the
    # 16 and the top 16 all of them but end on the same score, so only the whole order is exact.
    monkeypatch.setattr(patterns, "COVER_FIRST", 4)
    scores = torch.zeros(1, 1, 50)
    scores[..., 30:46] = 10.0
    out = patterns.cover_prefix(scores, torch.ones(50), 2.0, torch.zeros(50, dtype=torch.bool))
    assert out.nonzero()[:, -1].tolist() == [30, 31]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t_q, t_k", [(32, 32), (3, 32), (1, 29)])
def test_chunks_of_rows_attend_the_same_set(name, t_q, t_k, monkeypatch):
    # One row per chunk (each padded to its own width; block-sparse prefill's whole-block path
    # too) against the reference mask, with and without a hook, with a boolean and an additive
    # caller mask; the ledger sums the chunks.
    import taskloc.attention.sparse as sparse

    monkeypatch.setattr(sparse, "CHUNK_FLOATS", 1)
    monkeypatch.setattr(sparse, "BLOCK_CHUNK_FLOATS", 1)
    q, k, v = qkv(t_q, t_k)
    spec = PatternSpec(name, 0.2, **SETTINGS)
    allowed = select(spec, q, k).allowed()
    keep = torch.rand(2, 1, 1, t_k, generator=torch.Generator().manual_seed(3)) > 0.2
    keep[..., 0] = True
    for mask, expect in ((None, allowed), (keep, allowed & keep),
                         (torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, -1e30), allowed & keep)):
        reference = masked_reference(q, k, v, expect)
        for site in (HookPoint(), type("On", (), {"active": True, "__call__": lambda self, p: p})()):
            ledger = FlopLedger()
            out = SparseAttention(spec, "gather", ledger)(q, k, v, site, mask)
            live = expect.any(-1, keepdim=True)  # rows with nothing allowed: unspecified but finite
            torch.testing.assert_close(out * live, reference.nan_to_num() * live, rtol=0, atol=1e-12)
            assert torch.isfinite(out).all()
            if mask is None:
                assert ledger.attended == int(allowed.sum()) and ledger.computed >= ledger.attended


@pytest.mark.parametrize("name", NAMES)
def test_strided_inputs_as_a_model_passes_them(name):
    # TinyLM hands the kernel q, k, v sliced out of one projection: strided views, not contiguous.
    q, k, v = qkv(32, 32, h_kv=4)
    qs, ks, vs = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qs.is_contiguous()
    kernel = sparse_kernel(name, 0.25, **SETTINGS)
    torch.testing.assert_close(kernel(qs, ks, vs, HookPoint()), kernel(q, k, v, HookPoint()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_a_hook_sees_the_sparse_pattern_and_edits_it(name):
    q, k, v = qkv(32, 32)
    spec = PatternSpec(name, 0.25, **SETTINGS)

    class Recorder:
        active, seen = True, None

        def __call__(self, p):
            self.seen = p
            return p

    site = Recorder()
    out = sparse_kernel(name, 0.25, **SETTINGS)(q, k, v, site)
    allowed = select(spec, q, k).allowed()
    assert torch.all(site.seen[~allowed] == 0) and torch.allclose(site.seen.sum(-1), torch.ones(2, 4, 32, dtype=q.dtype))
    torch.testing.assert_close(out, masked_reference(q, k, v, allowed), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t_q, t_k", [(32, 32), (1, 29), (4, 29)])
def test_density_one_is_dense_attention(name, t_q, t_k):
    q, k, v = qkv(t_q, t_k, dtype=torch.float32)
    for site in (HookPoint(),):
        out = sparse_kernel(name, 1.0, **SETTINGS)(q, k, v, site)
        torch.testing.assert_close(out, dense_attention(q, k, v, site), rtol=0, atol=1e-6)


def _model(kernel) -> TinyLM:
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=20, block_size=48, n_layer=2, n_head=2, d_model=16, d_mlp=32)).eval()
    for block in model.blocks:
        block.attn.kernel = kernel
    return model


@pytest.mark.parametrize("name", NAMES)
def test_density_one_model_prefill_and_decode_with_and_without_cache(name):
    idx = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    dense, sparse = _model(ATTENTION.get("dense")), _model(sparse_kernel(name, 1.0, **SETTINGS))
    with torch.no_grad():
        torch.testing.assert_close(sparse(idx[:, :32]), dense(idx[:, :32]), rtol=0, atol=1e-6)  # prefill
        _, cache_s = sparse(idx[:, :32], return_cache=True)
        _, cache_d = dense(idx[:, :32], return_cache=True)
        for t in range(32, 40):  # decode with the cache, one token at a time
            ls, cache_s = sparse(idx[:, t : t + 1], cache=cache_s, return_cache=True)
            ld, cache_d = dense(idx[:, t : t + 1], cache=cache_d, return_cache=True)
            torch.testing.assert_close(ls, ld, rtol=0, atol=1e-6)
        for t in (33, 37, 40):  # decode without a cache: every step re-reads the whole prefix
            torch.testing.assert_close(sparse(idx[:, :t])[:, -1], dense(idx[:, :t])[:, -1], rtol=0, atol=1e-6)
        assert torch.equal(sparse.generate(idx[:, :32], 8), dense.generate(idx[:, :32], 8))


def test_sparse_decode_uses_the_pattern_with_the_cache():
    # Below density 1 the cached decode step attends the pattern's keys, not all of them.
    idx = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(1))
    ledger = FlopLedger()
    kernel = sparse_kernel("quest", 0.25, **SETTINGS)
    kernel.ledger = ledger
    model = _model(kernel)
    with torch.no_grad():
        _, cache = model(idx[:, :39], return_cache=True)
        ledger.__init__()
        model(idx[:, 39:], cache=cache)
    assert 0 < ledger.density < 0.5 and ledger.queries == 2 * 2 * 2  # 2 layers x batch 2 x 2 heads


def test_registered_names_serve_model_configs():
    assert {f"sparse:{n}" for n in NAMES} <= set(ATTENTION.names())
    ModelConfig(attention="sparse:quest")  # validates


@pytest.mark.parametrize("density", [0, -0.5, 1.5, float("nan"), True])
def test_density_outside_unit_interval_is_one_line(density):
    with pytest.raises(ConfigError, match=r"density=.* must lie in \(0, 1\]") as exc:
        PatternSpec("quest", density).check()
    assert "\n" not in str(exc.value)


def test_unknown_pattern_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match="Did you mean 'block-sparse'") as exc:
        sparse_kernel("block-sprase", 0.5)
    assert isinstance(exc.value, TasklocError) and "\n" not in str(exc.value)


def test_block_that_does_not_divide_the_prefill_is_refused():
    q, k, v = qkv(30, 30)
    for name in ("block-sparse", "vertical-slash"):
        with pytest.raises(ConfigError, match="block=8 does not divide the sequence length 30"):
            sparse_kernel(name, 0.5, **SETTINGS)(q, k, v, HookPoint())
    sparse_kernel("block-sparse", 0.5, **SETTINGS)(q[:, :, -1:], k, v, HookPoint())  # decode: a ragged tail is fine
