"""Merge methods against direct in-memory reference implementations written here, and the exact
invariants (identities at the endpoints of every method)."""
import math

import numpy as np
import pytest
import torch

from taskloc.deltas import global_topk_mask
from taskloc.errors import ConfigError, UnknownNameError
from taskloc.merge import core_masks, dare_seed, groups_of, merge_models

SHAPES = {"emb.weight": (40, 16), "layers.0.w": (16, 24), "layers.0.b": (24,), "layers.1.w": (24, 16), "norm.weight": (16,)}


def _model(seed: int, base=None, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if base is None:
        out = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
        out["position_ids"] = torch.arange(7)  # an integer buffer: copied from the base
        return out
    out = {n: v + scale * torch.randn(v.shape, generator=g) ** 3 if v.is_floating_point() else v.clone() for n, v in base.items()}
    return out


@pytest.fixture(scope="module")
def models():
    base = _model(0)
    return base, [_model(1, base), _model(2, base), _model(3, base)]


def _floats(sd):
    return {n: v for n, v in sd.items() if v.is_floating_point()}


# --- reference implementations (float64, loops, the papers' definitions) ---------------------------

def ref_trim(d: torch.Tensor, k_pct: float) -> torch.Tensor:
    flat = d.reshape(-1)
    k = int(k_pct / 100 * flat.numel())
    order = torch.sort(flat.abs(), descending=True, stable=True).indices  # ties: lower index first
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[order[:k]] = True
    return torch.where(keep, flat, 0).reshape(d.shape)


def ref_ties(base, tasks, k_pct, lam=1.0, weights=None):
    weights = weights or [1.0] * len(tasks)
    out = {}
    for name, b in base.items():
        if not b.is_floating_point():
            out[name] = b
            continue
        trimmed = [w * ref_trim(t[name] - b, k_pct).double() for t, w in zip(tasks, weights)]
        total = sum(trimmed)
        elected = torch.where(total >= 0, 1.0, -1.0).double()
        num = torch.zeros_like(total)
        den = torch.zeros_like(total)
        for tv, w in zip(trimmed, weights):
            agree = torch.sign(tv) == elected
            num += torch.where(agree, tv, 0)
            den += torch.where(agree, w, 0)
        out[name] = (b.double() + lam * num / torch.where(den == 0, 1.0, den)).float()
    return out


def ref_dare(base, tasks, drop_pct, seed, lam=1.0, ties=False):
    p = drop_pct / 100
    out = {}
    for name, b in base.items():
        if not b.is_floating_point():
            out[name] = b
            continue
        kept = []
        for i, t in enumerate(tasks):
            gen = torch.Generator().manual_seed(dare_seed(seed, i, name))
            u = torch.rand(b.numel(), generator=gen).reshape(b.shape)
            kept.append(torch.where(u >= p, (t[name] - b).double() / (1 - p), 0.0))
        if ties:
            elected = torch.where(sum(kept) >= 0, 1.0, -1.0).double()
            merged = sum(torch.where(torch.sign(x) == elected, x, 0) for x in kept)
        else:
            merged = sum(kept)
        out[name] = (b.double() + lam * merged).float()
    return out


def ref_slerp_np(t, v0, v1):
    """mergekit's slerp formula, in float64 numpy."""
    a, b = v0.astype(np.float64).ravel(), v1.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    dot = np.sum((a / na if na > 1e-8 else a) * (b / nb if nb > 1e-8 else b))
    if abs(dot) > 0.9995:
        res = (1 - t) * a + t * b
    else:
        th = np.arccos(dot)
        res = np.sin(th - th * t) / np.sin(th) * a + np.sin(th * t) / np.sin(th) * b
    return res.reshape(v0.shape)


def _close(got, want, tol=2e-6):
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol, msg=name)


# --- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k, lam", [(20, 1.0), (50, 0.7), (3, 1.3)])
def test_ties_matches_reference(models, k, lam):
    base, tasks = models
    got = merge_models(base, tasks, method="ties", options={"k": k, "lambda_": lam}).state_dict
    _close(got, ref_ties(base, tasks, k, lam))


def test_ties_weighted_matches_reference(models):
    base, tasks = models
    got = merge_models(base, tasks, method="ties", options={"k": "30%", "weights": "1,0.5,2"}).state_dict
    _close(got, ref_ties(base, tasks, 30, weights=[1.0, 0.5, 2.0]))


def test_ties_global_trim_keeps_the_exact_global_top_k(models):
    base, tasks = models
    got = merge_models(base, tasks[:1], method="ties", options={"k": 10, "trim": "global"}).state_dict
    deltas = {n: tasks[0][n] - base[n] for n in _floats(base)}
    mask = global_topk_mask(deltas, 0.10)
    for n, d in deltas.items():
        torch.testing.assert_close(got[n] - base[n], torch.where(mask[n], d, 0.0), rtol=0, atol=1e-6)
    assert sum(int(m.sum()) for m in mask.values()) == round(0.10 * sum(d.numel() for d in deltas.values()))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_matches_reference(models, method):
    base, tasks = models
    got = merge_models(base, tasks, method=method, options={"p": 40, "seed": 7, "lambda_": 0.8}).state_dict
    _close(got, ref_dare(base, tasks, 40, 7, 0.8, ties=method == "dare_ties"))


def test_dare_mask_is_seeded_per_tensor_name_and_drops_p(models):
    base, tasks = models
    a = merge_models(base, tasks[:1], method="dare_linear", options={"p": 30, "seed": 1}).state_dict
    again = merge_models(base, tasks[:1], method="dare_linear", options={"p": 30, "seed": 1}).state_dict
    other = merge_models(base, tasks[:1], method="dare_linear", options={"p": 30, "seed": 2}).state_dict
    # a model holding only one of the tensors draws the same mask for it
    only = merge_models({"layers.0.w": base["layers.0.w"]}, [{"layers.0.w": tasks[0]["layers.0.w"]}],
                        method="dare_linear", options={"p": 30, "seed": 1}).state_dict
    assert all(torch.equal(a[n], again[n]) for n in a)
    assert torch.equal(only["layers.0.w"], a["layers.0.w"])
    assert not torch.equal(a["emb.weight"], other["emb.weight"])
    dropped = sum(int((a[n] == base[n]).sum()) for n in _floats(base))
    total = sum(v.numel() for v in _floats(base).values())
    assert abs(dropped / total - 0.30) < 0.03


@pytest.mark.parametrize("t", [0.25, 0.5, 0.9])
def test_slerp_matches_mergekit_formula(models, t):
    base, tasks = models
    got = merge_models(base, tasks[:1], method="slerp", options={"t": t}).state_dict
    for n, b in _floats(base).items():
        want = torch.from_numpy(ref_slerp_np(t, b.numpy(), tasks[0][n].numpy())).float()
        torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6)


def test_slerp_of_far_apart_tensors_is_not_a_lerp():
    g = torch.Generator().manual_seed(3)
    v0, v1 = torch.randn(64, generator=g), torch.randn(64, generator=g)
    got = merge_models({"w": v0}, [{"w": v1}], method="slerp", options={"t": 0.5}).state_dict["w"]
    torch.testing.assert_close(got, torch.from_numpy(ref_slerp_np(0.5, v0.numpy(), v1.numpy())).float())
    assert not torch.allclose(got, 0.5 * v0 + 0.5 * v1, atol=1e-3)
    # slerp keeps the norm between the endpoints' where the chord midpoint shrinks it
    assert got.norm() > (0.5 * v0 + 0.5 * v1).norm() * 1.2


def test_core_isolation_matches_reference(models):
    base, tasks = models
    a, b = tasks[:2]
    got = merge_models(base, [a, b], method="core_isolation", options={"p": 5}).state_dict
    masks = [global_topk_mask({n: t[n] - base[n] for n in _floats(base)}, 0.05) for t in (a, b)]
    for n in _floats(base):
        ca, cb = masks[0][n], masks[1][n]
        noncore = ~(ca | cb)
        av, bv = a[n].double(), b[n].double()
        na, nb = torch.where(noncore, av, 0), torch.where(noncore, bv, 0)
        cos = float((na * nb).sum() / (na.norm() * nb.norm()))
        if abs(cos) > 0.9995:
            fused = 0.5 * av + 0.5 * bv
        else:
            th = math.acos(cos)
            fused = math.sin(th / 2) / math.sin(th) * (av + bv)
        both = ca & cb
        want = torch.where(ca, av, torch.where(cb, bv, fused))
        want = torch.where(both, (av + bv) / 2, want)
        torch.testing.assert_close(got[n], want.float(), rtol=1e-6, atol=1e-6, msg=n)
        assert torch.equal(got[n][ca & ~cb], a[n][ca & ~cb])  # transplanted bit for bit


def test_core_masks_are_the_global_top_p(models):
    base, tasks = models
    masks = core_masks(base, tasks[:2], p=2)
    for mine, t in zip(masks, tasks):
        want = global_topk_mask({n: t[n] - base[n] for n in _floats(base)}, 0.02)
        assert set(mine) == set(want) and all(torch.equal(mine[n], want[n]) for n in want)


# --- invariants -----------------------------------------------------------------------------------

def test_core_isolation_all_ones_gives_the_task_and_all_zeros_the_base(models):
    base, tasks = models
    ones = [{n: torch.ones_like(v, dtype=torch.bool) for n, v in _floats(base).items()}]
    zeros = [{n: torch.zeros_like(v, dtype=torch.bool) for n, v in _floats(base).items()}]
    got = merge_models(base, tasks[:1], method="core_isolation", options={"masks": ones}).state_dict
    assert all(torch.equal(got[n], tasks[0][n]) for n in base)
    got = merge_models(base, tasks[:1], method="core_isolation", options={"masks": zeros, "noncore": "base"}).state_dict
    assert all(torch.equal(got[n], base[n]) for n in base)
    # p = 100% makes every entry core: the task model again, found through the streamed threshold
    got = merge_models(base, tasks[:1], method="core_isolation", options={"p": 100}).state_dict
    assert all(torch.equal(got[n], tasks[0][n]) for n in base)


def test_ties_with_k_100_and_one_model_is_task_arithmetic(models):
    base, tasks = models
    ties = merge_models(base, tasks[:1], method="ties", options={"k": 100}).state_dict
    ta = merge_models(base, tasks[:1], method="task_arithmetic", options={"lambda_": 1}).state_dict
    assert all(torch.equal(ties[n], ta[n]) for n in base)


@pytest.mark.parametrize("t, end", [(0.0, 0), (1.0, 1)])
def test_slerp_endpoints(models, t, end):
    base, tasks = models
    got = merge_models(base, tasks[:1], method="slerp", options={"t": t}).state_dict
    want = [base, tasks[0]][end]
    assert all(torch.equal(got[n], want[n]) for n in base)


@pytest.mark.parametrize("method, options", [
    ("task_arithmetic", {}), ("ties", {}), ("ties", {"trim": "global"}), ("dare_linear", {}), ("dare_ties", {}),
    ("slerp", {}), ("core_isolation", {}), ("core_isolation", {"noncore": "linear"}),
])
def test_merging_identical_models_returns_that_model(models, method, options):
    base = models[0]
    copies = [{n: v.clone() for n, v in base.items()} for _ in range(1 if method == "slerp" else 3)]
    got = merge_models(base, copies, method=method, options=options).state_dict
    assert all(torch.equal(got[n], base[n]) for n in base)


@pytest.mark.parametrize("method", ["ties", "core_isolation"])
def test_merging_copies_of_one_task_model_returns_it(models, method):
    base, tasks = models
    copies = [{n: v.clone() for n, v in tasks[0].items()} for _ in range(3)]
    got = merge_models(base, copies, method=method, options={"k": 100} if method == "ties" else {}).state_dict
    for n in base:
        torch.testing.assert_close(got[n], tasks[0][n], rtol=0, atol=1e-6)


def test_merged_state_dict_does_not_alias_the_inputs(models):
    base, tasks = models
    got = merge_models(base, tasks[:1], method="slerp", options={"t": 0.0}).state_dict
    got["emb.weight"].zero_()
    assert base["emb.weight"].abs().sum() > 0


# --- groups and options -----------------------------------------------------------------------------

def test_groups_are_connected_components_at_tau():
    j = [[1, 0.3, 0.0, 0.0], [0.3, 1, 0.12, 0.0], [0.0, 0.12, 1, 0.0], [0.0, 0.0, 0.0, 1]]
    assert groups_of(j, 0.1) == [[0, 1, 2], [3]]
    assert groups_of(j, 0.2) == [[0, 1], [2], [3]]
    assert groups_of(j, 0.5) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("method, options, message", [
    ("ties", {"k": 0}, "--k 0 is out of range: it is a percent in (0, 100]."),
    ("ties", {"k": "150%"}, "--k 150% is out of range: it is a percent in (0, 100]."),
    ("core_isolation", {"p": "0%"}, "--p 0% is out of range: it is a percent in (0, 100]."),
    ("dare_linear", {"p": 100}, "--p 100 is out of range: it is a percent in [0, 100)."),
    ("slerp", {"t": 1.5}, "--t 1.5 is out of range: it must lie in [0, 1]."),
    ("slerp", {"k": 10}, "--k does not apply to --method slerp; it takes --t."),
    ("ties", {"weights": "1,2"}, "--weights has 2 values but 3 models follow the base; give one weight per model."),
])
def test_bad_options_are_config_errors(models, method, options, message):
    base, tasks = models
    with pytest.raises(ConfigError) as err:
        merge_models(base, tasks, method=method, options=options) if method != "slerp" else merge_models(base, tasks[:1], method=method, options=options)
    assert str(err.value) == message


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"unknown merge method 'tie'\. Did you mean 'ties'"):
        merge_models({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], method="tie")


def test_overflowing_merge_names_the_tensor():
    from taskloc.errors import CheckpointError

    base = {"a": torch.zeros(3), "b": torch.zeros(2)}
    task = {"a": torch.ones(3), "b": torch.tensor([3e38, 0.0])}
    with pytest.raises(CheckpointError, match=r"merging tensor 'b' with task_arithmetic overflows float32 \(NaN or Inf\); lower --lambda"):
        merge_models(base, [task], method="task_arithmetic", options={"lambda_": 2})
