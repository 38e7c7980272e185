"""LanguageModel: TinyLM and HFModel both satisfy it, and greedy generate with a KV cache means
the same on both (checked against HF's own generate and against full recomputation)."""
import pytest
import torch
from torch import nn

from taskloc.activations.reducers import RunningMoments
from taskloc.errors import ConfigError, DataError, UnsupportedModelError
from taskloc.hooks import capture
from taskloc.models import CHAR_CODEC, LanguageModel, codec_of

transformers = pytest.importorskip("transformers")
from taskloc.hf import HFModel  # noqa: E402

V, CONTEXT = 100, 64
CAUSAL = ["llama", "qwen2", "gpt2"]


def _hf(family: str) -> nn.Module:
    """A tiny randomly initialised HF model, built offline (GPT-2 ties its unembedding)."""
    torch.manual_seed(0)
    small = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 num_key_value_heads=2, max_position_embeddings=CONTEXT)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)).eval()
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)).eval()
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=CONTEXT,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=CONTEXT)
    return transformers.BertForMaskedLM(cfg).eval()


@pytest.fixture(scope="module")
def hf_models():
    """family -> (HF reference, HFModel wrapping its own copy)."""
    out = {}
    for family in [*CAUSAL, "bert"]:
        ref = _hf(family)
        twin = _hf(family)  # same seed, same weights; wrapping switches its attention function
        out[family] = (ref, HFModel(twin))
    return out


def _prompts(batch: int = 3, length: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _recompute(model, idx: torch.Tensor, n: int, eos_id: int | None = None) -> torch.Tensor:
    """Greedy decoding without a cache: the whole sequence through a full forward pass per token."""
    seq, done, out = idx, torch.zeros(idx.shape[0], dtype=torch.bool), []
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq)[:, -1].argmax(-1)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt)
            if eos_id is not None and bool(done.all()):
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def test_both_models_satisfy_the_protocol(tiny_model, hf_models):
    for model in [tiny_model, *(w for _, w in hf_models.values())]:
        assert isinstance(model, LanguageModel)
    assert not isinstance(nn.Linear(2, 2), LanguageModel)  # a module without the model surface
    assert not isinstance(object(), LanguageModel)
    cfg = tiny_model.cfg
    assert (tiny_model.n_layer, tiny_model.d_model, tiny_model.vocab_size, tiny_model.max_context) == (
        cfg.n_layer, cfg.d_model, cfg.vocab_size, cfg.block_size)
    assert tiny_model.device == torch.device("cpu") and codec_of(tiny_model) is tiny_model.codec is CHAR_CODEC
    assert tiny_model.site_names()[0] == "blocks.0.hook_resid_pre" and len(tiny_model.site_names()) == 7 * cfg.n_layer + 1
    for family in CAUSAL:
        w = hf_models[family][1]
        assert (w.n_layer, w.d_model, w.vocab_size, w.max_context) == (2, 32, V, CONTEXT)
        assert w.site_names() == tiny_model.site_names()  # both have 2 blocks: the same names
        assert w.num_params() == sum(p.numel() for p in hf_models[family][0].parameters())


def test_hf_model_without_tokenizer_is_a_model_whose_codec_raises(hf_models):
    w = hf_models["llama"][1]
    assert isinstance(w, LanguageModel)  # isinstance must not evaluate the raising property
    with pytest.raises(DataError, match="has no tokenizer"):
        codec_of(w)


def test_gpt2_counts_its_tied_unembedding_once(hf_models):
    ref, w = hf_models["gpt2"]
    assert ref.lm_head.weight is ref.transformer.wte.weight
    named = sum(t.numel() for t in ref.state_dict().values())
    assert w.num_params() == named - V * 32


@pytest.mark.parametrize("family", CAUSAL)
def test_hf_generate_equals_hf_greedy_generate(family, hf_models):
    ref, w = hf_models[family]
    idx = _prompts()
    got = w.generate(idx, 12)
    want = ref.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                        pad_token_id=0)[:, idx.shape[1]:]
    assert got.shape == (3, 12) and got.dtype == torch.long
    assert torch.equal(got, want)
    assert torch.equal(got, _recompute(w, idx, 12))  # the cache changes no token


@pytest.mark.parametrize("family", CAUSAL)
def test_hf_generate_stops_at_eos_like_hf(family, hf_models):
    ref, w = hf_models[family]
    idx = _prompts(seed=5)
    free = w.generate(idx, 10)
    eos = int(free[0, 3])  # a token row 0 emits early: rows stop at different steps
    got = w.generate(idx, 10, eos_id=eos)
    want = ref.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=10,
                        eos_token_id=eos, pad_token_id=eos)[:, idx.shape[1]:]
    assert torch.equal(got, want)
    assert torch.equal(got, _recompute(w, idx, 10, eos_id=eos))
    first = int((got[0] == eos).nonzero()[0])
    assert first <= 3 and bool((got[0, first:] == eos).all())


def test_tinylm_generate_with_and_without_cache(tiny_model):
    idx = torch.randint(2, tiny_model.vocab_size, (3, 6), generator=torch.Generator().manual_seed(4))
    got = tiny_model.generate(idx, 9)
    assert got.shape == (3, 9) and torch.equal(got, _recompute(tiny_model, idx, 9))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hf_generate_clips_to_context_and_refuses_longer_prompts(family, hf_models):
    w = hf_models[family][1]
    long = _prompts(batch=2, length=CONTEXT - 4)
    got = w.generate(long, 10)
    assert got.shape == (2, 4) and torch.equal(got, _recompute(w, long, 4))
    assert w.generate(long, 0).shape == (2, 0)
    with pytest.raises(ConfigError) as err:
        w.generate(_prompts(batch=1, length=CONTEXT + 1), 3)
    assert str(err.value) == f"prompt of {CONTEXT + 1} tokens exceeds the {family} model's context of {CONTEXT} positions; shorten the prompt."


def test_generate_needs_a_causal_lm(hf_models):
    with pytest.raises(UnsupportedModelError, match="cannot generate with a bert masked-lm model"):
        hf_models["bert"][1].generate(_prompts(), 3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sites_fire_on_every_generation_step(family, hf_models, tiny_model):
    """The prompt's pass and then one (B, 1) pass per new token: hooks see 5 + 7 positions per row."""
    for model in (hf_models[family][1], tiny_model):
        idx = _prompts(batch=2, length=5).clamp(max=model.vocab_size - 1)
        with capture(model, ["blocks.1.hook_resid_post"], reducer=RunningMoments) as red:
            out = model.generate(idx, 8)
        assert out.shape == (2, 8) and red["blocks.1.hook_resid_post"].count == 2 * (5 + 7)
