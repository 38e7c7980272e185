"""capture with reducers: running statistics equal a direct numpy computation over every stored
activation, padding excluded; hooks never outlive the block."""
import numpy as np
import pytest
import torch

from taskloc.activations.reducers import LastTokenScalars, RunningMoments, last_positions
from taskloc.errors import HookError
from taskloc.hooks import Reduction, capture, resolve_sites
from taskloc.metrics import sparsity_profile

SITES = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"]


def _batches(vocab: int, left_pad: bool = False):
    """Three padded batches of different sizes and widths: (ids (B, T), mask (B, T) bool)."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for b, t in ((4, 9), (3, 5), (5, 12)):
        ids = torch.randint(2, vocab, (b, t), generator=gen)
        lengths = torch.randint(1, t + 1, (b,), generator=gen)
        lengths[0] = t  # one full row per batch
        pos = torch.arange(t)[None, :]
        mask = pos >= t - lengths[:, None] if left_pad else pos < lengths[:, None]
        out.append((ids, mask))
    return out


def _stored(model, batches):
    """Every batch's full activations, kept with plain capture (the reference)."""
    kept = {s: [] for s in SITES}
    for ids, _ in batches:
        with torch.no_grad(), capture(model, SITES) as acts:
            model(ids)
        for s in SITES:
            kept[s].append(acts[s].double().numpy())
    return kept


def _reduced(model, batches, reducer):
    with torch.no_grad(), capture(model, SITES, reducer=reducer) as red:
        for ids, mask in batches:
            red.mask = mask
            model(ids)
    return red


@pytest.mark.parametrize("left_pad", [False, True])
def test_running_moments_equal_numpy_over_real_tokens(tiny_model, left_pad):
    batches = _batches(tiny_model.vocab_size, left_pad)
    kept = _stored(tiny_model, batches)
    red = _reduced(tiny_model, batches, RunningMoments)
    assert isinstance(red, Reduction) and list(red) == SITES
    for s in SITES:
        rows = np.concatenate([x[m.numpy()] for x, (_, m) in zip(kept[s], batches)])  # (N_real, D)
        stats = red[s]
        assert stats.count == rows.shape[0] == sum(int(m.sum()) for _, m in batches)
        assert stats.mean.dtype == torch.float64
        np.testing.assert_allclose(stats.mean.numpy(), rows.mean(0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(stats.variance().numpy(), rows.var(0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(stats.variance(ddof=1).numpy(), rows.var(0, ddof=1), rtol=0, atol=1e-10)
    # padding really is excluded: the unmasked mean differs
    everything = np.concatenate([x.reshape(-1, x.shape[-1]) for x in kept[SITES[0]]])
    assert np.abs(everything.mean(0) - red[SITES[0]].mean.numpy()).max() > 1e-4


@pytest.mark.parametrize("left_pad", [False, True])
def test_last_token_moments_and_scalars_equal_numpy(tiny_model, left_pad):
    batches = _batches(tiny_model.vocab_size, left_pad)
    kept = _stored(tiny_model, batches)
    last = {s: np.concatenate([x[np.arange(len(x)), _last_index(m.numpy())] for x, (_, m) in zip(kept[s], batches)]) for s in SITES}

    moments = _reduced(tiny_model, batches, lambda: RunningMoments(last_token=True))
    scalars = _reduced(tiny_model, batches, lambda: LastTokenScalars(sparsity_profile))
    norms = _reduced(tiny_model, batches, lambda: LastTokenScalars(lambda rows: rows.norm(dim=-1)))
    for s in SITES:
        rows = last[s]  # (N_prompts, D)
        assert moments[s].count == len(rows) == 12
        np.testing.assert_allclose(moments[s].mean.numpy(), rows.mean(0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(moments[s].variance().numpy(), rows.var(0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(norms[s].scalars().numpy(), np.linalg.norm(rows, axis=1), rtol=0, atol=1e-10)
        profile = scalars[s].scalars()
        expected = sparsity_profile(torch.from_numpy(rows))
        assert set(profile) == set(expected) and scalars[s].count == 12
        for name in expected:
            np.testing.assert_allclose(profile[name].numpy(), expected[name].numpy(), rtol=0, atol=1e-10)


def _last_index(mask: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(row)[-1] for row in mask])


def test_last_positions_right_left_and_none():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.bool)
    assert last_positions(mask, 3, 4).tolist() == [1, 3, 2]
    assert last_positions(None, 2, 4).tolist() == [3, 3]
    with pytest.raises(HookError, match="row 1 of the padding mask has no real token"):
        last_positions(torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), 2, 2)


def test_chan_merge_survives_a_large_offset():
    """A running sum of squares loses every digit of a variance of 1 around a mean of 1e9; the
    pairwise update keeps it."""
    gen = torch.Generator().manual_seed(0)
    data = 1e9 + torch.randn(6, 50, 3, generator=gen, dtype=torch.float64)  # 6 batches of (50, 1 token, 3)
    stats = RunningMoments()
    for chunk in data:
        stats.update(chunk[:, None, :], None)
    rows = data.reshape(-1, 3).numpy()
    np.testing.assert_allclose(stats.mean.numpy(), rows.mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats.variance().numpy(), rows.var(0), rtol=1e-6)
    naive = (rows**2).mean(0) - rows.mean(0) ** 2  # what the pairwise update avoids
    assert np.abs(naive - rows.var(0)).max() > 1.0
    other, half = RunningMoments(), RunningMoments()
    for chunk in data[:3]:
        half.update(chunk[:, None, :], None)
    for chunk in data[3:]:
        other.update(chunk[:, None, :], None)
    half.merge(other)
    np.testing.assert_allclose(half.variance().numpy(), rows.var(0), rtol=1e-6)


def test_reducer_hooks_removed_on_exception_and_plain_capture_keeps_last(tiny_model):
    ids = torch.randint(2, tiny_model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="boom"):
        with capture(tiny_model, SITES, reducer=RunningMoments):
            tiny_model(ids)
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in tiny_model.modules())
    with pytest.raises(HookError, match="padding mask has shape"):
        with capture(tiny_model, SITES, reducer=RunningMoments) as red:
            red.mask = torch.ones(2, 5, dtype=torch.bool)  # one token short
            tiny_model(ids)
    assert not any(m._forward_hooks for m in tiny_model.modules())
    with torch.no_grad(), capture(tiny_model, SITES[:1]) as acts:
        tiny_model(ids[:1])
        tiny_model(ids)
    assert acts[SITES[0]].shape == (2, 6, tiny_model.d_model)  # the last pass, in full


def test_reducer_errors_name_the_site(tiny_model):
    ids = torch.randint(2, tiny_model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(HookError) as err:
        with capture(tiny_model, ["blocks.0.attn.hook_pattern"], reducer=RunningMoments):
            tiny_model(ids)
    assert str(err.value) == ("site blocks.0.attn.hook_pattern: reducers read (batch, tokens, features) sites, but this one "
                              "holds shape (2, 2, 6, 6) (the attention pattern is (B, H, Tq, Tk)); capture it without a reducer.")
    with pytest.raises(HookError, match=r"returned shape \(2, 32\) for 2 rows; it must hold one scalar per row"):
        with capture(tiny_model, SITES[:1], reducer=lambda: LastTokenScalars(lambda rows: rows)):
            tiny_model(ids)
    with pytest.raises(HookError, match="needs more than 0 token"):
        RunningMoments().variance()
    assert not any(m._forward_hooks for m in tiny_model.modules())


def test_reducer_over_glob_sites_sees_every_pass(tiny_model):
    sites = resolve_sites(tiny_model, ["blocks.*.hook_resid_post"])
    with torch.no_grad(), capture(tiny_model, sites, reducer=RunningMoments) as red:
        for seed in range(4):
            tiny_model(torch.randint(2, tiny_model.vocab_size, (3, 7), generator=torch.Generator().manual_seed(seed)))
    assert [red[s].count for s in sites] == [4 * 3 * 7] * len(sites)
