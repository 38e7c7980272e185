"""HFModel: a Hugging Face model dressed in TinyLM's hook sites.

The wrapper owns one HookPoint per site, in a module tree shaped like TinyLM's (``blocks.{i}``,
``blocks.{i}.attn``, ``blocks.{i}.mlp``, ``ln_final``), so ``taskloc.hooks.hooks`` and
``capture`` work on it unchanged. Permanent PyTorch hooks on the HF modules (see families.py
for which module feeds which site) pass each value through its HookPoint and use what comes
back, so a hook can read or replace it. A site with nothing attached is skipped, so an unhooked
forward pass does the model's own arithmetic, bit for bit.

Hooks must *return* a replacement (or None); editing a tensor in place is not a supported way to
change a value (it happens to work at most sites, but not at a computed ``hook_resid_mid``).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

from ..attention import ATTENTION
from ..errors import ConfigError, DataError, UnsupportedModelError
from ..hooks import HookPoint, name_sites
from ..hooks import site_names as _site_names
from ..models.codec import TokenizerCodec, no_tokenizer_message
from ..models.protocol import greedy_decode
from . import attention as hf_attention
from .families import FAMILIES, Family


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _first(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor in transformers 5, a tuple in 4.x; attention a tuple."""
    return output[0] if isinstance(output, tuple) else output


def _with_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _route(site: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """The value after ``site``'s hooks; ``x`` itself (same object) when none is attached."""
    return site(x) if site.active else x


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_pattern = HookPoint()


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_post = HookPoint()


class _FinalNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = HookPoint()


class BlockSites(nn.Module):
    """The sites of one block, registered in forward order so ``site_names`` lists them that way."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.attn = _Attn()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.mlp = _MLP()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()


class HFModel(nn.Module):
    """A supported HF model (``hf``) with taskloc's named sites.

    ``kind`` is "causal-lm", "masked-lm" or "encoder" (a bare base model, e.g. a BERT without its
    MLM head, whose ``forward`` returns the final hidden states instead of logits); when None it
    is read off ``hf``. ``tokenizer`` is the folder's tokenizer, or None. ``HFModel(hf)`` also
    wraps a model the caller loaded; it switches that model to taskloc's attention function.
    ``attention`` names the kernel of ``taskloc.attention.ATTENTION`` every layer runs (the same
    registry TinyLM's ``model.attention`` reads); assign ``model.attention`` to switch it.
    """

    def __init__(self, hf: nn.Module, kind: str | None = None, tokenizer: Any = None, attention: str = "dense") -> None:
        super().__init__()
        model_type = getattr(hf.config, "model_type", None)
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"cannot wrap a {model_type!r} model: taskloc's HF adapter maps only these model_type "
                f"values onto hook sites: {', '.join(sorted(FAMILIES.names()))}."
            )
        self.family: str = model_type
        self.spec: Family = FAMILIES.get(model_type)
        if kind is None:  # a model the caller loaded: a bare base model has no head
            kind = "encoder" if hf.base_model is hf else "masked-lm" if self.spec.kind == "encoder" else "causal-lm"
        self.kind = kind
        self.tokenizer = tokenizer
        self._codec: TokenizerCodec | None = None
        self.hf = hf
        layers = _get(hf.base_model, self.spec.layers)
        self.blocks = nn.ModuleList(BlockSites() for _ in layers)
        self.ln_final = _FinalNorm()
        name_sites(self)
        # Residual entering each block, kept only while that block runs: a computed resid_mid
        # (pre-norm families) is resid_pre + attn_out.
        self._resid_in: list[torch.Tensor | None] = [None] * len(layers)
        ATTENTION.get(attention)  # an unknown kernel fails here, before any hook is installed
        self._attention = attention
        hf_attention.register()
        if hf.config._attn_implementation != hf_attention.IMPLEMENTATION:
            hf.set_attn_implementation(hf_attention.IMPLEMENTATION)
        self._handles: list = []
        self._install()

    def _install(self) -> None:
        layers = _get(self.hf.base_model, self.spec.layers)
        self._handles = [h for i, layer in enumerate(layers) for h in self._hook_block(i, layer)]
        if self.spec.final_norm is not None:
            norm = _get(self.hf.base_model, self.spec.final_norm)
            self._handles.append(norm.register_forward_hook(self._final_norm_hook))

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __deepcopy__(self, memo: dict) -> HFModel:
        # A plain deepcopy would copy our HF hooks too, still routing into *this* wrapper's sites,
        # so hooks attached to the copy would never fire. Copy the bare model and wrap it afresh.
        self._uninstall()
        try:
            hf = copy.deepcopy(self.hf, memo)
        finally:
            self._install()
        return HFModel(hf, self.kind, self.tokenizer, self.attention)

    @property
    def attention(self) -> str:
        """Name of the attention kernel every layer runs."""
        return self._attention

    @attention.setter
    def attention(self, name: str) -> None:
        layers = _get(self.hf.base_model, self.spec.layers)
        for layer, sites in zip(layers, self.blocks):
            hf_attention.route(_get(layer, self.spec.attn), sites.attn.hook_pattern, name)
        self._attention = name

    # -- HF module hooks -------------------------------------------------------------------------

    def _hook_block(self, i: int, layer: nn.Module) -> list:
        spec, sites = self.spec, self.blocks[i]
        last = i == len(self.blocks) - 1

        def resid_pre(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]  # (B, T, D)
            new = _route(sites.hook_resid_pre, x)
            self._resid_in[i] = new
            if new is x:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        def attn_out(module, args, output):
            a = _first(output)  # (B, T, D)
            new = _route(sites.hook_attn_out, a)
            if spec.resid_mid is None and sites.hook_resid_mid.active:
                # The block adds attn_out to its input inline, with no module to hook, so the site
                # sees that sum, and a replacement is fed back as attn_out' = mid' - x (exact to
                # one rounding of the subtraction).
                x = self._resid_in[i]
                mid = x + new
                mid_new = sites.hook_resid_mid(mid)
                if mid_new is not mid:
                    new = mid_new - x
            return None if new is a else _with_first(output, new)

        def resid_mid(module, args, output):  # post-norm: a module's output *is* resid_mid
            x = _first(output)
            new = _route(sites.hook_resid_mid, x)
            return None if new is x else _with_first(output, new)

        def mlp_post(module, args):
            h = args[0]  # (B, T, M): the down projection's input
            new = _route(sites.mlp.hook_post, h)
            return None if new is h else (new, *args[1:])

        def mlp_out(module, args, output):
            y = _first(output)
            new = _route(sites.hook_mlp_out, y)
            return None if new is y else _with_first(output, new)

        def resid_post(module, args, output):
            self._resid_in[i] = None
            x = _first(output)
            new = _route(sites.hook_resid_post, x)
            if last and spec.final_norm is None:  # post-norm: the last block's output is final
                new = _route(self.ln_final.hook_normalized, new)
            return None if new is x else _with_first(output, new)

        hf_attention.route(_get(layer, spec.attn), sites.attn.hook_pattern, self._attention)
        handles = [
            layer.register_forward_pre_hook(resid_pre, with_kwargs=True),
            _get(layer, spec.attn_out).register_forward_hook(attn_out),
            _get(layer, spec.mlp_down).register_forward_pre_hook(mlp_post),
            _get(layer, spec.mlp_out).register_forward_hook(mlp_out),
            layer.register_forward_hook(resid_post),
        ]
        if spec.resid_mid is not None:
            handles.append(_get(layer, spec.resid_mid).register_forward_hook(resid_mid))
        return handles

    def _final_norm_hook(self, module, args, output):
        x = _first(output)
        new = _route(self.ln_final.hook_normalized, x)
        return None if new is x else _with_first(output, new)

    # -- uniform interface -----------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: (B, T); attention_mask: (B, T), 1 = real token, 0 = padding.
        Returns logits (B, T, V), or the final hidden states (B, T, D) for a bare encoder."""
        device = self.device
        kwargs = {"input_ids": input_ids.to(device)}
        if attention_mask is None and self.kind == "causal-lm":
            # Right-padded batches need no mask under causal attention (a pad is only seen by
            # positions after it); an explicit all-ones mask says so and keeps HF from warning.
            attention_mask = torch.ones_like(input_ids)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
        if self.kind == "causal-lm":
            kwargs["use_cache"] = False  # one full pass; no cache to build and throw away
        out = self.hf(**kwargs)
        return out.last_hidden_state if self.kind == "encoder" else out.logits

    def site_names(self) -> list[str]:
        return _site_names(self)

    @property
    def codec(self) -> TokenizerCodec:
        """How task text becomes this model's ids (training and exact-match scoring use it)."""
        if self._codec is None:
            where = getattr(self.hf.config, "_name_or_path", "") or "memory"
            source = f"the {self.family} model from {where}"
            if self.tokenizer is None:
                raise DataError(no_tokenizer_message(source))
            self._codec = TokenizerCodec(self.tokenizer, source)
        return self._codec

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def n_layer(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.hf.config.hidden_size

    @property
    def n_head(self) -> int:
        return self.hf.config.num_attention_heads

    @property
    def d_mlp(self) -> int:
        """Width of ``mlp.hook_post``: the down projection's input features."""
        down = _get(self.hf.base_model, f"{self.spec.layers}.0.{self.spec.mlp_down}")
        weight = down.weight
        # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out).
        return weight.shape[0] if type(down).__name__ == "Conv1D" else weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.hf.config.vocab_size

    @property
    def max_context(self) -> int | None:
        """Positions the model was built for (``max_position_embeddings``, GPT-2's ``n_positions``)."""
        config = self.hf.config
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())  # parameters() yields a tied weight once

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
        """Greedy decoding with the HF model's own KV cache (a ``DynamicCache``), with TinyLM's
        contract (``models.protocol.greedy_decode``): idx (B, T) prompts of equal length ->
        new tokens (B, <= max_new_tokens), clipped to ``max_context``. Hook sites fire on every
        step, the prompt's pass first, then one (B, 1) pass per new token."""
        if self.kind != "causal-lm":
            raise UnsupportedModelError(f"cannot generate with a {self.family} {self.kind} model: greedy decoding "
                                        "needs a causal LM (a Llama, Qwen2 or GPT-2 folder).")
        if self.max_context is not None:
            if idx.shape[1] > self.max_context:
                raise ConfigError(f"prompt of {idx.shape[1]} tokens exceeds the {self.family} model's context of "
                                  f"{self.max_context} positions; shorten the prompt.")
            max_new_tokens = min(max_new_tokens, self.max_context - idx.shape[1])
        from transformers import DynamicCache

        # transformers renamed ``past_key_values`` to ``cache`` during 5.x; the cache object is
        # filled in place, so the same one is passed on and the output's copy is never read.
        cache_kwarg = "cache" if "cache" in inspect.signature(self.hf.forward).parameters else "past_key_values"

        def step(ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
            cache = DynamicCache(config=self.hf.config) if cache is None else cache
            seen = cache.get_seq_length()
            mask = torch.ones(ids.shape[0], seen + ids.shape[1], dtype=torch.long, device=ids.device)  # (B, T_past + T)
            out = self.hf(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_kwarg: cache})
            return out.logits, cache  # (B, T, V)

        return greedy_decode(step, idx.to(self.device), max_new_tokens, eos_id)


def site_names(model: nn.Module) -> list[str]:
    """Site names of an HFModel (or any model with HookPoints), in forward order per block."""
    return _site_names(model)
