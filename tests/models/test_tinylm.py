import pytest
import torch

from taskloc.errors import ConfigError, HookError, UnknownNameError
from taskloc.hooks import capture, hooks, resolve_sites, site_names
from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import EOS, VOCAB_SIZE, Example, decode, encode
from taskloc.tasks.scoring import exact_match


def test_every_design_site_exists(tiny_model):
    names = set(site_names(tiny_model))
    for i in range(2):
        for site in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                     "attn.hook_pattern", "mlp.hook_post"):
            assert f"blocks.{i}.{site}" in names
    assert "ln_final.hook_normalized" in names


def test_site_shapes_and_pattern_rows(tiny_model):
    x = torch.randint(2, VOCAB_SIZE, (3, 11))
    with capture(tiny_model, ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post"]) as acts:
        tiny_model(x)
    assert acts["blocks.1.hook_resid_post"].shape == (3, 11, 32)
    assert acts["blocks.0.mlp.hook_post"].shape == (3, 11, 64)
    pattern = acts["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (3, 2, 11, 11)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 2, 11))
    assert torch.all(pattern.triu(diagonal=1) == 0)  # causal


def test_explicit_pattern_path_matches_fused_path(tiny_model):
    x = torch.randint(2, VOCAB_SIZE, (2, 9))
    fused = tiny_model(x)
    with hooks(tiny_model, {"blocks.0.attn.hook_pattern": lambda p, n: None, "blocks.1.attn.hook_pattern": lambda p, n: None}):
        explicit = tiny_model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_hooks_replace_and_are_always_removed(tiny_model):
    x = torch.randint(2, VOCAB_SIZE, (2, 7))
    before = tiny_model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(tiny_model, {"blocks.0.hook_resid_post": lambda h, n: h + 5.0}):
            steered = tiny_model(x)
            assert not torch.allclose(steered, before)
            raise RuntimeError("boom")
    assert torch.equal(tiny_model(x), before)
    assert not any(m._forward_hooks for m in tiny_model.modules())


def test_bad_site_name_suggests(tiny_model):
    with pytest.raises(HookError, match=r"unknown hook site 'blocks.0.hook_resid_pots'.*Did you mean 'blocks.0.hook_resid_post'"):
        with hooks(tiny_model, {"blocks.0.hook_resid_pots": lambda h, n: h}):
            pass
    assert resolve_sites(tiny_model, ["blocks.*.hook_resid_post"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_sites_disabled_is_same_arithmetic(tiny_model):
    cfg = ModelConfig(**{**tiny_model.cfg.to_dict(), "hook_sites": False})
    plain = TinyLM(cfg).eval()
    plain.load_state_dict(tiny_model.state_dict())
    x = torch.randint(2, VOCAB_SIZE, (2, 13))
    assert torch.equal(plain(x), tiny_model(x))


@pytest.mark.parametrize("activation, positional", [("relu", "rope"), ("gelu", "learned"), ("silu", "rope")])
def test_kv_cache_generation_matches_full_recompute(activation, positional):
    torch.manual_seed(1)
    model = TinyLM(ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=32, d_mlp=64,
                               activation=activation, positional=positional)).eval()
    prompt = torch.randint(2, VOCAB_SIZE, (3, 5))
    new = model.generate(prompt, max_new_tokens=8)
    seq = prompt
    for _ in range(8):  # greedy without a cache
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(new, seq[:, 5:])


def test_teacher_forced_exact_match_equals_greedy_decoding(tiny_model):
    # Make greedy decoding stop after k >= 1 tokens: swap the output rows of g[k] and EOS, so the
    # model emits EOS exactly where it used to emit g[k] (and nowhere earlier).
    for prompt in ("A:12+34=", "S:3141>", "R:abcde>", "H:ab,bc|a=", "C:x[yz]w>"):
        g = tiny_model.generate(torch.tensor([encode(prompt)]), max_new_tokens=8)[0]
        ks = [i for i in range(1, 8) if int(g[i]) not in g[:i].tolist() and bool((g[:i] >= 2).all())]
        if ks:
            k = ks[0]
            break
    with torch.no_grad():
        w = tiny_model.unembed.weight
        w[[int(g[k]), EOS]] = w[[EOS, int(g[k])]]
    greedy = tiny_model.generate(torch.tensor([encode(prompt)]), max_new_tokens=8, eos_id=EOS)[0].tolist()
    text = decode(greedy)
    assert greedy[k] == EOS and text == decode(g[:k].tolist())
    wrong_last = text[:-1] + ("x" if text[-1] != "x" else "y")
    hits = exact_match(tiny_model, [Example(prompt, text, 1), Example(prompt, wrong_last, 1),
                                    Example(prompt, text[:-1], 1), Example(prompt, text + "0", 1)])
    assert hits.tolist() == [True, False, False, False]


def test_bad_model_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="d_model=30 is not divisible by model.n_head=4"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ConfigError, match="wrong type"):
        ModelConfig(n_layer="four")
    with pytest.raises(UnknownNameError, match="Did you mean 'dense'"):
        ModelConfig(attention="dens")


def _turns(table: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(table)


def test_rotary_encoding_is_relative():
    # Scores q_i . k_j under RoPE depend only on i - j: shifting both positions leaves them unchanged.
    from taskloc.models.tinylm import apply_rotary, rotary_table

    turns = _turns(rotary_table(32, 8))
    q, k = torch.randn(8), torch.randn(8)
    def score(i, j):
        return float(apply_rotary(q, turns[i]) @ apply_rotary(k, turns[j]))
    assert score(5, 2) == pytest.approx(score(20, 17), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


@pytest.mark.parametrize("head_dim", [8, 7])
def test_rotary_matches_pairwise_rotation_reference(head_dim):
    """Channels (2i, 2i+1) at position t turn by t * 10000^(-2i/Dh), written out with Python floats
    and math.cos/sin, one pair at a time; an odd last channel stays put. Exact up to float32."""
    import math

    from taskloc.models.tinylm import apply_rotary, rotary_table

    x = torch.randn(2, 5, 3, head_dim, dtype=torch.float64)  # (B, T, heads, Dh)
    turns = _turns(rotary_table(5, head_dim).double())[:, None]  # (T, 1, Dh/2)
    out = apply_rotary(x, turns)
    ref = x.clone()
    for b in range(2):
        for t in range(5):
            for h in range(3):
                for i in range(head_dim // 2):
                    angle = t * 10000.0 ** (-2 * i / head_dim)
                    a, c = float(x[b, t, h, 2 * i]), float(x[b, t, h, 2 * i + 1])
                    ref[b, t, h, 2 * i] = a * math.cos(angle) - c * math.sin(angle)
                    ref[b, t, h, 2 * i + 1] = a * math.sin(angle) + c * math.cos(angle)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)  # angles tabulated in float32
    assert torch.equal(out[..., head_dim - 1], x[..., head_dim - 1]) == (head_dim % 2 == 1)


def test_rotary_gradient_is_the_inverse_rotation():
    # A rotation is orthogonal, so the gradient of <g, rotate(x)> with respect to x is the inverse
    # rotation of g; checks the backward of the complex-number path against the math.
    from taskloc.models.tinylm import apply_rotary, rotary_table

    turns = _turns(rotary_table(6, 8))[:, None]  # (T, 1, Dh/2)
    x = torch.randn(2, 6, 4, 8, requires_grad=True)
    g = torch.randn(2, 6, 4, 8)
    (apply_rotary(x, turns) * g).sum().backward()
    torch.testing.assert_close(x.grad, apply_rotary(g, turns.conj()), rtol=0, atol=1e-6)


def test_rotary_half_precision_is_rotated_in_float32():
    from taskloc.models.tinylm import apply_rotary, rotary_table

    turns = _turns(rotary_table(6, 8))[:, None]
    x = torch.randn(2, 6, 4, 8).bfloat16()
    out = apply_rotary(x, turns)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, apply_rotary(x.float(), turns).bfloat16())


def test_exact_match_is_the_same_when_split_for_memory(tiny_model, monkeypatch):
    import taskloc.tasks.scoring as evaluate
    from taskloc.tasks import get_task
    from taskloc.tasks.mixture import eval_examples

    examples = [e for name in ("add", "copy", "hop") for e in eval_examples(get_task(name), 2, 20, 0)]
    whole = evaluate.exact_match(tiny_model, examples)
    rows = []
    tiny_model.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    monkeypatch.setattr(evaluate, "LOGITS_BUDGET", 1)  # one example per forward pass
    assert torch.equal(evaluate.exact_match(tiny_model, examples, batch_size=7), whole)
    assert rows == [1] * len(examples)
