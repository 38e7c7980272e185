"""The HF adapter on tiny Llama / Qwen2 / GPT-2 / BERT models built offline from configs."""
import copy
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from taskloc.errors import CheckpointError, ConfigError, HookError, TasklocError, UnsupportedModelError  # noqa: E402
from taskloc.hf import HFModel, load_hf_model, site_names  # noqa: E402
from taskloc.hooks import capture, hooks, resolve_sites  # noqa: E402
from taskloc.io import open_checkpoint  # noqa: E402

N_LAYER, D, M, V = 2, 32, 48, 100
PRE_NORM = ["llama", "qwen2", "gpt2"]
FAMILIES = PRE_NORM + ["bert"]


def _build(family: str):
    small = dict(vocab_size=V, hidden_size=D, num_hidden_layers=N_LAYER, num_attention_heads=4)
    if family == "llama":
        cfg = transformers.LlamaConfig(intermediate_size=M, num_key_value_heads=2, max_position_embeddings=64, **small)
        return transformers.LlamaForCausalLM(cfg)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(intermediate_size=M, num_key_value_heads=2, max_position_embeddings=64, **small)
        return transformers.Qwen2ForCausalLM(cfg)
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=V, n_embd=D, n_layer=N_LAYER, n_head=4, n_inner=M, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(intermediate_size=M, max_position_embeddings=64, **small)
    return transformers.BertForMaskedLM(cfg)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (folder, reference HF model as built). Built and saved once for the module."""
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = _build(family).eval()
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        out[family] = (folder, model)
    return out


@pytest.fixture(scope="module")
def wrapped(saved):
    return {family: load_hf_model(folder, device="cpu") for family, (folder, _) in saved.items()}


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(seed))


def _layers(w: HFModel):
    path = {"llama": "layers", "qwen2": "layers", "gpt2": "h", "bert": "encoder.layer"}[w.family]
    return w.hf.base_model.get_submodule(path)


# -- loading and the uniform interface ---------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_with_sites_and_same_logits(family, saved, wrapped):
    w, (_, ref) = wrapped[family], saved[family]
    assert w.kind == ("masked-lm" if family == "bert" else "causal-lm")
    assert w.tokenizer is None  # the folder holds no tokenizer files
    assert (w.n_layer, w.d_model, w.d_mlp, w.vocab_size) == (N_LAYER, D, M, V)
    names = site_names(w)
    assert names[:7] == [
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_pattern",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.mlp.hook_post",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]
    assert names[-1] == "ln_final.hook_normalized" and len(names) == 7 * N_LAYER + 1
    ids = _ids()
    with torch.no_grad():
        logits = w(ids)
        torch.testing.assert_close(logits, ref(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert logits.shape == (2, 7, V)


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_sites_match_hf_hidden_states(family, saved, wrapped):
    w, (_, ref) = wrapped[family], saved[family]
    ids = _ids()
    sites = resolve_sites(w, ["blocks.*.hook_resid_pre", "blocks.*.hook_resid_post", "ln_final.hook_normalized"])
    with torch.no_grad(), capture(w, sites) as acts:
        w(ids)
        hs = ref(input_ids=ids, output_hidden_states=True).hidden_states  # N_LAYER + 1 of (B, T, D)
    close = dict(rtol=0, atol=1e-5)
    for i in range(N_LAYER):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_pre"], hs[i], **close)
    # HF reports the last pre-norm block after the final norm; compare where both mean the same.
    post_norm = family == "bert"
    for i in range(N_LAYER if post_norm else N_LAYER - 1):
        torch.testing.assert_close(acts[f"blocks.{i}.hook_resid_post"], hs[i + 1], **close)
    torch.testing.assert_close(acts["ln_final.hook_normalized"], hs[-1], **close)
    last = acts[f"blocks.{N_LAYER - 1}.hook_resid_post"]
    if post_norm:
        assert torch.equal(acts["ln_final.hook_normalized"], last)
    else:
        final_norm = w.hf.base_model.norm if family != "gpt2" else w.hf.base_model.ln_f
        with torch.no_grad():
            assert torch.equal(acts["ln_final.hook_normalized"], final_norm(last))
        assert not torch.allclose(last, hs[-1])  # the last resid_post really is pre-norm


@pytest.mark.parametrize("family", FAMILIES)
def test_block_internals_match_hf_modules(family, wrapped):
    """Each site equals the value an independent hook on the HF module sees, and the residual
    identities hold (resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out)."""
    w = wrapped[family]
    layer = _layers(w)[0]
    seen = {}
    if family == "bert":
        mid_module, down = layer.attention.output, layer.output.dense
        handle_mid = mid_module.register_forward_hook(lambda m, a, out: seen.__setitem__("mid", out))
    else:
        mid_module = layer.ln_2 if family == "gpt2" else layer.post_attention_layernorm
        down = layer.mlp.c_proj if family == "gpt2" else layer.mlp.down_proj
        handle_mid = mid_module.register_forward_pre_hook(lambda m, a: seen.__setitem__("mid", a[0]))
    handle_down = down.register_forward_pre_hook(lambda m, a: seen.__setitem__("down_in", a[0]))
    try:
        with torch.no_grad(), capture(w, [s for s in site_names(w) if s.startswith("blocks.0.")]) as acts:
            w(_ids())
    finally:
        handle_mid.remove()
        handle_down.remove()
    assert torch.equal(acts["blocks.0.hook_resid_mid"], seen["mid"])
    assert torch.equal(acts["blocks.0.mlp.hook_post"], seen["down_in"])
    assert acts["blocks.0.mlp.hook_post"].shape == (2, 7, M)
    pre, mid, post = (acts[f"blocks.0.hook_resid_{s}"] for s in ("pre", "mid", "post"))
    attn_out, mlp_out = acts["blocks.0.hook_attn_out"], acts["blocks.0.hook_mlp_out"]
    if family == "bert":  # post-norm: each sum goes through the sublayer's LayerNorm
        with torch.no_grad():
            torch.testing.assert_close(mid, layer.attention.output.LayerNorm(pre + attn_out))
            torch.testing.assert_close(post, layer.output.LayerNorm(mid + mlp_out))
    else:
        assert torch.equal(mid, pre + attn_out)
        assert torch.equal(post, mid + mlp_out)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_pattern_is_a_distribution(family, wrapped):
    w = wrapped[family]
    ids, mask = _ids(), torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding in the second row
    with torch.no_grad(), capture(w, ["blocks.1.attn.hook_pattern"]) as acts:
        w(ids, attention_mask=mask)
    pattern = acts["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (2, 4, 7, 7)  # (B, H, Tq, Tk)
    torch.testing.assert_close(pattern.sum(-1)[1, :, 2:], torch.ones(4, 5))
    assert pattern[1, :, :, :2][..., 2:, :].abs().max() < 1e-6  # nobody attends to padding
    if family != "bert":  # causal: no weight on future keys (padding queries are HF's business)
        assert torch.triu(pattern[0], diagonal=1).abs().max() == 0
        assert torch.triu(pattern[1, :, 2:, 2:], diagonal=1).abs().max() == 0


# -- hooks that replace values ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_steering_changes_logits_and_is_removed(family, wrapped):
    w = wrapped[family]
    ids = _ids()
    v = torch.randn(D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = w(ids)
        with hooks(w, {"blocks.0.hook_resid_post": lambda x, name: x + v}):
            steered = w(ids)
        assert (steered - base).abs().max() > 1e-3
        assert torch.equal(w(ids), base)
        with pytest.raises(RuntimeError), hooks(w, {"blocks.0.hook_resid_post": lambda x, name: x + v}):
            raise RuntimeError("body fails")
        assert torch.equal(w(ids), base)  # removed even when the body raised


@pytest.mark.parametrize("family", PRE_NORM)
def test_resid_mid_replacement_feeds_the_residual(family, wrapped):
    """Pre-norm blocks add attn_out inline; adding v at resid_mid must equal adding v to attn_out."""
    w = wrapped[family]
    ids = _ids()
    v = torch.randn(D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = w(ids)
        with hooks(w, {"blocks.0.hook_resid_mid": lambda x, name: x + v}):
            via_mid = w(ids)
        with hooks(w, {"blocks.0.hook_attn_out": lambda x, name: x + v}):
            via_attn = w(ids)
    assert (via_mid - base).abs().max() > 1e-3
    torch.testing.assert_close(via_mid, via_attn, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_pattern_can_be_replaced(family, wrapped):
    w = wrapped[family]
    out_proj = {"llama": "self_attn.o_proj", "qwen2": "self_attn.o_proj", "gpt2": "attn.c_proj",
                "bert": "attention.output.dense"}[family]  # fmt: skip
    proj = _layers(w)[0].get_submodule(out_proj)
    ids = _ids()
    with torch.no_grad():
        base = w(ids)
        with hooks(w, {"blocks.0.attn.hook_pattern": lambda p, name: p.clone()}):
            same = w(ids)  # recomputed from an unchanged pattern
        with hooks(w, {"blocks.0.attn.hook_pattern": lambda p, name: torch.zeros_like(p)}):
            with capture(w, ["blocks.0.hook_attn_out"]) as acts:
                zeroed = w(ids)
    torch.testing.assert_close(same, base, rtol=0, atol=1e-5)
    # Zero attention weights -> the heads output 0 -> attn_out is just the output projection's bias.
    bias = proj.bias if proj.bias is not None else torch.zeros(D)
    torch.testing.assert_close(acts["blocks.0.hook_attn_out"], bias.expand(2, 7, D))
    assert (zeroed - base).abs().max() > 1e-3


def test_unknown_site_is_a_hook_error(wrapped):
    with pytest.raises(HookError, match="hook_resid_post"):
        with hooks(wrapped["llama"], {"blocks.0.hook_resid_pots": lambda x, n: x}):
            pass


def test_deepcopy_routes_to_its_own_sites(wrapped):
    w = wrapped["gpt2"]
    twin = copy.deepcopy(w)
    ids = _ids()
    with torch.no_grad(), capture(twin, ["blocks.0.hook_resid_post"]) as mine, capture(w, ["blocks.0.hook_resid_post"]) as theirs:
        twin(ids)
        assert "blocks.0.hook_resid_post" in mine and "blocks.0.hook_resid_post" not in theirs
        w(ids)
    assert torch.equal(mine["blocks.0.hook_resid_post"], theirs["blocks.0.hook_resid_post"])


def test_wraps_a_model_built_in_memory(saved):
    """HFModel also wraps a model the caller loaded (SDPA attention): it switches to taskloc's
    attention so the pattern site works, and the logits stay the same."""
    model = copy.deepcopy(saved["qwen2"][1])
    assert model.config._attn_implementation != "taskloc"
    ids = _ids()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        w = HFModel(model)
        with capture(w, ["blocks.0.attn.hook_pattern"]) as acts:
            after = w(ids)
    assert acts["blocks.0.attn.hook_pattern"].shape == (2, 4, 7, 7)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


# -- folders: tokenizer, bare encoder, bad input -------------------------------------------------


def _clone(saved, family, tmp_path):
    folder = tmp_path / family
    shutil.copytree(saved[family][0], folder)
    return folder


def test_tokenizer_is_loaded_when_present(saved, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = _clone(saved, "llama", tmp_path)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{f"w{i}": i + 1 for i in range(V - 1)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    w = load_hf_model(folder, device="cpu")
    assert w.tokenizer("w1 w5 w9")["input_ids"] == [2, 6, 10]


def test_bert_without_mlm_head_is_a_bare_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=N_LAYER, num_attention_heads=4,
                                  intermediate_size=M, max_position_embeddings=64)  # fmt: skip
    ref = transformers.BertModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    w = load_hf_model(tmp_path, device="cpu")
    assert w.kind == "encoder"
    with torch.no_grad(), capture(w, ["ln_final.hook_normalized"]) as acts:
        hidden = w(_ids())
    assert hidden.shape == (2, 7, D) and torch.equal(hidden, acts["ln_final.hook_normalized"])
    torch.testing.assert_close(hidden, ref(input_ids=_ids()).last_hidden_state, rtol=0, atol=1e-5)


def _error(path, **kwargs) -> str:
    with pytest.raises(TasklocError) as info:
        load_hf_model(path, device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    return message


def _both_loaders_refuse(folder, expected: str) -> None:
    """The HF loader and the checkpoint reader judge a folder's weights with one check, one message."""
    assert _error(folder) == expected
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(folder)
    assert str(info.value) == expected


def test_missing_folder(tmp_path):
    assert _error(tmp_path / "nope") == (
        f"model folder {tmp_path / 'nope'} does not exist; pass a local Hugging Face model folder "
        "(config.json and model.safetensors)."
    )


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    message = _error(tmp_path)
    assert message.startswith(f"{tmp_path} is not a Hugging Face model folder: it has no config.json;")
    assert "model.safetensors" in message


@pytest.mark.parametrize("model_type", ["t5", "my_made_up_arch"])
def test_unsupported_architecture_lists_supported(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["Foo"]}))
    with pytest.raises(UnsupportedModelError) as info:
        load_hf_model(tmp_path, device="cpu")
    assert isinstance(info.value, CheckpointError)
    assert str(info.value) == (
        f"{tmp_path}/config.json describes a {model_type!r} model (Foo), which taskloc's HF adapter cannot "
        "map onto hook sites; supported model_type values: bert, gpt2, llama, qwen2."
    )


def test_malformed_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    assert _error(tmp_path).startswith(f"{tmp_path}/config.json is not valid JSON")


def test_missing_weights(saved, tmp_path):
    folder = _clone(saved, "llama", tmp_path)
    (folder / "model.safetensors").unlink()
    _both_loaders_refuse(folder, f"{folder} has a config.json but no weights; expected model.safetensors "
                                 "(or model.safetensors.index.json and its shards) beside it.")


def test_pickle_weights_refused_unless_allowed(saved, tmp_path):
    folder = _clone(saved, "llama", tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save(saved["llama"][1].state_dict(), folder / "pytorch_model.bin")
    _both_loaders_refuse(folder, f"{folder / 'pytorch_model.bin'} is a pickle checkpoint, which can run code when "
                                 "loaded; refused. Convert it to safetensors, or pass --allow-pickle if you trust its source.")
    loaded = load_hf_model(folder, device="cpu", allow_pickle=True)
    ids = _ids()
    torch.testing.assert_close(loaded(ids), saved["llama"][1](input_ids=ids).logits, rtol=0, atol=1e-5)


def test_missing_tensor_is_named(saved, tmp_path):
    folder = _clone(saved, "llama", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert _error(folder) == (
        f"the weights in {folder} lack 1 tensor(s) that a llama causal-lm model needs "
        "(model.layers.1.mlp.down_proj.weight); the checkpoint is incomplete or was saved from a different architecture."
    )


def test_missing_shard(saved, tmp_path):
    folder = _clone(saved, "gpt2", tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _both_loaders_refuse(folder, f"model.safetensors.index.json in {folder} lists 2 shard(s) but 1 are missing, "
                                 "first model-00002-of-00002.safetensors; download or copy the complete checkpoint.")


def test_corrupt_weights(saved, tmp_path):
    folder = _clone(saved, "gpt2", tmp_path)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert _error(folder).startswith(f"could not load the model in {folder}: ")


def test_unknown_dtype(saved):
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'"):
        load_hf_model(saved["gpt2"][0], device="cpu", dtype="fp8")


def test_readme_sparse_attention_example_runs(saved):
    # The README's "Sparse attention on your own model" block, run as written on the tiny Llama:
    # it registers a kernel at 1/16, loads with it, attends about 1/16 of the causal pairs and
    # switches back to dense, whose logits then equal the plain HF model's.
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_hf_model" in b)
    folder, reference = saved["llama"]
    ids = torch.randint(0, V, (1, 1024), generator=torch.Generator().manual_seed(5))  # long enough for 1/16 past the sinks
    scope = {"input_ids": ids}
    exec(block.replace('"path/to/llama"', repr(str(folder))), scope)
    assert abs(scope["ledger"].density - 1 / 16) < 0.005
    assert not torch.allclose(scope["logits"], reference(ids).logits, atol=1e-4)  # sparse: not the dense result
    assert scope["model"].attention == "dense"
    torch.testing.assert_close(scope["model"](ids), reference(ids).logits, rtol=1e-4, atol=1e-4)
