"""Steering on TinyLM: the layer and sign convention, the scoped hook, gamma from a KL budget."""
import pytest
import torch

from taskloc.errors import ConfigError, DataError
from taskloc.hooks import capture
from taskloc.steering.calibrate import calibrate_gamma, mean_kl
from taskloc.steering.extract import Pair, extract_vector, pair_states
from taskloc.steering.inject import steering
from taskloc.steering.text import group_by_length, prompt_ids
from taskloc.steering.vector import SteeringVector, load_vector

PAIRS = [Pair(f"Q:{a}+{b}=", f"{(a + b) % 10}", f"{a}+{b}={(a + b) % 10}") for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 9), (8, 8)]]


def test_vector_is_the_mean_difference_at_the_block_output(tiny_model):
    vec = extract_vector(tiny_model, PAIRS, layer=0)
    direct = []
    for p in PAIRS:
        rows = []
        for completion in (p.positive, p.negative):
            ids = torch.tensor([prompt_ids(tiny_model, p.prompt + completion)])
            with capture(tiny_model, ["blocks.1.hook_resid_pre"]) as store:  # what block 1 reads = block 0's output
                tiny_model(ids)
            rows.append(store["blocks.1.hook_resid_pre"][0, -1])
        direct.append(rows[0] - rows[1])
    assert torch.allclose(vec.vector, torch.stack(direct).mean(0), atol=1e-6)
    assert (vec.layer, vec.n_pairs, vec.method, vec.site) == (0, len(PAIRS), "last", "blocks.0.hook_resid_post")


def test_steering_edits_the_block_output_at_the_last_position_only(tiny_model):
    vec = extract_vector(tiny_model, PAIRS, layer=0)
    ids = torch.tensor([prompt_ids(tiny_model, "Q:1+2=")])
    sites = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre"]
    with capture(tiny_model, sites) as plain:
        tiny_model(ids)
    plain = dict(plain)
    with steering(tiny_model, vec, 2.0), capture(tiny_model, sites) as steered:
        tiny_model(ids)
    assert torch.equal(steered["blocks.0.hook_resid_mid"], plain["blocks.0.hook_resid_mid"])  # inside block 0: untouched
    after, before = steered["blocks.1.hook_resid_pre"], plain["blocks.1.hook_resid_pre"]
    assert torch.equal(after[:, :-1], before[:, :-1])
    assert torch.allclose(after[0, -1], before[0, -1] + 2.0 * vec.vector, atol=1e-6)


def test_positive_gamma_moves_the_negatives_onto_the_positives(tiny_model):
    """Sign convention: at gamma = 1 the steered mean negative state is the mean positive one."""
    vec = extract_vector(tiny_model, PAIRS, layer=1)
    pos = pair_states(tiny_model, [(p.prompt, p.positive) for p in PAIRS], 1)
    with steering(tiny_model, vec, 1.0):
        neg_steered = pair_states(tiny_model, [(p.prompt, p.negative) for p in PAIRS], 1)
    with steering(tiny_model, vec, -1.0):
        neg_away = pair_states(tiny_model, [(p.prompt, p.negative) for p in PAIRS], 1)
    assert torch.allclose(neg_steered.mean(0), pos.mean(0), atol=1e-5)
    assert (neg_away.mean(0) - pos.mean(0)).norm() > (neg_steered.mean(0) - pos.mean(0)).norm() + vec.norm


def test_gamma_zero_is_bit_identical_and_the_hook_is_always_removed(tiny_model):
    vec = extract_vector(tiny_model, PAIRS, layer=1)
    ids = torch.tensor([prompt_ids(tiny_model, p.prompt) for p in PAIRS[:4]])
    plain = tiny_model.generate(ids, 12, eos_id=1)
    with steering(tiny_model, vec, 0.0):
        zero = tiny_model.generate(ids, 12, eos_id=1)
        logits0 = tiny_model(ids)
    assert torch.equal(plain, zero) and torch.equal(logits0, tiny_model(ids))
    with pytest.raises(RuntimeError), steering(tiny_model, vec, 50.0):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in tiny_model.modules())
    with steering(tiny_model, vec, 50.0):
        far = tiny_model(ids)
    assert not torch.equal(far, logits0)


def test_pca_agrees_with_the_mean_in_sign_and_projection(tiny_model):
    mean = extract_vector(tiny_model, PAIRS, layer=1).vector
    pca = extract_vector(tiny_model, PAIRS, layer=1, method="pca").vector
    assert float(pca @ mean) > 0
    mean_states = extract_vector(tiny_model, PAIRS, layer=1, method="mean")
    assert mean_states.method == "mean" and not torch.allclose(mean_states.vector, mean)


def test_gamma_from_a_kl_budget_is_the_largest_within_it(tiny_model):
    vec = extract_vector(tiny_model, PAIRS, layer=1)
    batches = [ids for _, ids in group_by_length([prompt_ids(tiny_model, p.prompt) for p in PAIRS])]
    assert mean_kl(tiny_model, vec, 0.0, batches) == 0.0
    cal = calibrate_gamma(tiny_model, vec, batches, budget=1e-3)
    assert cal.reached and cal.gamma > 0 and cal.kl <= 1e-3
    beyond = min(g for g, kl in cal.trace if kl > 1e-3)
    assert beyond - cal.gamma < 0.01 * beyond  # the bisection closed in on the budget's edge
    neg = calibrate_gamma(tiny_model, vec, batches, budget=1e-3, sign=-1)
    assert neg.gamma < 0 and neg.kl <= 1e-3


def test_bad_pairs_and_layers_are_clear_errors(tiny_model):
    with pytest.raises(DataError, match="at least 2 pairs"):
        extract_vector(tiny_model, PAIRS[:1], layer=0)
    with pytest.raises(DataError, match="non-empty"):
        extract_vector(tiny_model, [*PAIRS[:2], Pair("Q:1=", "", "x")], layer=0)
    with pytest.raises(ConfigError, match="layer 2 is out of range.*0..1"):
        extract_vector(tiny_model, PAIRS, layer=2)
    with pytest.raises(ConfigError, match="hidden size is 32"):
        SteeringVector(torch.ones(16), 0, 2, "last", "x").check_fits(tiny_model)


def test_vector_file_round_trip_keeps_metadata(tiny_model, tmp_path):
    vec = extract_vector(tiny_model, PAIRS, layer=1)
    back = load_vector(vec.save(tmp_path / "v.safetensors"))
    assert torch.equal(back.vector, vec.vector) and back.meta() == vec.meta()
    assert back.model_fingerprint.startswith("sha256:")
