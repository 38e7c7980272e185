"""Sparsity metrics against hand-computed values, and the dense Gaussian null against sampling."""
import math

import pytest
import torch

from taskloc import metrics
from taskloc.deltas.null import GINI_HALF_NORMAL, gaussian_null_curve, gaussian_null_gini, gaussian_null_hoyer


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
                        "l0", "gini", "hoyer", "eff_rank"}
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
