"""One kernel, registered once (conftest's masked reference), runs on TinyLM and on tiny HF Llama
and Qwen2 models with grouped-query attention, and gives dense's logits to 1e-6: full passes,
KV-cache continuations and padding masks."""
import copy

import pytest
import torch

from taskloc.errors import UnknownNameError
from taskloc.hooks import capture
from taskloc.models import ModelConfig, TinyLM
from taskloc.tasks import VOCAB_SIZE

REFERENCE = "masked-reference"  # registered by conftest.py
CLOSE = dict(rtol=0, atol=1e-6)


def _tinylm_pair(positional: str) -> tuple[TinyLM, TinyLM]:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB_SIZE, n_layer=2, n_head=4, d_model=32, d_mlp=64, block_size=32, positional=positional)
    dense = TinyLM(ModelConfig(**cfg)).eval()
    ref = TinyLM(ModelConfig(**cfg, attention=REFERENCE)).eval()
    ref.load_state_dict(dense.state_dict())
    return dense, ref


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_tinylm_reference_kernel_equals_dense(positional, reference_calls):
    dense, ref = _tinylm_pair(positional)
    x = torch.randint(2, VOCAB_SIZE, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = dense(x)
        torch.testing.assert_close(ref(x), full, **CLOSE)
        assert (3, 4, 12, 8) in reference_calls  # the reference kernel really ran
        for model in (dense, ref):  # prefix, then 4 tokens at once, then one at a time
            logits, cache = model(x[:, :7], return_cache=True)
            parts = [logits]
            for lo, hi in ((7, 11), (11, 12)):
                logits, cache = model(x[:, lo:hi], cache=cache, return_cache=True)
                parts.append(logits)
            torch.testing.assert_close(torch.cat(parts, dim=1), full, **CLOSE)
    assert (3, 4, 1, 8) in reference_calls


def test_tinylm_attention_with_padding_mask():
    dense, ref = _tinylm_pair("rope")
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(2))
    keep = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    keep[1, ..., :2] = False  # two padded positions in front of row 1
    real = keep[:, 0, 0]  # (B, T): queries that may attend something
    with torch.no_grad():
        out, _ = dense.blocks[0].attn(x, mask=keep)
        out_ref, _ = ref.blocks[0].attn(x, mask=keep)
        moved = x.clone()
        moved[1, :2] += 10.0  # what padding holds must not reach real tokens
        out_moved, _ = dense.blocks[0].attn(moved, mask=keep)
        unmasked, _ = dense.blocks[0].attn(moved)
    torch.testing.assert_close(out_ref[real], out[real], **CLOSE)
    torch.testing.assert_close(out_moved[real], out[real], **CLOSE)
    assert (unmasked[1, 2:] - out[1, 2:]).abs().max() > 1e-3  # without the mask it would


# -- Hugging Face ---------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from taskloc.hf import HFModel, load_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def hf_models():
    """Tiny grouped-query models: 4 query heads share 2 key/value heads."""
    small = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)).eval()
    torch.manual_seed(0)
    qwen2 = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)).eval()
    return {"llama": llama, "qwen2": qwen2}


def _padded_inputs():
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0  # left padding in row 1
    return ids, mask


def _cached(hf, ids, mask):
    """Logits of a 5-token prefix, then 3 tokens, then 1, through HF's KV cache."""
    out = hf(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
    parts, cache = [out.logits], out.past_key_values
    for lo, hi in ((5, 8), (8, 9)):
        out = hf(input_ids=ids[:, lo:hi], attention_mask=mask[:, :hi], past_key_values=cache, use_cache=True)
        parts.append(out.logits)
        cache = out.past_key_values
    return torch.cat(parts, dim=1)


def _run_all(w: HFModel, ids, mask):
    ones = torch.ones_like(mask)
    with torch.no_grad(), capture(w, ["blocks.1.attn.hook_pattern"]) as acts:
        hooked = w(ids, attention_mask=mask)
    with torch.no_grad():
        return {
            "plain": w(ids),
            "padded": w(ids, attention_mask=mask),
            "cached": _cached(w.hf, ids, ones),
            "cached+padded": _cached(w.hf, ids, mask),
            "hooked": hooked,
            "pattern": acts["blocks.1.attn.hook_pattern"],
        }


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_reference_kernel_equals_dense(family, hf_models, reference_calls):
    model = copy.deepcopy(hf_models[family])
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")  # HF's own arithmetic, independent of taskloc
    ids, mask = _padded_inputs()
    real = mask.bool()  # padding positions' logits are HF's business
    w = HFModel(model)
    assert w.attention == "dense"
    dense = _run_all(w, ids, mask)
    assert not reference_calls
    w.attention = REFERENCE
    ref = _run_all(w, ids, mask)
    assert (2, 4, 9, 8) in reference_calls and (2, 4, 3, 8) in reference_calls and (2, 4, 1, 8) in reference_calls
    for case in ("plain", "cached"):
        torch.testing.assert_close(ref[case], dense[case], **CLOSE)
    for case in ("padded", "cached+padded", "hooked"):
        torch.testing.assert_close(ref[case][real], dense[case][real], **CLOSE)
    torch.testing.assert_close(ref["pattern"][0], dense["pattern"][0], **CLOSE)
    torch.testing.assert_close(ref["pattern"][1, :, 2:], dense["pattern"][1, :, 2:], **CLOSE)
    assert dense["pattern"].shape == (2, 4, 9, 9)  # one pattern per query head under grouped-query
    with torch.no_grad():
        torch.testing.assert_close(dense["plain"], eager(input_ids=ids).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(dense["padded"][real], eager(input_ids=ids, attention_mask=mask).logits[real],
                                   rtol=0, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(dense["cached"], dense["plain"], rtol=0, atol=1e-5)
    torch.testing.assert_close(dense["cached+padded"][real], dense["padded"][real], rtol=0, atol=1e-5)


def test_hf_attention_dropout_applies_after_the_pattern_site(hf_models):
    model = copy.deepcopy(hf_models["llama"])
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    w = HFModel(model).train()
    ids, _ = _padded_inputs()
    with torch.no_grad(), capture(w, ["blocks.0.attn.hook_pattern"]) as acts:
        torch.manual_seed(0)
        first = w(ids)
        torch.manual_seed(1)
        second = w(ids)
    assert (first - second).abs().max() > 1e-3  # dropout is on in training
    torch.testing.assert_close(acts["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(2, 4, 9))  # hooks see probabilities


def test_unknown_kernel_names_the_known_ones(hf_models, tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown attention kernel 'dens'. Did you mean 'dense'"):
        HFModel(copy.deepcopy(hf_models["llama"]), attention="dens")
    with pytest.raises(UnknownNameError, match="Did you mean 'dense'"):
        load_hf_model(tmp_path / "absent", attention="dens")  # the name is checked before the folder
    w = HFModel(copy.deepcopy(hf_models["llama"]))
    with pytest.raises(UnknownNameError, match="Did you mean 'dense'"):
        w.attention = "dens"
    assert w.attention == "dense"
