"""An attention implementation that exposes the pattern as a hook site, registered with HF.

HF models call attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``. A
wrapped model is loaded with ``attn_implementation="taskloc"``, which lands here:

* no hook on the layer's ``attn.hook_pattern`` -> delegate to HF's SDPA kernel (fast, and no
  (B, H, T, T) tensor is ever materialised);
* a hook attached -> run the family's own eager function (the same arithmetic as
  ``attn_implementation="eager"``), pass the probabilities through the HookPoint, and if the hook
  returned a replacement, recompute the output from it, so patterns can be read *and* edited.

The two paths agree to float rounding (~1e-6), not bit for bit. Masks are built by HF's eager
mask function (additive float), which both paths accept.
"""
from __future__ import annotations

import sys
import weakref

import torch
from torch import nn

from ..hooks import HookPoint

IMPLEMENTATION = "taskloc"

# HF attention module -> the wrapper's pattern site. Weak, so a dropped model frees its modules;
# kept outside the module so the HookPoint is not registered as an HF submodule.
_PATTERN_SITES: weakref.WeakKeyDictionary[nn.Module, HookPoint] = weakref.WeakKeyDictionary()


def route_pattern(attn_module: nn.Module, site: HookPoint) -> None:
    _PATTERN_SITES[attn_module] = site


def _family_eager(module: nn.Module):
    """The eager attention function defined next to the module's class (modeling_llama.py, ...)."""
    return sys.modules[type(module).__module__].eager_attention_forward


def _attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, Tq, Dh)
    key: torch.Tensor,  # (B, Hkv, Tk, Dh)
    value: torch.Tensor,  # (B, Hkv, Tk, Dh)
    attention_mask: torch.Tensor | None,  # (B, 1, Tq, Tk) additive, or None
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    site = _PATTERN_SITES.get(module)
    if site is None or not site.active:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out, pattern = _family_eager(module)(module, query, key, value, attention_mask, **kwargs)
    new = site(pattern)  # (B, H, Tq, Tk)
    if new is not pattern:
        # Recompute what eager would have produced from the edited probabilities. The hook saw
        # the pattern eager multiplies V by (after dropout, in training), so no dropout again.
        n_rep = query.shape[1] // value.shape[1]  # grouped-query attention shares K/V heads
        v = value.repeat_interleave(n_rep, dim=1) if n_rep > 1 else value  # (B, H, Tk, Dh)
        out = torch.matmul(new.to(v.dtype), v).transpose(1, 2).contiguous()  # (B, Tq, H, Dh)
        pattern = new
    return out, pattern


def register() -> None:
    """Make ``attn_implementation="taskloc"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPLEMENTATION, _attention)
        AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)
