import json

import pytest
import torch

from taskloc.cli import main
from taskloc.deltas import concentration_curve, global_topk_mask
from taskloc.deltas.inmemory import random_mask, tensor_profile
from taskloc.studies.grafting import Scores, gaussian_like, graft, share_kept
from taskloc.studies.weight_delta import jaccard


def state(seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    sd = {"blocks.0.attn.qkv.weight": torch.randn(6, 4, generator=g), "blocks.1.mlp.fc_in.weight": torch.randn(5, 3, generator=g),
          "tok_emb.weight": torch.randn(7, 2, generator=g)}
    if ties:
        for v in sd.values():
            v.copy_(torch.round(v * 2) / 2)  # many equal magnitudes
    return sd


def test_global_topk_matches_sorting_with_deterministic_ties():
    deltas = state(0, ties=True)
    flat = torch.cat([v.abs().flatten() for v in deltas.values()])
    for frac in (0.0, 0.1, 0.37, 1.0):
        mask = global_topk_mask(deltas, frac)
        k = round(frac * flat.numel())
        chosen = torch.cat([m.flatten() for m in mask.values()])
        assert int(chosen.sum()) == k
        if 0 < k < flat.numel():
            threshold = torch.sort(flat, descending=True).values[k - 1]
            assert bool((flat[chosen] >= threshold).all()) and bool((flat[~chosen] <= threshold).all())
            tied = (flat == threshold).nonzero().flatten()
            taken = tied[chosen[tied]]
            assert taken.tolist() == tied[: len(taken)].tolist()  # earlier positions win ties


def test_random_mask_has_exact_count_and_is_seeded():
    shapes = {k: v.shape for k, v in state(0).items()}
    a, b, c = random_mask(shapes, 0.25, seed=1), random_mask(shapes, 0.25, seed=1), random_mask(shapes, 0.25, seed=2)
    total = sum(v.numel() for v in a.values())
    assert sum(int(v.sum()) for v in a.values()) == round(0.25 * total)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


def test_graft_full_is_tuned_and_empty_is_base():
    base, tuned = state(0), state(1)
    deltas = {k: tuned[k] - base[k] for k in base}
    full = graft(base, deltas, global_topk_mask(deltas, 1.0))
    empty = graft(base, deltas, global_topk_mask(deltas, 0.0))
    for k in base:
        torch.testing.assert_close(full[k], tuned[k], rtol=0, atol=1e-6)
        assert torch.equal(empty[k], base[k])
    half = global_topk_mask(deltas, 0.5)
    scaled = graft(base, deltas, half, scale=2.0)
    for k in base:
        torch.testing.assert_close(scaled[k][half[k]], (base[k] + 2 * deltas[k])[half[k]])
        assert torch.equal(scaled[k][~half[k]], base[k][~half[k]])


def test_share_kept_on_each_measure():
    base, tuned = Scores(exact=0.2, token=0.5, loss=2.0), Scores(exact=0.8, token=0.9, loss=1.0)
    graft_ = Scores(exact=0.5, token=0.7, loss=1.25)
    assert share_kept(graft_, base, tuned, "exact") == pytest.approx(0.5)
    assert share_kept(graft_, base, tuned, "token") == pytest.approx(0.5)
    assert share_kept(graft_, base, tuned, "loss") == pytest.approx(0.75)
    assert share_kept(graft_, base, base, "exact") != share_kept(graft_, base, base, "exact")  # no gain: nan, never a share


def test_gaussian_control_has_each_tensors_rms():
    delta = {"a": torch.full((200, 50), 0.5), "b": torch.full((300, 40), -2.0)}
    g = gaussian_like(delta, seed=3)
    assert float(g["a"].square().mean().sqrt()) == pytest.approx(0.5, rel=0.03)
    assert float(g["b"].square().mean().sqrt()) == pytest.approx(2.0, rel=0.03)
    assert torch.equal(g["a"], gaussian_like(delta, seed=3)["a"])


def test_jaccard_and_concentration():
    a = {"x": torch.tensor([True, True, False, False])}
    b = {"x": torch.tensor([True, False, True, False])}
    assert jaccard(a, b) == pytest.approx(1 / 3)
    d = {"x": torch.tensor([3.0, 0.0, 4.0, 0.0])}
    curve = concentration_curve(d, [0.25, 0.5, 1.0])
    assert curve["energy"] == pytest.approx([16 / 25, 1.0, 1.0])
    assert curve["l1"] == pytest.approx([4 / 7, 1.0, 1.0])
    zero = concentration_curve({"x": torch.zeros(4)}, [0.5])
    assert zero["energy"] == pytest.approx([0.5]) and zero["l1"] == pytest.approx([0.5])  # zero delta counts as dense


def test_profile_shares_sum_to_one():
    prof = tensor_profile(state(3))
    for axis in ("kind", "layer"):
        assert sum(v["energy_share"] for v in prof[axis].values()) == pytest.approx(1.0)
        assert sum(v["param_share"] for v in prof[axis].values()) == pytest.approx(1.0)
    assert set(prof["kind"]) == {"attn_qkv", "mlp_in", "embed"}
    assert set(prof["layer"]) == {"block 0", "block 1", "outside blocks"}


def test_weight_delta_study_end_to_end(tmp_path):
    out = tmp_path / "wd"
    main(["run", "weight-delta", "--preset", "quick", "--out", str(out), "--set", "pretrain.steps=30",
          "--set", "studies.weight-delta.finetune.steps=8", "--set", "studies.weight-delta.min_gain=0.0",
          "--set", 'studies.weight-delta.regimes=["adamw", "sgd-frozen", "lora"]',
          "--set", "studies.weight-delta.regime_seeds=1"])
    doc = json.loads((out / "results.json").read_text())
    claims = [c for c in doc["claims"] if c["study"] == "weight-delta"]
    assert [c["id"] for c in claims] == ["C0"] * 4
    # The quick base is not competent, so every C0 verdict must be downgraded, never asserted.
    assert all(c["verdict"] == "inconclusive" and "downgraded" in c["reason"] for c in claims)
    assert [p["id"] for p in doc["preconditions"]] == ["base-competent", "base-ood-gap"]
    wd = doc["studies"]["weight-delta"]
    metrics = wd["metrics"]
    assert set(metrics["top_energy"]) == {"fraction", "task", "shuffled", "null"}
    assert metrics["target_level"] == 3 and metrics["finetune_levels"] == [1, 2, 3]
    # the first regime 2 tasks x 2 seeds, the others (regime_seeds=1) 2 tasks x 1 seed
    assert sorted((r["regime"], r["seed"]) for r in metrics["runs"]) == sorted(
        [("adamw", 0), ("adamw", 0), ("adamw", 1), ("adamw", 1), ("lora", 0), ("lora", 0), ("sgd-frozen", 0), ("sgd-frozen", 0)])
    full = [r for r in metrics["grafting"] if r["k"] == 1.0 and r["selector"] in ("magnitude", "random")]
    for row in full:  # grafting everything back reproduces the fine-tune: share kept 1 on every measure that gained
        for m in ("exact", "token", "loss"):
            if row[m]["n_tasks"]:
                assert row[m]["mean"] == pytest.approx(1.0, abs=1e-4)
    names = {f["name"] for f in wd["figures"]}
    assert names == {"concentration", "grafting-exact", "grafting-token", "grafting-loss", "learned-vs-controls", "support",
                     "imposed", "profile-kind", "profile-layer", "grafting-regimes"}
    assert any("downgraded" in n for n in wd["notes"])
    assert {r[0] for r in wd["tables"][-1]["rows"]} == {"adamw", "sgd-frozen", "lora"}
    assert [r["regime"] for r in metrics["regime_summary"]] == ["adamw", "sgd-frozen", "lora"]
    assert any(n.startswith("Regimes compared") and "lora: update" in n for n in wd["notes"])
