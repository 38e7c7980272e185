"""Attention kernels, chosen by name through one registry that TinyLM and HF models share.

A kernel maps (q, k, v) to the attended values:

    kernel(q, k, v, pattern_site, mask=None, *, causal=True, scale=None) -> (B, H, Tq, Dv)

* q: (B, H, Tq, Dh); k: (B, Hkv, Tk, Dh); v: (B, Hkv, Tk, Dv). Hkv divides H (grouped-query
  attention): query head h reads key/value head h // (H // Hkv), the order of HF's ``repeat_kv``.
* The queries are the last Tq of the Tk positions (Tk - Tq cached keys precede them).
* ``mask`` (optional) broadcasts to (B, H, Tq, Tk): boolean (True = may attend) or additive float
  (0 = attend, a large negative number = do not), e.g. padding. ``causal`` adds the causal rule on
  top. A query row that may attend nothing (a padding query) must come out finite, never NaN,
  which would reach real tokens through 0 * NaN; its value is otherwise unspecified (dense: a
  uniform pattern on the explicit path, as HF's eager; zeros or uniform from SDPA's kernels).
* ``scale`` multiplies q.k; None means 1/sqrt(Dh).

The pattern-site contract: when ``pattern_site.active`` (a hook is attached) the kernel passes the
probabilities (B, H, Tq, Tk) through it and attends with what comes back, so hooks read *and*
edit the pattern; when it is not, the kernel may use a fused path that never builds the pattern.
New kernels (sparse attention, ...) register here and serve both model kinds.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..registry import Registry


class PatternSite(Protocol):
    """A HookPoint, or anything that, like it, says whether a hook listens and passes values on."""

    @property
    def active(self) -> bool: ...

    def __call__(self, pattern: torch.Tensor) -> torch.Tensor: ...


class AttentionKernel(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pattern_site: PatternSite,
        mask: torch.Tensor | None = None,
        *,
        causal: bool = True,
        scale: float | None = None,
    ) -> torch.Tensor: ...


ATTENTION: Registry[AttentionKernel] = Registry("attention kernel")


def causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (at absolute position Tk-Tq+i) may attend key j."""
    offset = t_k - t_q
    rows = torch.arange(t_q, device=device)[:, None] + offset
    cols = torch.arange(t_k, device=device)[None, :]
    return cols <= rows


def attention_bias(
    mask: torch.Tensor | None, causal: bool, t_q: int, t_k: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """``mask`` and the causal rule as one additive float bias broadcasting to (B, H, Tq, Tk), or
    None when nothing is masked. Blocked entries hold the dtype's most negative finite number, not
    -inf, so a row with nothing allowed softmaxes to uniform instead of NaN (HF's convention)."""
    lowest = torch.finfo(dtype).min
    if mask is None:
        bias = None
    elif mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, lowest)
    else:
        bias = mask.to(dtype)
    if causal and t_q > 1:  # a single query sits last and sees every key
        blocked = ~causal_mask(t_q, t_k, device)  # (Tq, Tk)
        bias = blocked.to(dtype) * lowest if bias is None else bias.masked_fill(blocked, lowest)
    return bias


def kv_groups(q: torch.Tensor, k: torch.Tensor) -> int:
    """How many query heads share each key/value head (1 without grouped-query attention)."""
    h, h_kv = q.shape[1], k.shape[1]
    if h % h_kv:
        raise ValueError(f"{h} query heads cannot share {h_kv} key/value heads: Hkv must divide H")
    return h // h_kv


def grouped_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None) -> torch.Tensor:
    """q.k * scale for every query head against its key head: (B, H, Tq, Tk). The G query heads of a
    group are stacked along the query axis, so K is read once per group instead of repeated."""
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    scores = q.reshape(b, h_kv, (h // h_kv) * t_q, d) @ k.transpose(-2, -1)  # (B, Hkv, G*Tq, Tk)
    return (scores * scale).view(b, h, t_q, t_k)


def grouped_values(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """pattern (B, H, Tq, Tk) applied to v (B, Hkv, Tk, Dv) -> (B, H, Tq, Dv)."""
    b, h, t_q, t_k = pattern.shape
    h_kv = v.shape[1]
    out = pattern.reshape(b, h_kv, (h // h_kv) * t_q, t_k) @ v  # (B, Hkv, G*Tq, Dv)
    return out.view(b, h, t_q, v.shape[-1])


@ATTENTION.register("dense")
def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern_site: PatternSite,
    mask: torch.Tensor | None = None,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    t_q, t_k = q.shape[-2], k.shape[-2]
    gqa = kv_groups(q, k) > 1
    if not pattern_site.active:
        # Fused path: no hook reads the pattern, so never build the (Tq, Tk) matrix.
        if mask is None and causal and t_q == t_k:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        bias = attention_bias(mask, causal, t_q, t_k, q.dtype, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
    scores = grouped_scores(q, k, scale)  # (B, H, Tq, Tk)
    bias = attention_bias(mask, causal, t_q, t_k, scores.dtype, q.device)
    if bias is not None:
        scores = scores + bias
    # Half precision takes its softmax in float32, as HF's eager path does, so rows still sum to 1.
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    pattern = pattern_site(probs.to(v.dtype))  # (B, H, Tq, Tk), rows sum to 1
    return grouped_values(pattern, v)
