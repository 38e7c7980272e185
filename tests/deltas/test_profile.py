"""One grouping by layer and module kind for the streaming report and the studies' in-memory deltas."""
import pytest
import torch

from taskloc.deltas import GRID, delta_stats
from taskloc.deltas.inmemory import tensor_profile
from taskloc.deltas.profile import group_label


def _pair():
    g = torch.Generator().manual_seed(0)
    shapes = {"tok_emb.weight": (10, 4), "blocks.1.attn.qkv.weight": (12, 4), "blocks.0.mlp.fc_in.weight": (8, 4),
              "blocks.0.attn.qkv.weight": (12, 4), "blocks.0.ln_1.weight": (4,), "unembed.weight": (10, 4)}
    base = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    tuned = {n: b + torch.randn(b.shape, generator=g) * (i + 1) for i, (n, b) in enumerate(base.items())}
    return base, tuned


def test_in_memory_profile_equals_the_streaming_report_groups():
    base, tuned = _pair()
    deltas = {n: tuned[n] - base[n] for n in base}
    report = delta_stats(base, tuned)
    prof = tensor_profile(deltas)
    for axis in ("layer", "kind"):
        streamed = {group_label(axis, r[axis]): r for r in report.profile[axis]}
        assert list(prof[axis]) == list(streamed)  # same groups in the same order
        for label, shares in prof[axis].items():
            assert shares["param_share"] == streamed[label]["param_share"]
            assert shares["energy_share"] == pytest.approx(streamed[label]["energy_share"], rel=1e-5)


def test_groups_order_and_shares_by_hand():
    deltas = {"tok_emb.weight": torch.full((10,), 1.0), "blocks.1.attn.qkv.weight": torch.full((5,), 2.0),
              "blocks.0.mlp.fc_in.weight": torch.full((5,), 3.0), "unembed.weight": torch.zeros(20)}
    energy = {"embed": 10.0, "attn_qkv": 20.0, "mlp_in": 45.0, "unembed": 0.0}
    prof = tensor_profile(deltas)
    # blocks in order, then what lies outside them; kinds in names.KINDS order
    assert list(prof["layer"]) == ["block 0", "block 1", "outside blocks"]
    assert list(prof["kind"]) == ["embed", "unembed", "attn_qkv", "mlp_in"]
    for kind, e in energy.items():
        assert prof["kind"][kind]["energy_share"] == pytest.approx(e / 75.0, abs=1e-15)
    assert prof["layer"]["outside blocks"] == {"energy_share": pytest.approx(10 / 75), "param_share": 30 / 40}
    assert prof["layer"]["block 0"] == {"energy_share": pytest.approx(45 / 75), "param_share": 5 / 40}


def test_the_studies_curve_grid_is_the_delta_grid():
    assert GRID == (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
