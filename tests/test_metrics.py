"""Sparsity metrics against hand-computed values, and the dense Gaussian null against sampling."""
import math

import numpy as np
import pytest
import torch

from taskloc import metrics
from taskloc.deltas.null import GINI_HALF_NORMAL, gaussian_null_curve, gaussian_null_gini, gaussian_null_hoyer
from taskloc.errors import ConfigError


def test_topk_mass_by_hand():
    x = torch.tensor([[1.0, -4.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    assert metrics.topk_l1_mass(x, 0.25).tolist() == pytest.approx([0.4, 0.25])  # 4 / 10
    assert metrics.topk_l1_mass(x, 0.5).tolist() == pytest.approx([0.7, 0.5])  # (4 + 3) / 10
    assert metrics.topk_energy(x, 0.25).tolist() == pytest.approx([16 / 30, 0.25])  # 16 / (1 + 16 + 4 + 9)
    # 0.3 * 4 = 1.2 entries: the largest plus a fifth of the next
    assert metrics.topk_l1_mass(x, 0.3)[0].item() == pytest.approx((4 + 0.2 * 3) / 10)
    assert metrics.topk_l1_mass(x, 1.0).tolist() == pytest.approx([1.0, 1.0])
    assert metrics.topk_l1_mass(x, 0.0).tolist() == pytest.approx([0.0, 0.0])


def test_zero_vector_is_perfectly_dense_not_nan():
    z = torch.zeros(2, 8)
    assert metrics.topk_energy(z, 0.25).tolist() == [0.25, 0.25]
    assert metrics.gini(z).tolist() == [0.0, 0.0]
    assert metrics.hoyer(z).tolist() == [0.0, 0.0]
    assert metrics.normalised_effective_rank(z).tolist() == pytest.approx([1.0, 1.0])
    assert metrics.l0_fraction(z).tolist() == [0.0, 0.0]
    assert metrics.effective_rank(torch.zeros(3, 4)) == 0.0


def test_gini_hoyer_l0_erank_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # sum (2i - 5) a_i / (4 * sum a): (-3*1 - 1*2 + 1*3 + 3*4) / 40 = 0.25; one-hot: 3/4; equal: 0
    assert metrics.gini(x).tolist() == pytest.approx([0.25, 0.75, 0.0])
    assert metrics.hoyer(x)[1:].tolist() == pytest.approx([1.0, 0.0])
    l1, l2 = 10.0, math.sqrt(30.0)
    assert metrics.hoyer(x)[0].item() == pytest.approx((2 - l1 / l2) / (2 - 1))
    # l0: |h| > mean + population std.  one-hot: mean .25, std .433 -> 1 of 4 entries
    assert metrics.l0_fraction(x).tolist() == pytest.approx([0.25, 0.25, 0.0])
    # exp(entropy) / d: [1,1,2] -> p = [1/4, 1/4, 1/2]
    h = -(0.5 * math.log(0.25) + 0.5 * math.log(0.5))
    assert metrics.normalised_effective_rank(torch.tensor([1.0, 1.0, 2.0])).item() == pytest.approx(math.exp(h) / 3)
    assert metrics.normalised_effective_rank(x[1]).item() == pytest.approx(0.25)


def test_effective_rank_of_matrices():
    assert metrics.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    u, v = torch.randn(6, 1), torch.randn(1, 5)
    assert metrics.effective_rank(u @ v) == pytest.approx(1.0, abs=1e-4)
    # singular values 3 and 1: p = (3/4, 1/4)
    m = torch.diag(torch.tensor([3.0, 1.0]))
    assert metrics.effective_rank(m) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_profile_has_every_c1_metric_batched():
    out = metrics.sparsity_profile(torch.randn(3, 64))
    assert set(out) == {"top1_l1", "top1_energy", "top5_l1", "top5_energy", "top10_l1", "top10_energy",
                        "l0", "gini", "hoyer", "eff_rank_norm", "l1_norm", "near_zero", "above_zero"}
    assert all(v.shape == (3,) for v in out.values())


def _sample_shares(sample: torch.Tensor, q: float) -> tuple[float, float]:
    a = sample.abs().double().sort(descending=True).values
    k = int(q * len(a))
    return float(a[:k].sum() / a.sum()), float((a[:k] ** 2).sum() / (a**2).sum())


def test_gaussian_null_matches_a_large_sample_for_one_tensor_and_a_mixture():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(400_000, generator=g) * 0.3
    curve = gaussian_null_curve([400_000], [0.09], [0.01, 0.1])
    for i, q in enumerate([0.01, 0.1]):
        l1, energy = _sample_shares(one, q)
        assert curve["l1"][i] == pytest.approx(l1, abs=3e-3)
        assert curve["energy"][i] == pytest.approx(energy, abs=3e-3)
    # closed form for one tensor: energy share = q + 2 z phi(z) with q = erfc(z / sqrt 2)
    z = 2.5758293035489  # q = 0.01
    assert curve["energy"][0] == pytest.approx(0.01 + 2 * z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), rel=1e-6)
    # a mixture of scales (and a zero tensor) is not one Gaussian: the top entries come from the wide tensor
    mix = torch.cat([torch.randn(300_000, generator=g) * 1.0, torch.randn(100_000, generator=g) * 5.0, torch.zeros(50_000)])
    curve = gaussian_null_curve([300_000, 100_000, 50_000], [1.0, 25.0, 0.0], [0.01, 0.2])
    for i, q in enumerate([0.01, 0.2]):
        l1, energy = _sample_shares(mix, q)
        assert curve["l1"][i] == pytest.approx(l1, abs=3e-3)
        assert curve["energy"][i] == pytest.approx(energy, abs=3e-3)
    a = mix.abs().double().sort().values
    n = len(a)
    sample_gini = float(((2 * torch.arange(1, n + 1, dtype=torch.float64) - n - 1) * a).sum() / (n * a.sum()))
    assert gaussian_null_gini([300_000, 100_000, 50_000], [1.0, 25.0, 0.0]) == pytest.approx(sample_gini, abs=3e-3)
    assert gaussian_null_gini([10, 20], [4.0, 4.0]) == pytest.approx(GINI_HALF_NORMAL, rel=1e-12)
    assert gaussian_null_hoyer([10**6], [1.0]) == pytest.approx(1 - math.sqrt(2 / math.pi), abs=1e-3)


def test_null_of_an_all_zero_delta_is_the_uniform_curve():
    assert gaussian_null_curve([10, 5], [0.0, 0.0], [0.01, 0.5]) == {"l1": [0.01, 0.5], "energy": [0.01, 0.5]}


# -- both conventions against a direct numpy computation (issue 9) -------------------------------

def _np_profile(h: np.ndarray, convention: str, fractions=(0.01, 0.05, 0.10), tol=0.01) -> dict[str, float]:
    """The definitions, written out once more in plain numpy (REFERENCE C1 and metrics' docstring)."""
    paper = convention == "paper"
    a = np.abs(h.astype(np.float64))
    d = a.size
    desc = np.sort(a)[::-1]
    out = {}
    for f in fractions:
        tag = f"top{100 * f:g}"
        for name, v, total in ((f"{tag}_l1", desc, a.sum()), (f"{tag}_energy", desc**2, (a**2).sum())):
            if paper:
                k = max(1, int(d * f))
                out[name] = v[:k].sum() / total if total > 0 else 0.0
            else:
                whole = math.floor(f * d)
                top = v[:whole].sum() + ((f * d - whole) * v[whole] if whole < d else 0.0)
                out[name] = top / total if total > 0 else f
    std = a.std(ddof=1) if paper else a.std(ddof=0)
    out["l0"] = float(np.mean(a > a.mean() + std))
    asc = np.sort(a)
    i = np.arange(1, d + 1)
    out["gini"] = 2 * (i * asc).sum() / (d * asc.sum()) - (d + 1) / d if asc.sum() > 0 else 0.0
    l1, l2 = a.sum(), np.sqrt((a**2).sum())
    out["hoyer"] = (math.sqrt(d) - l1 / l2) / (math.sqrt(d) - 1) if l2 > 0 and d > 1 else 0.0
    energy = a**2
    if paper:
        p = energy / energy.sum() + 1e-10 if energy.sum() > 0 else None
        out["eff_rank"] = float(np.exp(-(p * np.log(p)).sum())) if p is not None else 0.0
    else:
        p = energy / energy.sum() if energy.sum() > 0 else np.full(d, 1.0 / d)
        nz = p[p > 0]
        out["eff_rank_norm"] = float(np.exp(-(nz * np.log(nz)).sum())) / d
    out["l1_norm"] = l1
    out["near_zero"] = float(np.mean(a <= tol * np.sqrt(np.mean(a**2))))
    out["above_zero"] = float(np.mean(h > 0))
    return out


def _crafted(d: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(d)
    one_hot = np.zeros(d)
    one_hot[d // 3] = -2.5
    heavy = rng.standard_t(2, size=d)
    heavy[: d // 4] = 0.0  # exact zeros among heavy tails
    return {"one-hot": one_hot, "constant": np.full(d, 0.7), "gaussian": rng.standard_normal(d), "all-zero": np.zeros(d),
            "heavy+zeros": heavy, "ties": np.repeat(rng.standard_normal(max(1, d // 5)), 5)[:d],
            "relu-like": np.maximum(rng.standard_normal(d), 0.0) * 3.0}


@pytest.mark.parametrize("convention", metrics.CONVENTIONS)
@pytest.mark.parametrize("d", [7, 100, 257, 1000])
def test_profile_equals_numpy_single_rows(convention, d):
    for name, h in _crafted(d).items():
        got = metrics.metric_profile(torch.from_numpy(h), convention)
        want = _np_profile(h, convention)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].shape == () and got[key].item() == pytest.approx(value, abs=1e-6, rel=1e-6), (name, key)


@pytest.mark.parametrize("convention", metrics.CONVENTIONS)
def test_profile_is_batched_row_by_row_in_float32_and_float64(convention):
    rows = np.stack(list(_crafted(300).values()) + [np.random.default_rng(1).normal(size=300) * 10 for _ in range(5)])
    for dtype in (torch.float64, torch.float32):
        x = torch.from_numpy(rows).to(dtype)
        got = metrics.metric_profile(x, convention, fractions=(0.01, 0.07, 0.29))
        for i, h in enumerate(x.double().numpy()):
            want = _np_profile(h, convention, fractions=(0.01, 0.07, 0.29))
            for key, value in want.items():
                assert got[key].shape == (len(rows),)
                assert got[key][i].item() == pytest.approx(value, abs=1e-6, rel=1e-6), (i, key, dtype)


def test_paper_convention_by_hand():
    one_hot = torch.zeros(100)
    one_hot[3] = 5.0
    p = metrics.metric_profile(one_hot, "paper")
    assert p["top1_energy"].item() == 1.0 and p["top1_l1"].item() == 1.0
    # unbiased std of the one-hot |h|/5: sqrt(0.99 / 99) = 0.1, threshold 0.11 -> 1 entry of 100
    assert p["l0"].item() == 0.01
    # p = (1 + e, 99 x e), e = 1e-10: -sum p log p = -e + 99 e (-log e) to first order in e
    assert p["eff_rank"].item() == pytest.approx(1 + 1e-10 * (99 * -math.log(1e-10) - 1), rel=1e-12)
    flat = metrics.metric_profile(torch.ones(100), "paper")
    assert flat["eff_rank"].item() == pytest.approx(100.0, rel=1e-7) and flat["top1_energy"].item() == pytest.approx(0.01)
    assert metrics.metric_profile(torch.ones(100), "taskloc")["eff_rank_norm"].item() == pytest.approx(1.0)
    # whole entries: d = 150 at 1% keeps int(1.5) = 1 entry (taskloc: 1.5 entries); int() as Python truncates 100 * 0.29
    assert metrics.paper_k(150, 0.01) == 1 and metrics.paper_k(10, 0.01) == 1 and metrics.paper_k(100, 0.29) == 28
    ramp = torch.arange(1.0, 151.0)
    assert metrics.metric_profile(ramp, "paper")["top1_l1"].item() == pytest.approx(150 / ramp.sum().item())
    assert metrics.metric_profile(ramp, "taskloc")["top1_l1"].item() == pytest.approx((150 + 0.5 * 149) / ramp.sum().item())
    zero = metrics.metric_profile(torch.zeros(2, 50), "paper")
    assert all(zero[k].tolist() == [0.0, 0.0] for k in zero if k != "near_zero") and zero["near_zero"].tolist() == [1.0, 1.0]


def test_l0_std_convention_decides_borderline_entries():
    # |h| = (0, 0, 0, 3): mean .75; population std 1.299 -> cut 2.05; unbiased 1.5 -> cut 2.25; both count the 3
    # |h| = (1, 1, 1, 2.1): mean 1.275; population std .476 -> cut 1.751 (2.1 counts); unbiased .55 -> cut 1.825 (counts)
    # |h| = (1, 1, 2, 2.2): mean 1.55; population std .559 -> cut 2.109 (2.2 counts); unbiased .645 -> cut 2.195 (counts)
    # |h| = (1, 1, 2, 2.15): population cut 2.084 (counts), unbiased cut 2.168 (does not)
    x = torch.tensor([1.0, 1.0, 2.0, 2.15])
    assert metrics.l0_fraction(x).item() == 0.25 and metrics.l0_fraction(x, correction=1).item() == 0.0
    assert metrics.metric_profile(x, "taskloc")["l0"].item() == 0.25 and metrics.metric_profile(x, "paper")["l0"].item() == 0.0
    assert metrics.l0_fraction(torch.tensor([4.0]), correction=1).item() == 0.0  # d = 1: no std, nothing counts


def test_definitions_name_every_key_and_bad_conventions_are_refused():
    for convention in metrics.CONVENTIONS:
        assert set(metrics.metric_definitions(convention)) == set(metrics.metric_profile(torch.randn(64), convention))
    assert "unbiased" in metrics.metric_definitions("paper")["l0"] and "population" in metrics.metric_definitions()["l0"]
    with pytest.raises(ConfigError, match="unknown metric convention 'authors'; choose 'taskloc' \\(ours\\) or 'paper'"):
        metrics.metric_profile(torch.randn(8), "authors")


def test_near_zero_and_above_zero_by_hand():
    x = torch.tensor([[0.0, 0.001, -0.5, 2.0], [1.0, -1.0, 1.0, -1.0]])
    # rms of row 0: sqrt((1e-6 + .25 + 4) / 4) = 1.0308; 1% of it 0.0103 -> 0 and 0.001 are near zero
    assert metrics.near_zero_fraction(x).tolist() == [0.5, 0.0]
    assert metrics.positive_fraction(x).tolist() == [0.5, 0.5]
    assert metrics.l1_norm(x).tolist() == pytest.approx([2.501, 4.0])
