"""HF attention through taskloc's kernel registry, registered with transformers as "taskloc".

HF models call attention through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``. A
wrapped model is loaded with ``attn_implementation="taskloc"``, which lands in ``_attention``:
it calls the registry kernel chosen for that model (``HFModel.attention``, default "dense") with
the layer's pattern site, so one kernel serves TinyLM and HF models alike, and the kernel's
pattern-site contract gives HF models the same behaviour: no hook -> a fused path (dense: SDPA),
a hook attached -> the explicit pattern, read and possibly replaced by the hook.

Masks come from ``sdpa_mask`` (boolean, True = attend), skipped (None) only where the kernel's own
causal rule, queries being the last Tq of Tk positions, is exact; otherwise the mask holds the
causal rule, padding and any sliding window, and the kernel is told not to add its own.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION, AttentionKernel, PatternSite
from ..hooks import HookPoint

IMPLEMENTATION = "taskloc"


@dataclass(frozen=True)
class Route:
    site: PatternSite  # the wrapper's blocks.{i}.attn.hook_pattern
    kernel: AttentionKernel


# HF attention module -> its route. Weak, so a dropped model frees its modules; kept outside the
# module so the HookPoint is not registered as an HF submodule.
_ROUTES: weakref.WeakKeyDictionary[nn.Module, Route] = weakref.WeakKeyDictionary()
_UNWRAPPED = Route(HookPoint(), ATTENTION.get("dense"))  # a model set to "taskloc" but not wrapped


def route(attn_module: nn.Module, site: PatternSite, kernel: str) -> None:
    """Send ``attn_module``'s attention to the registry kernel ``kernel`` with ``site`` as its
    pattern site. An unknown name raises UnknownNameError naming the registered kernels."""
    _ROUTES[attn_module] = Route(site, ATTENTION.get(kernel))


class _DropoutAfter:
    """The pattern site followed by attention dropout, as HF applies it in training. Always active:
    dropout needs the probabilities, so the kernel takes its explicit path."""

    active = True

    def __init__(self, site: PatternSite, p: float) -> None:
        self.site, self.p = site, p

    def __call__(self, pattern: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.site(pattern), self.p, training=True)


def _attention(
    module: nn.Module,
    query: torch.Tensor,  # (B, H, Tq, Dh)
    key: torch.Tensor,  # (B, Hkv, Tk, Dh)
    value: torch.Tensor,  # (B, Hkv, Tk, Dh)
    attention_mask: torch.Tensor | None,  # (B, 1, Tq, Tk) bool or additive, or None
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    chosen = _ROUTES.get(module, _UNWRAPPED)
    site = _DropoutAfter(chosen.site, dropout) if dropout else chosen.site
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # A mask from HF already holds the causal rule at the true positions (a static cache's keys
    # run past the queries), so the kernel adds its own rule only when there is none.
    out = chosen.kernel(query, key, value, site, attention_mask, causal=causal and attention_mask is None, scale=scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, Tq, H, Dh), as HF's attention functions return


def _mask(*, q_length: int, kv_length: int, allow_is_causal_skip: bool = True, **kwargs) -> torch.Tensor | None:
    """HF's boolean mask, left out only when the kernel's causal rule alone is exact: equal query
    and key lengths, or one query (which sees every key). HF's SDPA also skips it for a static
    cache's prefill, relying on SDPA's top-left alignment, which taskloc's kernels do not use."""
    from transformers.masking_utils import sdpa_mask

    allow = allow_is_causal_skip and (q_length == kv_length or q_length == 1)
    return sdpa_mask(q_length=q_length, kv_length=kv_length, allow_is_causal_skip=allow, **kwargs)


def register() -> None:
    """Make ``attn_implementation="taskloc"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(IMPLEMENTATION, _attention)
        AttentionMaskInterface.register(IMPLEMENTATION, _mask)
